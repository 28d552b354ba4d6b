// Per-chunk key metadata for progressive sparse attention (PSA.md), one store per layer.
//
// meta[layer]: a DeviceTensor of dtype.kv beside the layer's KV pool, [slots, Hkv, 4, D]: mean,
// per-channel variance, min, max of the chunk's keys (templates/include/chunkattn/cpu/
// chunk_meta.h computes them). It belongs to the slot — the physical chunk — so every sequence
// sharing a chunk shares its metadata.
//
// Lifecycle, per (layer, slot):
//   - computed by the write that fills the chunk (writeKV / writeDecodeKV: the write reaching
//     token C - 1 of the slot, K/V being written in token order), one ca_psa_meta launch per
//     write call for all the chunks it filled;
//   - dropped when the slot is allocated to a new chunk (insert, a decode step opening a chunk),
//     by any write that leaves the slot partial, and by a copy-on-write into the slot;
//   - freed with the pools (close()).
// ensure() recomputes whatever a decode needs and is missing (full chunks only); after the write
// hooks it finds nothing to do, which the `late` counter shows.

import type { DeviceTensor, KvPool, NativeModule } from './native-module.ts';

export interface ChunkMetadataShape {
  readonly layers: number;
  readonly slots: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly chunkSize: number;
  readonly dtype: 'f16' | 'bf16' | 'f32';
}

/** Vectors per (slot, KV head): mean, variance, min, max. */
export const META_VECTORS = 4;

export interface ChunkMetadataStats {
  /** Bytes allocated for metadata, all layers. */
  readonly bytes: number;
  /** Bytes of the (layer, slot) entries that hold current metadata. */
  readonly bytesInUse: number;
  /** (layer, slot) entries that hold current metadata. */
  readonly entries: number;
  /** Chunks summarized since creation (ca_psa_meta work). */
  readonly computed: number;
  /** Of those, computed late by ensure() rather than by the write that filled the chunk. */
  readonly late: number;
}

/** Written-token watermark of a (layer, slot) (the prefix tree's). */
export type WrittenTokens = (layer: number, slot: number) => number;

export class ChunkMetadata {
  readonly shape: ChunkMetadataShape;
  readonly #module: NativeModule;
  readonly #tensors: DeviceTensor[] = [];
  readonly #valid: Uint8Array[] = [];
  #computed = 0;
  #late = 0;
  #closed = false;

  constructor(module: NativeModule, shape: ChunkMetadataShape) {
    this.shape = shape;
    this.#module = module;
    const elements = shape.slots * this.elementsPerSlot;
    try {
      for (let layer = 0; layer < shape.layers; layer++) {
        this.#tensors.push(module.allocTensor(shape.dtype, elements));
        this.#valid.push(new Uint8Array(shape.slots));
      }
    } catch (error) {
      for (const t of this.#tensors) module.freeTensor(t);
      throw error;
    }
  }

  /** Elements of one slot's metadata: Hkv × 4 × D. */
  get elementsPerSlot(): number {
    return this.shape.kvHeads * META_VECTORS * this.shape.headDim;
  }

  get bytesPerSlot(): number {
    return this.elementsPerSlot * (this.shape.dtype === 'f32' ? 4 : 2);
  }

  /** One layer's metadata tensor (the ca_psa_decode argument). */
  tensor(layer: number): DeviceTensor {
    return this.#tensors[layer]!;
  }

  /** Whether (layer, slot) holds the metadata of the chunk stored there now. */
  has(layer: number, slot: number): boolean {
    return this.#valid[layer]![slot] === 1;
  }

  /** After K/V of tokens (slots[i], offsets[i]) were written into one layer. */
  afterWrite(
    layer: number,
    pool: KvPool,
    slots: Int32Array,
    offsets: Int32Array,
    written: WrittenTokens,
  ): void {
    const valid = this.#valid[layer]!;
    const filled: number[] = [];
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i]!;
      if (written(layer, slot) < this.shape.chunkSize) valid[slot] = 0;
      else if (offsets[i] === this.shape.chunkSize - 1 && !filled.includes(slot)) filled.push(slot);
    }
    this.#compute(layer, pool, filled);
  }

  /** Slots (re)allocated to new chunks: whatever metadata they held belonged to a freed chunk. */
  drop(slots: ArrayLike<number>): void {
    for (const valid of this.#valid) for (let i = 0; i < slots.length; i++) valid[slots[i]!] = 0;
  }

  /** After copy-on-write of chunks (every layer): the destinations hold other K/V now. */
  afterCopies(copies: readonly { readonly dstSlot: number }[]): void {
    for (const valid of this.#valid) for (const copy of copies) valid[copy.dstSlot] = 0;
  }

  /** Computes the metadata of every full chunk among `slots` that lacks it (late; see file comment). */
  ensure(layer: number, pool: KvPool, slots: ArrayLike<number>, written: WrittenTokens): void {
    const valid = this.#valid[layer]!;
    const missing: number[] = [];
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i]!;
      if (!valid[slot] && written(layer, slot) >= this.shape.chunkSize && !missing.includes(slot))
        missing.push(slot);
    }
    this.#late += missing.length;
    this.#compute(layer, pool, missing);
  }

  /** One layer's metadata as host data [slots, Hkv, 4, D] (one download). */
  readLayer(layer: number): Float32Array | Uint16Array {
    return this.#module.download(this.#tensors[layer]!);
  }

  /** One slot's metadata as host data [Hkv, 4, D] (tests and debugging). */
  read(layer: number, slot: number): Float32Array | Uint16Array {
    const all = this.#module.download(this.#tensors[layer]!);
    return all.slice(slot * this.elementsPerSlot, (slot + 1) * this.elementsPerSlot);
  }

  stats(): ChunkMetadataStats {
    let entries = 0;
    for (const valid of this.#valid) for (const v of valid) entries += v;
    return {
      bytes: this.shape.layers * this.shape.slots * this.bytesPerSlot,
      bytesInUse: entries * this.bytesPerSlot,
      entries,
      computed: this.#computed,
      late: this.#late,
    };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#tensors) if (!t.freed) this.#module.freeTensor(t);
  }

  #compute(layer: number, pool: KvPool, slots: readonly number[]): void {
    if (slots.length === 0) return;
    this.#module.psaMeta(pool, this.#tensors[layer]!, Int32Array.from(slots));
    const valid = this.#valid[layer]!;
    for (const slot of slots) valid[slot] = 1;
    this.#computed += slots.length;
  }
}
