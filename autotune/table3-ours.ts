// Our kernels on the paper's Table 3 shapes, for the model: the real spec (Llama-2-7B-like: 32
// query heads over 32 KV heads, d = 128, f16, chunk 64), one decode step per row counted on the
// emulator (emu-counts.ts, heads scaled down where the split factors allow), resources from the
// cuda build's ptxas report per arch (sm_80 for the A100, sm_90a for the H100), occupancy from
// occupancy.ts; our-kernels.ts turns them into the model's launches.
//
// Each row's context: 32 sequences whose first ns prompt tokens are shared, np - ns more their
// own, plus the current token (the step's own K/V, which the runtime appends before attending;
// it is the sequence's private tail, so a fully shared prompt still leaves one private token).

import { findToolchain } from '../codegen/index.ts';
import { attention } from '../dsl/attention.ts';
import type { KernelSpec } from '../dsl/spec.ts';
import { countedSteps, type OursCounted, ptxasOccupancy } from './counted-step.ts';
import type { DecodeStepShape, StepCounts } from './emu-counts.ts';
import type { GpuSpec } from './gpus.ts';
import type { CtasPerSm } from './our-kernels.ts';
import { rowKey, TABLE3_SHAPE, type Table3Row } from './paper-kernels.ts';

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

export type { OursCounted } from './counted-step.ts';

export type OursCountedResult =
  | { readonly ok: true; readonly rows: ReadonlyMap<string, OursCounted>; readonly ctasPerSm: CtasPerSm }
  | { readonly ok: false; readonly reason: string };

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
  const perGpu = new Map<string, Map<string, OursCounted>>(gpus.map((g) => [g.id, new Map()]));
  const memo = new Map<string, StepCounts>(); // by shape and emulated heads
  let done = 0;
  for (const row of rows) {
    const steps = await countedSteps(spec, gpus, table3StepShape(row), {
      occupancy,
      memo,
      progress: (label) => progress(done, rows.length, `${rowKey(row)}: ${label}`),
    });
    for (const [id, step] of steps) perGpu.get(id)!.set(rowKey(row), step);
    done++;
  }
  for (const gpu of gpus)
    result.set(gpu.id, { ok: true, rows: perGpu.get(gpu.id)!, ctasPerSm: occupancy.get(gpu.id)! });
  return result;
}
