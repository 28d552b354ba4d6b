// The capacity plan: upper bounds, in bytes, of every scratch buffer a module handle uses for one
// kernel call (the packed context, the decode workspace, host q/out staging, K/V write staging,
// copy lists), from the pool and the caller's `capacity` option. Attention.create reserves them
// once (NativeModule.reserve), so that no later call allocates module memory (CUDA-graph safe);
// a call past a bound throws ReservedCapacityError naming the option to raise, with nothing done.
//
// Symbols: S = pool slots, C = chunk size, R = rows, P = partials, K = chunks a row may hold
// (min(S, ⌈sequenceTokens / C⌉)), T = write tokens, Hq / Hkv query / KV heads, D head dim.

import { ArgumentError, ReservedCapacityError } from './errors.ts';
import {
  CONTEXT_HEADER_WORDS,
  CONTEXT_SECTION_EXTENT,
  CONTEXT_SECTIONS,
  CONTEXT_WORD,
} from './kernel-context.ts';
import type { ModuleInfo } from './native-module.ts';

/** What the caller bounds (Attention.create `options.capacity`); every field has a pool-derived default. */
export interface CapacityOptions {
  /**
   * Rows of one kernel call's context: the live sequences at a decode (every live sequence is a
   * row, requested or not), Σ n_i at a multi-token attend. Also bounds q/out rows. Default:
   * min(S, 1024) — a decoding sequence owns at least its private tail chunk, so live sequences ≤ S.
   */
  readonly rows?: number;
  /**
   * Phase-1 partials of one call: one per (shared run, row it covers); a row gets one per nested
   * shared prefix it belongs to. Default: 2 × rows (one shared prompt level, plus as many again).
   */
  readonly partials?: number;
  /**
   * Tokens one writeKV / writeDecodeKV writes (a prompt suffix, or a step's Σ n_i). Default:
   * max(rows, 4096), at most the pool's S × C (a write fills distinct positions).
   */
  readonly writeTokens?: number;
  /** The longest sequence a call attends over, in tokens. Default: the pool's S × C. */
  readonly sequenceTokens?: number;
}

/** CapacityOptions with every default applied. */
export type Capacity = Required<CapacityOptions>;

/** Byte bounds of a module handle's scratch buffers (the argument of NativeModule.reserve). */
export interface ScratchBounds {
  /** The packed kernel context. */
  readonly context: number;
  /** ca_workspace_bytes of any context within the bounds. */
  readonly workspace: number;
  /** Staging of host q / out. */
  readonly q: number;
  readonly out: number;
  /** Staging of one K/V write: [slots | offsets | k | v]. */
  readonly kv: number;
  /** Copy-on-write lists and PSA metadata slot lists. */
  readonly copies: number;
  /** cuda/emu sparse decode: the lists, counts and scratch of ca_psa_decode (0 without PSA). */
  readonly psa?: number;
}

/**
 * Split caps of the cuda/emu kernels (decode_phase1.cuh Phase1Plan::kMaxSplits and
 * decode_phase2.cuh Phase2Plan::kMaxSplits; test/capacity.test.ts checks they still match).
 */
export const PHASE1_MAX_SPLITS = 8;
export const PHASE2_MAX_SPLITS = 16;

const DTYPE_BYTES = { f16: 2, bf16: 2, f32: 4 } as const;
const DEFAULT_MAX_ROWS = 1024;
const DEFAULT_WRITE_TOKENS = 4096;

const alignUp = (bytes: number, to: number) => Math.ceil(bytes / to) * to;

/** Applies the defaults and checks every field (ArgumentError naming `capacity.<field>`). */
export function resolveCapacity(
  given: CapacityOptions | undefined,
  pool: { readonly numSlots: number; readonly chunkSize: number },
): Capacity {
  if (given !== undefined && (typeof given !== 'object' || given === null))
    throw new ArgumentError(`capacity must be an object, got ${String(given)}`);
  const field = (name: keyof CapacityOptions, fallback: number): number => {
    const value = given?.[name];
    if (value === undefined) return fallback;
    if (!Number.isSafeInteger(value) || value < 1)
      throw new ArgumentError(`capacity.${name} must be a positive integer, got ${String(value)}`);
    return value;
  };
  const rows = field('rows', Math.min(pool.numSlots, DEFAULT_MAX_ROWS));
  return {
    rows,
    partials: field('partials', 2 * rows),
    writeTokens: field(
      'writeTokens',
      Math.min(pool.numSlots * pool.chunkSize, Math.max(rows, DEFAULT_WRITE_TOKENS)),
    ),
    sequenceTokens: field('sequenceTokens', pool.numSlots * pool.chunkSize),
  };
}

