// Our kernels' decode step as the performance model sees it, from what is counted and compiled:
// the one path behind `bench model`'s "ours" column (table3-ours.ts) and `tune --gpu <gpu>`'s
// model timer (measure.ts, ModelTimer), so both predict a kernel instance the same way.
//
//   counted   the emulator runs the instance's step (emu-counts.ts): launches, CTAs, global
//             bytes per kernel, at the fewest KV heads that launch the GPU's split factors
//             (split-factors.ts), scaled back to the spec's heads;
//   compiled  the instance's cuda build for the GPU's arch: ptxas registers and static shared
//             memory per kernel, hence CTAs per SM (occupancy.ts);
//   launches  our-kernels.ts turns both into the model's launches (FLOPs from the context,
//             dependent round trips modelled).
//
// An instance is a set of build-time tunables (runtime/dispatch.ts, KernelTunables); the step's
// shape carries the two-phase threshold (min_sharers), which decides whether the shared prefix
// runs in phase 1.

import { buildModule } from '../codegen/index.ts';
import { narrowPhase1 } from '../codegen/plan.ts';
import { ARCHS, type Arch, type KernelSpec } from '../dsl/spec.ts';
import type { KernelTunables } from '../runtime/dispatch.ts';
import {
  countDecodeStep,
  type DecodeStepShape,
  instanceOptions,
  type StepCounts,
  scaleCounts,
  splitContext,
} from './emu-counts.ts';
import { GPUS, type GpuSpec } from './gpus.ts';
import type { LaunchWork } from './model.ts';
import { moduleOccupancy } from './occupancy.ts';
import { type CtasPerSm, countedLaunches } from './our-kernels.ts';
import { emulatorKvHeads } from './split-factors.ts';

/** One decode step of ours on one GPU: the model's launches and what they came from. */
export interface OursCounted {
  readonly launches: readonly LaunchWork[];
  /** Counts scaled to the spec's KV heads. */
  readonly counts: StepCounts;
  /** KV heads the emulator ran. */
  readonly emulatedKvHeads: number;
  /** CTAs per SM of each decode kernel of the instance on this GPU (ptxas). */
  readonly ctasPerSm: CtasPerSm;
}

/** Where the counted inputs come from (the emulator and ptxas; replaceable in tests). */
export interface CountedSource {
  /** CTAs per SM of each decode kernel of the instance on each GPU (by GPU id). */
  occupancy(
    spec: KernelSpec,
    tunables: KernelTunables,
    gpus: readonly GpuSpec[],
  ): Promise<ReadonlyMap<string, CtasPerSm>>;
  /** One decode step of the instance at `kvHeads` KV heads (unscaled). */
  counts(
    spec: KernelSpec,
    tunables: KernelTunables,
    shape: DecodeStepShape,
    kvHeads: number,
  ): Promise<StepCounts>;
}

/** Every arch of the GPU table: one cuda build per instance serves any GPU (and is cached). */
const TABLE_ARCHS = new Set(Object.values(GPUS).map((g) => g.limits.arch));

/** CTAs per SM of each decode kernel on each GPU, from ptxas (one cuda build for every arch asked). */
export async function ptxasOccupancy(
  spec: KernelSpec,
  gpus: readonly GpuSpec[],
  tunables: KernelTunables = {},
): Promise<Map<string, CtasPerSm>> {
  // The spec's archs, the GPUs' and the table's: one build serves every report and every GPU of
  // its group. The NARROW_PHASE1_ARCHS lay phase 1 out differently, so they are built apart: a GPU
  // of another arch gets the layout a build for it alone would have.
  const archs = ARCHS.filter(
    (a) => spec.targets.includes(a) || TABLE_ARCHS.has(a) || gpus.some((g) => g.limits.arch === a),
  );
  const groups = [archs.filter((a) => !narrowPhase1([a])), archs.filter((a) => narrowPhase1([a]))];
  const manifests = new Map<Arch, Awaited<ReturnType<typeof buildModule>>['manifest']>();
  for (const group of groups.filter((g) => g.length > 0)) {
    const module = await buildModule(spec, { target: 'cuda', archs: group, ...instanceOptions(tunables) });
    for (const a of group) manifests.set(a, module.manifest);
  }
  const out = new Map<string, CtasPerSm>();
  for (const gpu of gpus)
    out.set(
      gpu.id,
      Object.fromEntries(
        moduleOccupancy(gpu.limits, manifests.get(gpu.limits.arch)!).map((k) => [
          k.kernel,
          k.occupancy.ctasPerSm,
        ]),
      ),
    );
  return out;
}

