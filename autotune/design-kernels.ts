// Our two-phase CUDA design (KERNELS.md, "CUDA kernels: what the GPU needs") on the Table 3
// shapes, counted per CTA like the paper's kernels (paper-kernels.ts, same counting rules).
// Resources are the review prototype's ptxas figures quoted in KERNELS.md (phase 1: 168 / 164
// registers on sm_80 / sm_90a, 69,648 B dynamic smem; phase 2 at G = 1: 68 / 72 registers,
// 32 KB), so this is the DESIGN's prediction. When the product kernels land, their counts come
// from the emulator's traffic counters and their resources from the build's ptxas report.
//
//   phase 1  one CTA per (m-tile of <= 64 rows x G, KV head, split of the run's chunks): q in
//            registers, K/V in 64-token stages through a 2-deep cp.async ring, q.k and p.v on
//            tensor cores (rows padded to 16), fp32 partial (o, lse) per row and split.
//   phase 2  one CTA per (row, KV head): the row's private tokens in 32-token stages (2-deep),
//            then the run's partials merged (lse loads, then o loads).
// Critical path: 2 round trips of prologue (work record and slot list, then q), then one per
// stage (the ring hides all but one round trip per stage), phase 2 adds 2 for the merge.

import type { GpuSpec } from './gpus.ts';
import type { BlockWork, LaunchWork } from './model.ts';
import { occupancy } from './occupancy.ts';
import { TABLE3_SHAPE, type Table3Row } from './paper-kernels.ts';

/** The decode shape: rows, KV heads (G = 1), head dim, chunk size, bytes per K/V element. */
export interface DesignShape {
  readonly batch: number;
  readonly heads: number;
  readonly headDim: number;
  readonly chunkSize: number;
  readonly elementBytes: number;
}

const SOFTMAX_FLOPS = 5;
const RUN_RECORD_BYTES = 24; // CaSharedRun: 6 x int32
const ceilDiv = (a: number, b: number) => Math.ceil(a / b);

function resources(gpu: GpuSpec, d: number, E: number) {
  const sm90 = gpu.limits.arch === 'sm_90a';
  const phase1 = occupancy(gpu.limits, {
    threadsPerBlock: 128,
    registersPerThread: sm90 ? 164 : 168,
    staticSmemBytes: 0,
    dynamicSmemBytes: 69648,
  }).ctasPerSm;
  const phase2 = occupancy(gpu.limits, {
    threadsPerBlock: 128,
    registersPerThread: sm90 ? 72 : 68,
    staticSmemBytes: 0,
    dynamicSmemBytes: 2 * 2 * 32 * d * E,
  }).ctasPerSm;
  return { phase1, phase2 };
}

/**
 * The run split of phase 1: enough CTAs to fill one wave of phase-1 slots, at most 8 and at
 * most one per chunk (the prototype's rule, until the tuner chooses it).
 */
export function phase1Splits(gpu: GpuSpec, ctasPerSm: number, workItems: number, runChunks: number): number {
  return Math.max(1, Math.min(8, Math.floor((gpu.sms * ctasPerSm) / workItems), runChunks));
}

/** The launches for one row shape (default: Table 3's batch 32, 32 heads, d 128, c 64, f16). */
export function designLaunches(
  gpu: GpuSpec,
  row: Pick<Table3Row, 'promptTokens' | 'sharedTokens'>,
  shape: DesignShape = TABLE3_SHAPE,
): LaunchWork[] {
  const { batch, heads, headDim: d, chunkSize: c, elementBytes: E } = shape;
  const PARTIAL_BYTES = d * 4 + 4; // fp32 o + lse per row and head
  const occ = resources(gpu, d, E);
  const sharedChunks = row.sharedTokens / c;
  const privateTokens = row.promptTokens - row.sharedTokens;
  // Table 3 shares the prefix among all rows: one run, G = 1, so one m-tile of `batch` rows.
  const tileRows = batch;
  const paddedRows = ceilDiv(tileRows, 16) * 16;
  const splits = sharedChunks ? phase1Splits(gpu, occ.phase1, heads, sharedChunks) : 0;

  const phase1: { count: number; work: BlockWork }[] = [];
  for (let split = 0; split < splits; split++) {
    const chunks =
      Math.floor((sharedChunks * (split + 1)) / splits) - Math.floor((sharedChunks * split) / splits);
    const tokens = chunks * c;
    phase1.push({
      count: heads,
      work: {
        bytes:
          RUN_RECORD_BYTES +
          chunks * 4 +
          tileRows * 4 +
          tileRows * d * E +
          2 * tokens * d * E +
          tileRows * PARTIAL_BYTES,
        tensorFlops: 2 * (2 * paddedRows * tokens * d),
        cudaFlops: SOFTMAX_FLOPS * tileRows * tokens,
        dependentSteps: 2 + ceilDiv(tokens, 64),
      },
    });
  }
  const privateChunks = ceilDiv(privateTokens, c);
  const phase2: BlockWork = {
    bytes: 16 + privateChunks * 4 + d * E + 2 * privateTokens * d * E + splits * PARTIAL_BYTES + d * E,
    tensorFlops: 0,
    cudaFlops: 4 * privateTokens * d + SOFTMAX_FLOPS * privateTokens + splits * (3 * d + 10),
    dependentSteps: 2 + ceilDiv(privateTokens, 32) + (splits ? 2 : 0),
  };
  return [
    { kernel: 'phase1', blocks: phase1, ctasPerSm: occ.phase1 },
    { kernel: 'phase2', blocks: [{ count: batch * heads, work: phase2 }], ctasPerSm: occ.phase2 },
  ];
}
