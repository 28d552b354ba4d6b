// What our CUDA kernels do in one decode step, counted by the emulator: the emu target runs the
// same .cu source through the cucpu shim, which counts every kernel's launches, CTAs and the
// global bytes its loads and stores request, per traffic category (runtime/cucpu/README.md).
//
// Heads are scaled down for speed: the step runs with `kvHeads` KV heads (the same group, head
// dim, dtypes and chunk size) and scaleCounts() multiplies the CTAs and bytes back. That is exact
// when the split factors are the same at both head counts, since a KV head is one grid row
// (blockIdx.y) doing the same work as every other; emulatorKvHeads() (split-factors.ts) picks such
// a head count, and countDecodeStep() checks the emulator's grids against the mirror.
//
// Counts are cached per module build and shape in <cache>/autotune/emu-counts/ (the emulator
// needs seconds to minutes for the Table 3 contexts).

import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { canonicalJson, sha256 } from '../codegen/cache-key.ts';
import { buildModule, cacheDir } from '../codegen/index.ts';
import type { KernelSpec } from '../dsl/spec.ts';
import { Attention } from '../runtime/attention.ts';
import type { KernelTunables } from '../runtime/dispatch.ts';
import type { HostData, TrafficCategory } from '../runtime/native-module.ts';
import {
  EMU_SM_COUNT,
  type SplitContext,
  type SplitFactors,
  splitFactors,
  withKvHeads,
} from './split-factors.ts';

/** One decode step's context: `batch` sequences sharing `sharedTokens`, each with `privateTokens` more. */
export interface DecodeStepShape {
  readonly batch: number;
  /** Tokens every sequence shares (a multiple of the chunk size). */
  readonly sharedTokens: number;
  /** Each sequence's own tokens after the shared ones, the current (decoded) token included. */
  readonly privateTokens: number;
  /**
   * The two-phase threshold (runtime dispatch's min_sharers, ≥ 2; default 2): the shared prefix
   * runs in phase 1 when at least this many sequences share it, else every sequence reads it
   * itself (sequence-first).
   */
  readonly minSharers?: number;
}

/** One kernel of the step: launches, CTAs and the bytes its global loads and stores request. */
export interface CountedKernel {
  readonly launches: number;
  readonly ctas: number;
  readonly bytes: Readonly<Record<TrafficCategory, number>>;
}

export interface StepCounts {
  /** KV heads these counts are for. */
  readonly kvHeads: number;
  /** KV heads the emulator ran (the counts are scaled from it). */
  readonly emulatedKvHeads: number;
  readonly splits: SplitFactors;
  /** Per kernel name, in launch order. */
  readonly kernels: Readonly<Record<string, CountedKernel>>;
}

export class CountError extends Error {
  override name = 'CountError';
}

/** Launch order of the decode kernels (module_cuda.cuh, decode()). */
export const DECODE_KERNELS = ['decode_phase1', 'decode_phase2', 'decode_merge_splits'] as const;
const CATEGORIES: readonly TrafficCategory[] = ['q', 'kv', 'partial', 'out', 'context'];
const COUNTS_VERSION = 1;

function minSharersOf(shape: DecodeStepShape): number {
  const m = shape.minSharers ?? 2;
  if (!(Number.isInteger(m) && m >= 2))
    throw new CountError(`min_sharers ${m}: the counted step takes an integer threshold ≥ 2`);
  return m;
}

export function splitContext(shape: DecodeStepShape, chunkSize: number): SplitContext {
  if (shape.sharedTokens % chunkSize !== 0)
    throw new CountError(`shared tokens ${shape.sharedTokens} are not whole chunks of ${chunkSize}`);
  if (shape.privateTokens < 1) throw new CountError('every sequence holds at least its current token');
  // Two-phase runs a chunk in phase 1 when min_sharers or more sequences share it: the shared prefix is one run.
  const shared = shape.batch >= minSharersOf(shape) && shape.sharedTokens > 0;
  return {
    rows: shape.batch,
    runs: shared ? [{ rows: shape.batch, chunks: shape.sharedTokens / chunkSize }] : [],
    maxRowTokens: shape.privateTokens + (shared ? 0 : shape.sharedTokens),
  };
}

/** Deterministic K/V and q values in about ±1 (f16/bf16 bits); the counts do not depend on them. */
function fill(length: number, seed: number): Uint16Array {
  let state = seed >>> 0 || 1;
  const out = new Uint16Array(length);
  for (let i = 0; i < length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = (state & 0x8000) | (0x3000 + (state & 0x0bff));
  }
  return out;
}

function tokensOf(shape: DecodeStepShape, index: number): number[] {
  const shared = Array.from({ length: shape.sharedTokens }, (_, i) => 7 + (i % 5));
  const own = Array.from({ length: shape.privateTokens }, (_, i) => 1_000_000 + index * 100_000 + i);
  return [...shared, ...own];
}

/** The build options of an instance: its tunables when it has any (else the defaults' cache key). */
export const instanceOptions = (tunables: KernelTunables = {}) =>
  Object.keys(tunables).length ? { tunables } : {};

