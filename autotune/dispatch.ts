// The dispatcher's rules from the tuning DB: for one spec on one target, the instance (kernel
// tunables) and two-phase threshold per decode shape. The runtime (runtime/dispatch.ts) builds
// the instances at create and asks `choose` once per bucket.
//
// Which DB: `cpu` for the cpu target; for cuda the GPU named by the `gpu` option or
// CHUNKATTN_GPU (a GPU id or alias from gpus.ts; without one there are no rules: the defaults
// run). emu has no rules. Among fresh entries of the kernel's key (head dim, dtypes, heads, chunk
// size), a shape takes its own bucket's best entry (db.ts `lookup`: measured over model, user over
// shipped); a bucket without one takes the nearest tuned bucket (in log2 steps of batch and
// shared length), so a call never waits for a build.

import { findToolchain, type Toolchain, tunablesFor } from '../codegen/index.ts';
import type { BuildTarget, KernelSpec } from '../dsl/spec.ts';
import {
  DEFAULT_MIN_SHARERS,
  type DispatchChoice,
  type DispatchRules,
  type DispatchShape,
  type KernelTunables,
  MIN_SHARERS_TUNABLE,
  tunablesId,
} from '../runtime/dispatch.ts';
import {
  currentMeta,
  isStale,
  keyString,
  loadDbs,
  lookup,
  type TuningDb,
  type TuningEntry,
  type TuningHit,
  type TuningKey,
  tuningKey,
} from './db.ts';
import { findGpu } from './gpus.ts';
import { loadModelParams } from './model-params.ts';

export interface RulesOptions {
  /** GPU id for the cuda target (default: CHUNKATTN_GPU). */
  readonly gpu?: string;
  /** Cache root holding the user DB (default: the build cache folder). */
  readonly cacheRoot?: string;
  readonly toolchain?: Toolchain;
  /** The DBs themselves (tests); default: loadDbs(gpu). */
  readonly dbs?: Readonly<Partial<Record<'user' | 'shipped', TuningDb>>>;
}

/** The DB name for a target (null: no rules). */
export function dispatchGpu(target: BuildTarget, gpu: string | undefined): string | null {
  if (target === 'cpu') return 'cpu';
  if (target !== 'cuda') return null;
  const asked = gpu ?? process.env['CHUNKATTN_GPU'];
  return asked ? findGpu(asked).id : null;
}

/** An entry's tunables split into the instance's (kernel) and the threshold; null if not for this spec. */
export function splitTunables(
  spec: KernelSpec,
  target: BuildTarget,
  tunables: Readonly<Record<string, number>>,
): { kernel: KernelTunables; minSharers: number } | null {
  const declared = tunablesFor(target, spec.tunables);
  const kernel: Record<string, number> = {};
  let minSharers = DEFAULT_MIN_SHARERS;
  for (const [name, value] of Object.entries(tunables)) {
    if (name === MIN_SHARERS_TUNABLE) {
      if (!Number.isInteger(value) || value < 1) return null;
      minSharers = value;
      continue;
    }
    const tunable = declared.find((t) => t.name === name);
    if (!tunable?.values.includes(value)) return null; // made for another spec or version
    if (value !== tunable.default) kernel[name] = value;
  }
  return { kernel, minSharers };
}

const log2 = (n: number) => (n <= 0 ? -1 : Math.log2(n));

/** Rules over the DBs of `gpu` for a spec, or null when no fresh entry matches its kernel. */
export async function dbDispatchRules(
  spec: KernelSpec,
  target: BuildTarget,
  options: RulesOptions = {},
): Promise<DispatchRules | null> {
  const gpu = dispatchGpu(target, options.gpu);
  if (!gpu) return null;
  const toolchain = options.toolchain ?? (await findToolchain());
  const meta = currentMeta(target, toolchain, loadModelParams().modelVersion);
  const dbs = options.dbs ?? loadDbs(gpu, options.cacheRoot);
  const shapeOf = (shape: DispatchShape): TuningKey =>
    tuningKey({
      gpu,
      headDim: spec.headDim,
      dtype: spec.dtype,
      heads: spec.heads,
      chunkSize: spec.chunkSize,
      batch: Math.max(1, shape.batch),
      sharedTokens: shape.sharedTokens,
    });
  const mine = shapeOf({ batch: 1, sharedTokens: 0 });
  const sameKernel = (e: TuningEntry) =>
    e.key.headDim === mine.headDim &&
    e.key.dtypes === mine.dtypes &&
    e.key.qHeads === mine.qHeads &&
    e.key.kvHeads === mine.kvHeads &&
    e.key.chunkSize === mine.chunkSize;

  // The best usable entry of every tuned bucket.
  interface Tuned {
    readonly hit: TuningHit;
    readonly split: NonNullable<ReturnType<typeof splitTunables>>;
  }
  const best = new Map<string, Tuned>();
  for (const entry of [...(dbs.user?.entries ?? []), ...(dbs.shipped?.entries ?? [])]) {
    if (!sameKernel(entry) || isStale(entry, meta)) continue;
    const id = keyString(entry.key);
    if (best.has(id)) continue;
    const hit = lookup(dbs, entry.key, meta);
    const split = hit && splitTunables(spec, target, hit.entry.tunables);
    if (hit && split) best.set(id, { hit, split });
  }
  if (best.size === 0) return null;

  const instances = new Map<string, KernelTunables>();
  for (const { split } of best.values()) instances.set(tunablesId(split.kernel), split.kernel);

  const describe = (hit: TuningHit) =>
    `${keyString(hit.entry.key)} ${hit.entry.source} (${hit.origin} DB${
      hit.entry.measuredUs !== null ? `, measured ${hit.entry.measuredUs.toFixed(1)} µs` : ''
    }${hit.entry.predictedUs !== null ? `, predicted ${hit.entry.predictedUs.toFixed(1)} µs` : ''})`;

  return {
    instances: [...instances.values()],
    bucket: (shape) => {
      const key = shapeOf(shape);
      return `b${key.batchBucket} s${key.sharedBucket}`;
    },
    choose: (shape): DispatchChoice => {
      const key = shapeOf(shape);
      const own = best.get(keyString(key));
      if (own) return { ...own.split, reason: describe(own.hit) };
      let nearest: { distance: number; pick: Tuned } | null = null;
      for (const candidate of best.values()) {
        const k = candidate.hit.entry.key;
        const distance =
          Math.abs(log2(k.batchBucket) - log2(key.batchBucket)) +
          Math.abs(log2(k.sharedBucket) - log2(key.sharedBucket));
        if (!nearest || distance < nearest.distance) nearest = { distance, pick: candidate };
      }
      const pick = nearest!.pick;
      return { ...pick.split, reason: `nearest tuned bucket: ${describe(pick.hit)}` };
    },
  };
}