/** The emulator's counts and ptxas's resources (needs g++ with the CUDA headers, and nvcc). */
export const compiledSource: CountedSource = {
  occupancy: (spec, tunables, gpus) => ptxasOccupancy(spec, gpus, tunables),
  counts: (spec, tunables, shape, kvHeads) => countDecodeStep(spec, shape, kvHeads, { tunables }),
};

export interface CountedStepOptions {
  readonly tunables?: KernelTunables;
  readonly source?: CountedSource;
  /** CTAs per SM by GPU id when the caller has them (else asked of the source). */
  readonly occupancy?: ReadonlyMap<string, CtasPerSm>;
  /** Counts already made, by shape and emulated heads (shared across calls). */
  readonly memo?: Map<string, StepCounts>;
  /**
   * More GPUs the emulated head count should also fit (so that their steps reuse these counts:
   * a tuner over the whole table emulates each step once when one head count fits them all).
   */
  readonly shareHeadsWith?: readonly GpuSpec[];
  readonly progress?: (label: string) => void;
}

const memoKey = (shape: DecodeStepShape, heads: number, tunables: KernelTunables) =>
  JSON.stringify([
    shape.batch,
    shape.sharedTokens,
    shape.privateTokens,
    shape.minSharers ?? 2,
    heads,
    tunables,
  ]);

/**
 * One decode step of the instance on every GPU in `gpus`: per GPU id, the model's launches. The
 * emulator runs once per distinct KV-head count (one for all GPUs when a count fits them all).
 */
export async function countedSteps(
  spec: KernelSpec,
  gpus: readonly GpuSpec[],
  shape: DecodeStepShape,
  options: CountedStepOptions = {},
): Promise<Map<string, OursCounted>> {
  const tunables = options.tunables ?? {};
  const source = options.source ?? compiledSource;
  const occupancy = options.occupancy ?? (await source.occupancy(spec, tunables, gpus));
  const memo = options.memo ?? new Map<string, StepCounts>();
  const ctx = splitContext(shape, spec.chunkSize);
  const common = emulatorKvHeads(
    spec,
    ctx,
    [...gpus, ...(options.shareHeadsWith ?? [])].map((g) => g.sms),
  );
  const out = new Map<string, OursCounted>();
  const alone = options.shareHeadsWith?.length
    ? emulatorKvHeads(
        spec,
        ctx,
        gpus.map((g) => g.sms),
      )
    : common;
  for (const gpu of gpus) {
    const heads = common ?? alone ?? emulatorKvHeads(spec, ctx, [gpu.sms]);
    if (heads === null)
      throw new RangeError(
        `b=${shape.batch} shared=${shape.sharedTokens} on ${gpu.name}: no KV-head count makes the emulator launch this GPU's split factors`,
      );
    const ctasPerSm = occupancy.get(gpu.id);
    if (!ctasPerSm) throw new RangeError(`no occupancy for ${gpu.name}`);
    const key = memoKey(shape, heads, tunables);
    let counts = memo.get(key);
    if (!counts) {
      options.progress?.(`emu b=${shape.batch} shared=${shape.sharedTokens} at ${heads} KV heads`);
      counts = await source.counts(spec, tunables, shape, heads);
      memo.set(key, counts);
    }
    const scaled = scaleCounts(counts, spec.heads.kv);
    out.set(gpu.id, {
      launches: countedLaunches(spec, shape, scaled, ctasPerSm),
      counts: scaled,
      emulatedKvHeads: heads,
      ctasPerSm,
    });
  }
  return out;
}
