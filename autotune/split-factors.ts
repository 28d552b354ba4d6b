// The split factors of our CUDA decode kernels, as their host code picks them (a mirror of
// phase1_splits / phase1_items in templates/include/chunkattn/decode_phase1.cuh and phase2_splits
// in decode_phase2.cuh). Both depend on the KV heads and the GPU's SM count (they fill the GPU
// when rows × heads cannot), so the counts of one decode step are linear in the KV heads only
// while the split factors stay the same. The emulator plans for EMU_SM_COUNT SMs; the bench uses
// this mirror to pick a KV-head count at which the emulator launches the same splits a given GPU
// launches at the full head count, and checks the emulator's grids against it at every count
// (emu-counts.ts), so a mirror that drifts from the kernels fails loudly.

import { phase1Geometry, phase2Geometry } from '../codegen/plan.ts';
import type { KernelSpec } from '../dsl/spec.ts';

/** SMs the emu target plans its splits for (module_cuda.cuh, sm_count(): an A100's). */
export const EMU_SM_COUNT = 108;

/** phase1 constants not in the plan's geometry (Phase1Plan: kMaxSplits, kMinKvPerPartialByte). */
const PHASE1_MAX_SPLITS = 8;
const PHASE1_MIN_KV_PER_PARTIAL_BYTE = 8;
/** Phase2Plan: kMaxSplits; a split keeps at least 128 tokens. */
const PHASE2_MAX_SPLITS = 16;
const PHASE2_MIN_SPLIT_TOKENS = 128;

/** The decode step's shape as the split factors see it (from the packed context's scalars). */
export interface SplitContext {
  /** Requested rows (one per sequence in a one-token decode). */
  readonly rows: number;
  /** Shared runs: sharers and chunks of each, in run order. */
  readonly runs: readonly { readonly rows: number; readonly chunks: number }[];
  /** Most tokens a requested row attends to in phase 2 (after its shared chunks). */
  readonly maxRowTokens: number;
}

export interface SplitFactors {
  /** Phase-1 work items per KV head (m-tiles of the runs, plus a possible spare per run); 0 without runs. */
  readonly phase1Items: number;
  /** CTAs per (item, KV head); 1 without runs. */
  readonly phase1Splits: number;
  /** CTAs per (row, KV head). */
  readonly phase2Splits: number;
}

const group = (spec: KernelSpec) => spec.heads.q / spec.heads.kv;
const KV_BYTES = { f16: 2, bf16: 2, f32: 4 } as const;

/** Phase1Plan::kMinBlocks: one 8-warp CTA (or two 4-warp CTAs) per SM. */
const phase1MinBlocks = (spec: KernelSpec) => 256 / phase1Geometry(spec).threads;

/** Phase2Plan::kMinBlocks: 2 when q and o alone need more than 64 registers (2·G·kVec), else 4. */
function phase2MinBlocks(spec: KernelSpec): number {
  const vec = phase2Geometry(spec).laneBytes / KV_BYTES[spec.dtype.kv];
  return 2 * group(spec) * vec > 64 ? 2 : 4;
}

/** phase1_items: Σ over runs of 1 + the m-tile boundaries its partials cross. */
export function phase1Items(spec: KernelSpec, ctx: SplitContext): number {
  const g = group(spec);
  const partials = ctx.runs.reduce((sum, r) => sum + r.rows, 0);
  return ctx.runs.length + Math.floor((partials * g) / phase1Geometry(spec).mTile);
}

export function splitFactors(spec: KernelSpec, ctx: SplitContext, smCount: number): SplitFactors {
  const g = group(spec);
  const kvHeads = spec.heads.kv;
  const p1 = phase1Geometry(spec);
  const p2 = phase2Geometry(spec);
  const d = spec.headDim;
  let phase1Splits = 1;
  const items = ctx.runs.length ? phase1Items(spec, ctx) : 0;
  if (ctx.runs.length) {
    const ctas = items * kvHeads;
    const fill = Math.floor((smCount * phase1MinBlocks(spec)) / Math.max(ctas, 1));
    let worth = 1;
    for (const run of ctx.runs) {
      const m = Math.min(run.rows * g, p1.mTile);
      const kv = 4 * d * run.chunks * spec.chunkSize;
      const partial = 8 * (d + 1) * m * PHASE1_MIN_KV_PER_PARTIAL_BYTE;
      worth = Math.max(worth, Math.min(Math.floor(kv / partial), run.chunks));
    }
    phase1Splits = Math.max(1, Math.min(fill, worth, PHASE1_MAX_SPLITS));
  }
  let phase2Splits = 1;
  const ctas = ctx.rows * kvHeads;
  const slots = smCount * phase2MinBlocks(spec);
  if (ctas > 0 && ctas * 2 <= slots) {
    const tiles = Math.ceil(ctx.maxRowTokens / p2.tileTokens);
    const useful = Math.ceil(tiles / Math.ceil(PHASE2_MIN_SPLIT_TOKENS / p2.tileTokens));
    phase2Splits = Math.min(Math.max(1, Math.min(Math.floor(slots / ctas), useful)), PHASE2_MAX_SPLITS);
  }
  return { phase1Items: items, phase1Splits, phase2Splits };
}

/** The spec with `kvHeads` KV heads and the same group (the emulator's scaled-down instance). */
export function withKvHeads(spec: KernelSpec, kvHeads: number): KernelSpec {
  return { ...spec, name: `${spec.name}-kv${kvHeads}`, heads: { q: kvHeads * group(spec), kv: kvHeads } };
}

const sameSplits = (a: SplitFactors, b: SplitFactors) =>
  a.phase1Splits === b.phase1Splits && a.phase2Splits === b.phase2Splits;

/**
 * Most KV heads the emulator may run a step at: more than the spec's when a GPU has fewer SMs
 * than the emulator plans for (its splits at full heads are the emulator's at more heads); the
 * counts are then scaled down, as exact as up. Bounded by the addon's 1024 query heads.
 */
export const maxEmulatedKvHeads = (spec: KernelSpec) =>
  Math.max(spec.heads.kv, Math.min(4 * spec.heads.kv, Math.floor(1024 / group(spec))));

/**
 * The fewest KV heads (1 .. maxEmulatedKvHeads) at which the emulator (EMU_SM_COUNT SMs)
 * launches the same split factors as every GPU in `smCounts` does at the spec's full head
 * count; null when no head count does.
 */
export function emulatorKvHeads(
  spec: KernelSpec,
  ctx: SplitContext,
  smCounts: readonly number[],
): number | null {
  const wanted = smCounts.map((sms) => splitFactors(spec, ctx, sms));
  for (let h = 1; h <= maxEmulatedKvHeads(spec); h++) {
    const emu = splitFactors(withKvHeads(spec, h), ctx, EMU_SM_COUNT);
    if (wanted.every((w) => sameSplits(w, emu))) return h;
  }
  return null;
}