/** Chunks one row may list: a row's chunks are distinct slots (≤ S) covering its tokens. */
function rowChunks(capacity: Capacity, numSlots: number, chunkSize: number): number {
  return Math.min(numSlots, Math.ceil(capacity.sequenceTokens / chunkSize));
}

/**
 * Words of the packed context (kernel-context.ts packContext) of any call within the capacity:
 * the header, then each section at its extent (CONTEXT_SECTION_EXTENT) with rows ≤ R, chunks
 * listed per row ≤ K, partials ≤ P, runs ≤ min(P, S) (every run covers ≥ 1 row, so gives ≥ 1
 * partial, and holds ≥ 1 live chunk, each in at most one run) and live chunks ≤ S.
 */
export function contextWordsBound(capacity: Capacity, numSlots: number, chunkSize: number): number {
  const rows = capacity.rows;
  const rowChunkWords = rows * rowChunks(capacity, numSlots, chunkSize);
  const partials = capacity.partials;
  const runs = Math.min(partials, numSlots);
  let words = CONTEXT_HEADER_WORDS;
  for (const name of CONTEXT_SECTIONS) {
    const e = CONTEXT_SECTION_EXTENT[name];
    words +=
      (e.perRow ?? 0) * rows +
      (e.perRowChunk ?? 0) * rowChunkWords +
      (e.perPartial ?? 0) * partials +
      (e.perRun ?? 0) * runs +
      (e.perSlot ?? 0) * numSlots +
      (e.plus ?? 0);
  }
  return words;
}

/**
 * Bytes of ca_workspace_bytes for any context within the capacity. cpu: o [P, Hq, D] and lse
 * [P, Hq] f32, each rounded to 64 bytes (cpu/decode.h). cuda/emu: the phase-1 partials o and
 * lse [P × splits₁, Hq, D + 1] f32 with splits₁ ≤ PHASE1_MAX_SPLITS, plus phase 2's split
 * scratch [requests × splits₂, Hq, D + 1] f32 with requests ≤ R and splits₂ ≤ PHASE2_MAX_SPLITS
 * (module_cuda.cuh workspace_plan). No phase-1 kernel: no partials.
 */
export function workspaceBound(info: ModuleInfo, capacity: Capacity): number {
  const { qHeads: hq, headDim: d } = info;
  const p = info.phase1 ? capacity.partials : 0;
  if (info.target === 'cpu') return alignUp(p * hq * d * 4, 64) + alignUp(p * hq * 4, 64);
  return (p * PHASE1_MAX_SPLITS + capacity.rows * PHASE2_MAX_SPLITS) * hq * (d + 1) * 4;
}

/**
 * Bytes core.cc WriteKv stages for one write of `tokens` tokens: the slots and offsets, then each
 * host k/v array (`hostBytes`: their byte lengths; DeviceTensors are read in place), every
 * section aligned to 256 bytes.
 */
export function writeStagingBytes(tokens: number, hostBytes: readonly number[]): number {
  return 2 * alignUp(4 * tokens, 256) + hostBytes.reduce((sum, bytes) => sum + alignUp(bytes, 256), 0);
}

/** Phase-1 stacked rows of a work item (decode_phase1.cuh kMT; psa_abi.h CA_PSA_PHASE1_TILE_ROWS). */
const PHASE1_TILE_ROWS = 128;

/**
 * Bytes core_psa.cc stages for a cuda/emu ca_psa_decode within the capacity (the cpu target decodes
 * in host memory: 0): lists [R, Hkv, K], counts and guardAdded [R, Hkv] int32, then ca_psa_decode_scratch_bytes
 * (psa_abi.h): the select's [requests ≤ R, Hkv, G + 3, K] words, row_sel [R, Hkv, K] bytes,
 * private_begin [R, Hkv] int32 and tile_sel [items, Hkv, K] bytes with items = runs + ⌊P·G / 128⌋
 * (runs ≤ min(P, S)); every section rounded up to 256 bytes.
 */
