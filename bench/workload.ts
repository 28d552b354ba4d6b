// The ChunkAttention microkernel workload (BENCHMARKS.md): b sequences whose prompts of np
// tokens share their first ns, decoding one token per step. Shared by `bench tpp` and the demo.

import type { Attention } from '../runtime/attention.ts';
import type { HostData } from '../runtime/native-module.ts';
import { xorshift32 } from './random.ts';

export interface PromptShape {
  readonly batch: number;
  readonly sharedTokens: number;
  /** Tokens each sequence holds beyond the shared prefix (prompt suffix plus decoded tokens). */
  readonly privateTokens: number;
}

/** Distinct token ids per sequence, so private suffixes never match each other. */
export function promptTokens(shape: PromptShape, index: number): number[] {
  const shared = Array.from({ length: shape.sharedTokens }, (_, i) => 42 + (i % 7));
  const own = Array.from({ length: shape.privateTokens }, (_, i) => 1_000_000 + index * 100_000 + i);
  return [...shared, ...own];
}

/** Fills arrays with random values of one dtype's host form, from a fixed seed. */
export function randomHost(length: number, kind: 'f32' | 'bits', seed = 1): HostData {
  const next = xorshift32(seed);
  if (kind === 'f32') return Float32Array.from({ length }, () => next() * 2 - 1);
  // Random f16/bf16 values in about ±1: sign, small exponent range, random mantissa.
  const out = new Uint16Array(length);
  for (let i = 0; i < length; i++)
    out[i] = ((next() < 0.5 ? 0x8000 : 0) | (0x3000 + Math.floor(next() * 0x0c00))) & 0xffff;
  return out;
}

/**
 * Inserts the batch and writes every layer's KV for each prompt's unmatched tokens. Token
 * position p gets row p of `kv` in every sequence, so shared and private copies agree.
 */
export function loadPrompts(attn: Attention, shape: PromptShape, kv: HostData): number[] {
  const rowElems = attn.spec.heads.kv * attn.spec.headDim;
  const seqs: number[] = [];
  for (let i = 0; i < shape.batch; i++) {
    const tokens = promptTokens(shape, i);
    const { seq, matchedTokens } = attn.insert(tokens);
    if (tokens.length * rowElems > kv.length)
      throw new Error(`KV source too small for ${tokens.length} tokens`);
    const rows = kv.subarray(matchedTokens * rowElems, tokens.length * rowElems) as HostData;
    for (let layer = 0; layer < attn.layers; layer++) attn.writeKV(layer, seq, matchedTokens, rows, rows);
    seqs.push(seq);
  }
  return seqs;
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
