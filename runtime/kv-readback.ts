// KV read-back: a sequence's stored K/V of token positions [from, to) out of one layer's pool, as
// [n, Hkv, D] arrays in the pool's dtype (Float32Array for f32, Uint16Array of f16/bf16 bits), bit
// for bit what writeKV / writeDecodeKV stored. For users who run their own kernels over the cache
// or move a sequence elsewhere. Pool slots are [Hkv, C, D]; one slot read per chunk touched.

import { ArgumentError, UnwrittenKvError } from './errors.ts';
import type { HostData, KvPool, NativeModule } from './native-module.ts';
import type { PrefixTree } from './prefix-tree.ts';

export interface KvReadback {
  /** [to − from, Hkv, D] */
  readonly k: HostData;
  /** [to − from, Hkv, D] */
  readonly v: HostData;
}

export interface KvReadShape {
  readonly kvHeads: number;
  readonly headDim: number;
  readonly chunkSize: number;
}

/**
 * Reads K/V of positions [from, to) of `seq` in `layer`. Throws UnknownSequenceError for a dead
 * handle, ArgumentError for a range outside [0, length] or empty-reversed, UnwrittenKvError when
 * a position in the range holds no K/V in that layer. Nothing is changed either way.
 */
export function readSequenceKv(
  tree: PrefixTree,
  module: NativeModule,
  pool: KvPool,
  shape: KvReadShape,
  layer: number,
  seq: number,
  from: number,
  to: number,
): KvReadback {
  const length = tree.length(seq);
  if (!Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to < from || to > length)
    throw new ArgumentError(
      `readKV: range [${String(from)}, ${String(to)}) must lie within sequence ${seq}'s [0, ${length}) with from ≤ to`,
    );
  const c = shape.chunkSize;
  const chunks = tree.chunksOf(seq);
  for (let chunk = Math.floor(from / c); chunk * c < to; chunk++) {
    const written = chunk * c + tree.writtenTokens(layer, chunks[chunk]!);
    if (written < Math.min(to, (chunk + 1) * c))
      throw new UnwrittenKvError(seq, layer, Math.max(written, from), length);
  }
  const { kvHeads: hkv, headDim: d } = shape;
  const n = to - from;
  let k: HostData | undefined;
  let v: HostData | undefined;
  for (let chunk = Math.floor(from / c); chunk * c < to; chunk++) {
    const slot = module.readPool(pool, chunks[chunk]!);
    if (!k || !v) {
      k = slot.k instanceof Float32Array ? new Float32Array(n * hkv * d) : new Uint16Array(n * hkv * d);
      v = slot.v instanceof Float32Array ? new Float32Array(n * hkv * d) : new Uint16Array(n * hkv * d);
    }
    const first = Math.max(from, chunk * c);
    const last = Math.min(to, (chunk + 1) * c);
    for (let pos = first; pos < last; pos++) {
      for (let h = 0; h < hkv; h++) {
        const src = (h * c + (pos - chunk * c)) * d;
        const dst = ((pos - from) * hkv + h) * d;
        k.set(slot.k.subarray(src, src + d), dst);
        v.set(slot.v.subarray(src, src + d), dst);
      }
    }
  }
  if (!k || !v) {
    const f32 = module.info.dtype.kv === 'f32';
    return {
      k: f32 ? new Float32Array(0) : new Uint16Array(0),
      v: f32 ? new Float32Array(0) : new Uint16Array(0),
    };
  }
  return { k, v };
}