export function psaStagingBound(info: ModuleInfo, numSlots: number, capacity: Capacity): number {
  if (info.target === 'cpu') return 0;
  const { qHeads: hq, kvHeads: hkv, chunkSize: c } = info;
  const k = rowChunks(capacity, numSlots, c);
  const g = hq / hkv;
  const rows = capacity.rows * hkv;
  const items =
    Math.min(capacity.partials, numSlots) + Math.floor((capacity.partials * g) / PHASE1_TILE_ROWS);
  const a = (bytes: number) => alignUp(bytes, 256);
  return (
    a(rows * k * 4) +
    2 * a(rows * 4) +
    a(rows * (g + 3) * k * 4) +
    a(rows * k) +
    a(rows * 4) +
    a(items * hkv * k)
  );
}

/**
 * Every scratch bound of one module handle over a pool of `numSlots` slots; `sparse`: the handle
 * decodes PSA (reserves psaStagingBound).
 */
export function scratchBounds(
  info: ModuleInfo,
  numSlots: number,
  capacity: Capacity,
  sparse = false,
): ScratchBounds {
  const { qHeads: hq, kvHeads: hkv, headDim: d, chunkSize: c } = info;
  const ioElements = capacity.rows * hq * d;
  const t = capacity.writeTokens;
  return {
    context: 4 * contextWordsBound(capacity, numSlots, c),
    workspace: workspaceBound(info, capacity),
    // io rows ≤ rows: q/out are [numIoRows, Hq, D].
    q: ioElements * DTYPE_BYTES[info.dtype.q],
    out: ioElements * DTYPE_BYTES[info.dtype.out],
    // Host k and v of writeTokens tokens, which may arrive as f32 whatever dtype.kv is. A longer
    // host write goes in pieces (Attention.writeKV); DeviceTensors need the index lists only.
    kv: writeStagingBytes(t, [t * hkv * d * 4, t * hkv * d * 4]),
    // A copy list names each destination slot once (≤ S copies of 3 ints); a PSA metadata list
    // names each full chunk once (≤ S ints).
    copies: 4 * 3 * numSlots,
    psa: sparse ? psaStagingBound(info, numSlots, capacity) : 0,
  };
}

/**
 * The capacity check of one kernel call, before it reaches the module: a packed context (its
 * header: rows, io rows, partials, words) within `capacity`, or ReservedCapacityError naming the
 * option to raise.
 */
export function checkContextCapacity(
  packed: Int32Array,
  capacity: Capacity,
  numSlots: number,
  chunkSize: number,
): void {
  const rows = Math.max(packed[CONTEXT_WORD.numRows]!, packed[CONTEXT_WORD.numIoRows]!);
  const partials = packed[CONTEXT_WORD.numPartials]!;
  if (rows > capacity.rows)
    throw new ReservedCapacityError(
      `this call's kernel context has ${rows} rows (live sequences at a decode, Σ query tokens at an attend), more than capacity.rows = ${capacity.rows}: raise capacity.rows in Attention.create`,
      'capacity.rows',
    );
  if (partials > capacity.partials)
    throw new ReservedCapacityError(
      `this call's kernel context has ${partials} phase-1 partials (one per shared run and row it covers), more than capacity.partials = ${capacity.partials}: raise capacity.partials in Attention.create`,
      'capacity.partials',
    );
  const bound = contextWordsBound(capacity, numSlots, chunkSize);
  if (packed.length > bound)
    throw new ReservedCapacityError(
      `this call's kernel context takes ${packed.length} words, more than the ${bound} reserved: its rows attend over more than capacity.sequenceTokens = ${capacity.sequenceTokens} tokens; raise capacity.sequenceTokens in Attention.create`,
      'capacity.sequenceTokens',
    );
}

/** A step (or write) of `tokens` tokens within capacity.writeTokens, or ReservedCapacityError. */
export function checkWriteCapacity(tokens: number, capacity: Capacity, what: string): void {
  if (tokens > capacity.writeTokens)
    throw new ReservedCapacityError(
      `${what} writes ${tokens} tokens, more than capacity.writeTokens = ${capacity.writeTokens}: raise capacity.writeTokens in Attention.create`,
      'capacity.writeTokens',
    );
}
