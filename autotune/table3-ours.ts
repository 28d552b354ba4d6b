// Our kernels on the paper's Table 3 shapes, for the model: the real spec (Llama-2-7B-like: 32
// query heads over 32 KV heads, d = 128, f16, chunk 64), one decode step per row counted on the
// emulator (emu-counts.ts, heads scaled down where the split factors allow), resources from the
// cuda build's ptxas report per arch (sm_80 for the A100, sm_90a for the H100), occupancy from
// occupancy.ts; our-kernels.ts turns them into the model's launches.
//
// Each row's context: 32 sequences whose first ns prompt tokens are shared, np - ns more their
// own, plus the current token (the step's own K/V, which the runtime appends before attending;
// it is the sequence's private tail, so a fully shared prompt still leaves one private token).

import { buildModule, findToolchain } from '../codegen/index.ts';
import { attention } from '../dsl/attention.ts';
import { ARCHS, type KernelSpec } from '../dsl/spec.ts';
import {
  countDecodeStep,
  type DecodeStepShape,
  type StepCounts,
  scaleCounts,
  splitContext,
} from './emu-counts.ts';
import type { GpuSpec } from './gpus.ts';
import type { LaunchWork } from './model.ts';
import { moduleOccupancy } from './occupancy.ts';
import { type CtasPerSm, countedLaunches } from './our-kernels.ts';
import { rowKey, TABLE3_SHAPE, type Table3Row } from './paper-kernels.ts';
import { emulatorKvHeads } from './split-factors.ts';

/** The kernel spec of Table 3's model (Llama-2-7B-like). */
export const TABLE3_SPEC: KernelSpec = attention({
  name: 'table3-llama2-7b',
  heads: { q: TABLE3_SHAPE.heads, kv: TABLE3_SHAPE.heads },
  headDim: TABLE3_SHAPE.headDim,
  dtype: 'f16',
  partition: 'two-phase',
  chunkSize: TABLE3_SHAPE.chunkSize,
  targets: ['sm_80', 'sm_90a', 'emu'],
});

export function table3StepShape(row: Pick<Table3Row, 'promptTokens' | 'sharedTokens'>): DecodeStepShape {
  return {
    batch: TABLE3_SHAPE.batch,
    sharedTokens: row.sharedTokens,
    privateTokens: row.promptTokens - row.sharedTokens + 1,
  };
}

/** One row of ours on one GPU: the model's launches and what they came from. */
export interface OursCounted {
  readonly launches: readonly LaunchWork[];
  /** Counts scaled to the spec's KV heads. */
  readonly counts: StepCounts;
  /** KV heads the emulator ran. */
  readonly emulatedKvHeads: number;
}

export type OursCountedResult =
  | { readonly ok: true; readonly rows: ReadonlyMap<string, OursCounted>; readonly ctasPerSm: CtasPerSm }
  | { readonly ok: false; readonly reason: string };

/** CTAs per SM of each decode kernel on each GPU, from ptxas (one cuda build for every arch asked). */
export async function ptxasOccupancy(
  spec: KernelSpec,
  gpus: readonly GpuSpec[],
): Promise<Map<string, CtasPerSm>> {
  // The spec's archs plus the GPUs': one build serves every report, whichever GPUs it asks for.
  const archs = ARCHS.filter((a) => spec.targets.includes(a) || gpus.some((g) => g.limits.arch === a));
  const module = await buildModule(spec, { target: 'cuda', archs });
  const out = new Map<string, CtasPerSm>();
  for (const gpu of gpus)
    out.set(
      gpu.id,
      Object.fromEntries(
        moduleOccupancy(gpu.limits, module.manifest).map((k) => [k.kernel, k.occupancy.ctasPerSm]),
      ),
    );
  return out;
}

/**
 * Our kernels on `rows` for every GPU in `gpus`: per GPU, per row (rowKey), the model's launches.
 * Needs nvcc (for ptxas); without it the result says so.
 */
export async function oursOnTable3(
  gpus: readonly GpuSpec[],
  rows: readonly Pick<Table3Row, 'promptTokens' | 'sharedTokens'>[],
  progress: (done: number, total: number, label: string) => void = () => {},
  spec: KernelSpec = TABLE3_SPEC,
): Promise<Map<string, OursCountedResult>> {
  const toolchain = await findToolchain();
  const result = new Map<string, OursCountedResult>();
  if (!toolchain.nvcc) {
    for (const gpu of gpus)
      result.set(gpu.id, { ok: false, reason: 'nvcc not found: no ptxas resources for our kernels' });
    return result;
  }
  const occupancy = await ptxasOccupancy(spec, gpus);
  const perGpu = new Map(gpus.map((g) => [g.id, new Map<string, OursCounted>()]));
  const counted = new Map<string, StepCounts>(); // by shape and emulated heads
  let done = 0;
  for (const row of rows) {
    const shape = table3StepShape(row);
    const ctx = splitContext(shape, spec.chunkSize);
    const common = emulatorKvHeads(
      spec,
      ctx,
      gpus.map((g) => g.sms),
    );
    for (const gpu of gpus) {
      const heads = common ?? emulatorKvHeads(spec, ctx, [gpu.sms]);
      if (heads === null)
        throw new RangeError(
          `${rowKey(row)} on ${gpu.name}: no KV-head count makes the emulator launch this GPU's split factors`,
        );
      progress(done, rows.length * gpus.length, `emu ${rowKey(row)} at ${heads} KV heads`);
      const key = `${rowKey(row)}@${heads}`;
      let counts = counted.get(key);
      if (!counts) {
        counts = await countDecodeStep(spec, shape, heads);
        counted.set(key, counts);
      }
      const scaled = scaleCounts(counts, spec.heads.kv);
      perGpu.get(gpu.id)!.set(rowKey(row), {
        launches: countedLaunches(spec, shape, scaled, occupancy.get(gpu.id)!),
        counts: scaled,
        emulatedKvHeads: heads,
      });
      done++;
    }
  }
  for (const gpu of gpus)
    result.set(gpu.id, { ok: true, rows: perGpu.get(gpu.id)!, ctasPerSm: occupancy.get(gpu.id)! });
  return result;
}
