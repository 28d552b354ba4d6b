// KV memory accounting: what the prefix tree stores versus what the live sequences would need
// without sharing, in chunks, tokens and bytes for a given model shape.

import { ArgumentError } from './errors.ts';

/** The per-token KV footprint of a model: K and V, every layer, every KV head. */
export interface KvShape {
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  /** Bytes per element of the KV cache: 2 for f16/bf16, 4 for f32, 1 for fp8. */
  readonly dtypeBytes: number;
}

/** Llama 2 7B: 32 layers, 32 KV heads (MHA), head dim 128, f16 → 512 KiB per token. */
export const LLAMA2_7B: KvShape = Object.freeze({ layers: 32, kvHeads: 32, headDim: 128, dtypeBytes: 2 });

export interface KvStats {
  /** Chunks referenced by at least one live sequence. */
  readonly chunksInUse: number;
  /** Chunks no live sequence references, kept for future prefix hits (LRU, freed on demand). */
  readonly chunksEvictable: number;
  /** Slots with storage that hold nothing. chunksInUse + chunksEvictable + chunksFree == capacityChunks. */
  readonly chunksFree: number;
  /** Slots the pool has storage for now (it may grow up to its maxCapacity). */
  readonly capacityChunks: number;
  /** The most chunks ever in use at once (since creation or the last resetPeak()). */
  readonly peakChunksInUse: number;
  readonly liveSequences: number;
  /** Sum of the live sequences' lengths: the tokens a cache without sharing would hold. */
  readonly logicalTokens: number;
  /** Tokens held in in-use chunks, each shared token counted once. */
  readonly storedTokens: number;
  /** chunksInUse × chunk size × bytes per token: the memory the in-use chunks occupy. */
  readonly bytesStored: number;
  /** logicalTokens × bytes per token: a dense per-sequence cache with no sharing and no rounding. */
  readonly bytesLogical: number;
  /** 100 × (1 − bytesStored / bytesLogical); 0 when nothing is live. Negative when chunk rounding costs more than sharing saves. */
  readonly savedPercent: number;
  readonly bytesPerToken: number;
  readonly bytesPerChunk: number;
}

function positiveInteger(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ArgumentError(`${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/** Bytes of K and V for one token over all layers and KV heads. */
export function bytesPerToken(shape: KvShape): number {
  return (
    2 *
    positiveInteger('shape.layers', shape.layers) *
    positiveInteger('shape.kvHeads', shape.kvHeads) *
    positiveInteger('shape.headDim', shape.headDim) *
    positiveInteger('shape.dtypeBytes', shape.dtypeBytes)
  );
}

/** Bytes of one chunk slot (all layers, K and V). */
export function bytesPerChunk(shape: KvShape, chunkSize: number): number {
  return bytesPerToken(shape) * positiveInteger('chunkSize', chunkSize);
}

/** The raw counts a tree keeps; kvStats() turns them into bytes for a shape. */
export interface KvCounts {
  readonly chunkSize: number;
  readonly chunksInUse: number;
  readonly chunksEvictable: number;
  readonly chunksFree: number;
  readonly capacityChunks: number;
  readonly peakChunksInUse: number;
  readonly liveSequences: number;
  readonly logicalTokens: number;
  readonly storedTokens: number;
}

export function kvStats(counts: KvCounts, shape: KvShape): KvStats {
  const perToken = bytesPerToken(shape);
  const perChunk = perToken * counts.chunkSize;
  const bytesStored = counts.chunksInUse * perChunk;
  const bytesLogical = counts.logicalTokens * perToken;
  return {
    chunksInUse: counts.chunksInUse,
    chunksEvictable: counts.chunksEvictable,
    chunksFree: counts.chunksFree,
    capacityChunks: counts.capacityChunks,
    peakChunksInUse: counts.peakChunksInUse,
    liveSequences: counts.liveSequences,
    logicalTokens: counts.logicalTokens,
    storedTokens: counts.storedTokens,
    bytesStored,
    bytesLogical,
    savedPercent: bytesLogical === 0 ? 0 : 100 * (1 - bytesStored / bytesLogical),
    bytesPerToken: perToken,
    bytesPerChunk: perChunk,
  };
}