async function emulate(
  spec: KernelSpec,
  shape: DecodeStepShape,
  tunables: KernelTunables,
): Promise<Record<string, CountedKernel>> {
  const module = await buildModule(spec, { target: 'emu', ...instanceOptions(tunables) });
  const c = spec.chunkSize;
  const capacity = shape.sharedTokens + shape.batch * (Math.ceil(shape.privateTokens / c) + 1) * c + c;
  const attn = await Attention.create(module, {
    layers: 1,
    capacityTokens: capacity,
    // The threshold decides whether the shared prefix is a run; every sequence shares all of it.
    mode: shape.batch >= minSharersOf(shape) ? 'two-phase' : 'sequence-first',
    dispatch: false,
  });
  try {
    const rowElems = spec.heads.kv * spec.headDim;
    const kv = fill((shape.sharedTokens + shape.privateTokens) * rowElems, 7);
    const seqs: number[] = [];
    for (let i = 0; i < shape.batch; i++) {
      const tokens = tokensOf(shape, i);
      const { seq, matchedTokens } = attn.insert(tokens);
      const rows = kv.subarray(matchedTokens * rowElems, tokens.length * rowElems) as HostData;
      attn.writeKV(0, seq, matchedTokens, rows, rows);
      seqs.push(seq);
    }
    const q = fill(shape.batch * spec.heads.q * spec.headDim, 11);
    const out = new Uint16Array(shape.batch * spec.heads.q * spec.headDim);
    attn.module.resetStats();
    attn.decode(0, q, out, seqs);
    const stats = attn.module.stats();
    const kernels: Record<string, CountedKernel> = {};
    for (const name of DECODE_KERNELS) {
      const k = stats.kernels[name];
      if (!k || k.launches === 0) continue;
      const bytes = {} as Record<TrafficCategory, number>;
      for (const cat of CATEGORIES) bytes[cat] = k.requestedBytes[cat];
      kernels[name] = { launches: k.launches, ctas: k.blocks, bytes };
    }
    return kernels;
  } finally {
    attn.close();
  }
}

function cachePath(key: string): string {
  return join(cacheDir(), 'autotune', 'emu-counts', `${key}.json`);
}

/** The split factors the emulator's grids show (CTAs per item / row and KV head). */
function gridSplits(
  kernels: Record<string, CountedKernel>,
  ctx: SplitContext,
  items: number,
  kvHeads: number,
) {
  const p1 = kernels.decode_phase1;
  const p2 = kernels.decode_phase2;
  return {
    phase1: p1 ? p1.ctas / (items * kvHeads) : 1,
    phase2: p2 ? p2.ctas / (ctx.rows * kvHeads) : Number.NaN,
  };
}

/**
 * Runs one decode step of `spec` at `kvHeads` KV heads on the emulator and returns its counts
 * (unscaled: for `kvHeads`). The grids must show the split factors the mirror predicts at the
 * emulator's SM count, else CountError.
 */
export async function countDecodeStep(
  fullSpec: KernelSpec,
  shape: DecodeStepShape,
  kvHeads: number,
  options: { readonly cache?: boolean; readonly tunables?: KernelTunables } = {},
): Promise<StepCounts> {
  const spec = { ...withKvHeads(fullSpec, kvHeads), targets: ['emu' as const] };
  const ctx = splitContext(shape, spec.chunkSize);
  const splits = splitFactors(spec, ctx, EMU_SM_COUNT);
  const tunables = options.tunables ?? {};
  const module = await buildModule(spec, { target: 'emu', ...instanceOptions(tunables) });
  const key = sha256(canonicalJson({ version: COUNTS_VERSION, build: module.manifest.buildId, shape })).slice(
    0,
    24,
  );
  const path = cachePath(key);
  let kernels: Record<string, CountedKernel> | undefined;
  if (options.cache !== false) {
    try {
      kernels = JSON.parse(readFileSync(path, 'utf8')).kernels;
    } catch {
      kernels = undefined;
    }
  }
  if (!kernels) {
    kernels = await emulate(spec, shape, tunables);
    if (options.cache !== false) {
      mkdirSync(join(path, '..'), { recursive: true });
      const temporary = `${path}.${process.pid}.tmp`;
      writeFileSync(
        temporary,
        `${JSON.stringify({ shape, kvHeads, build: module.manifest.buildId, kernels })}\n`,
      );
      renameSync(temporary, path);
    }
  }
  const grid = gridSplits(kernels, ctx, splits.phase1Items, kvHeads);
  if (grid.phase1 !== splits.phase1Splits || grid.phase2 !== splits.phase2Splits)
    throw new CountError(
      `${spec.name}: the emulator launched splits ${grid.phase1}/${grid.phase2} (phase 1/phase 2), ` +
        `the mirror of the kernels' host code predicts ${splits.phase1Splits}/${splits.phase2Splits} ` +
        '(autotune/split-factors.ts is out of date)',
    );
  return { kvHeads, emulatedKvHeads: kvHeads, splits, kernels };
}

/** Counts for `kvHeads` heads from counts at fewer or more: CTAs and bytes × kvHeads / emulated heads, checked integral per head. */
export function scaleCounts(counts: StepCounts, kvHeads: number): StepCounts {
  const from = counts.kvHeads;
  const scale = (n: number, what: string) => {
    if (n % from !== 0)
      throw new CountError(`${what}: ${n} is not a whole number per KV head (${from} heads)`);
    return (n / from) * kvHeads;
  };
  const kernels: Record<string, CountedKernel> = {};
  for (const [name, k] of Object.entries(counts.kernels)) {
    const bytes = {} as Record<TrafficCategory, number>;
    for (const cat of CATEGORIES) bytes[cat] = scale(k.bytes[cat], `${name} ${cat} bytes`);
    kernels[name] = { launches: k.launches, ctas: scale(k.ctas, `${name} CTAs`), bytes };
  }
  return { ...counts, kvHeads, kernels };
}

export const totalBytes = (k: CountedKernel) => CATEGORIES.reduce((sum, c) => sum + k.bytes[c], 0);
