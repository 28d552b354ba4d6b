// The work of the kernels in the ChunkAttention paper's Table 3 (Ye et al., ACL 2024, kernel
// latency on an A100-80GB), counted CTA by CTA for the model. Later these counts come from the
// emulator's counters for our own kernels; the paper's kernels are not ours, so they are
// counted here from their structure (KERNELS.md, "The reference algorithm").
//
// Shapes: batch 32, 32 heads (MHA), head dim 128, fp16 (2 B), chunk 64, one decode step over a
// context of np prompt tokens per sequence whose first ns are shared by all 32 sequences.
//
// How bytes are counted: every global load and store a CTA issues, once each (no cache model;
// the same rule the emulator's byte counters follow):
//   K/V    2 x tokens x d x 2 B per (head, token) read
//   q/out  d x 2 B per row read / written
//   tables 4 B per entry (block tables, chunk lists, lengths), 16 B per phase-1 work record
//   partials  the reference stores un-normalized o in fp16 (d x 2 B) plus fp32 (max, sum)
// FLOPs: q.k and p.v are 2 FLOPs per multiply-add (2 x d per token each); softmax costs 5 per
// score (scale, max, exp, sum, normalize); a partial merge 3 per element plus 10.
// Dependent steps: DRAM round trips one after another on the CTA's critical path, from the
// kernels' loop structure (below). Resources the paper does not report (registers, threads) are
// assumptions chosen to reproduce the occupancy the reference's structure implies; they are
// labelled where they are set.

import type { GpuSpec } from './gpus.ts';
import type { BlockWork, LaunchWork } from './model.ts';
import { occupancy } from './occupancy.ts';

export const TABLE3_SHAPE = { batch: 32, heads: 32, headDim: 128, chunkSize: 64, elementBytes: 2 } as const;

export interface Table3Row {
  readonly promptTokens: number;
  readonly sharedTokens: number;
  /** Published kernel latencies, µs (measured by the paper's authors on an A100-80GB). */
  readonly published: { readonly chunkAttnUs: number; readonly pagedAttnUs: number };
}

/** KERNELS.md "Anchor numbers": ChunkAttn and PagedAttn (vLLM) columns of Table 3. */
export const TABLE3: readonly Table3Row[] = [
  { promptTokens: 1024, sharedTokens: 0, published: { chunkAttnUs: 332.5, pagedAttnUs: 356.2 } },
  { promptTokens: 1024, sharedTokens: 1024, published: { chunkAttnUs: 56.0, pagedAttnUs: 355.4 } },
  { promptTokens: 2048, sharedTokens: 2048, published: { chunkAttnUs: 110.5, pagedAttnUs: 703.7 } },
  { promptTokens: 4096, sharedTokens: 0, published: { chunkAttnUs: 1301.8, pagedAttnUs: 1400.6 } },
  { promptTokens: 4096, sharedTokens: 4096, published: { chunkAttnUs: 206.2, pagedAttnUs: 1399.5 } },
];

export type PaperKernel = 'chunkAttn' | 'pagedAttn';

/** A row's name, "np/ns". */
export const rowKey = (row: Pick<Table3Row, 'promptTokens' | 'sharedTokens'>) =>
  `${row.promptTokens}/${row.sharedTokens}`;

const { batch, heads, headDim: d, chunkSize: c, elementBytes: E } = TABLE3_SHAPE;
const SOFTMAX_FLOPS = 5;
const ceilDiv = (a: number, b: number) => Math.ceil(a / b);

function ctasPerSm(gpu: GpuSpec, threads: number, registers: number, dynamicSmemBytes: number): number {
  return occupancy(gpu.limits, {
    threadsPerBlock: threads,
    registersPerThread: registers,
    staticSmemBytes: 0,
    dynamicSmemBytes,
  }).ctasPerSm;
}

/**
 * vLLM's paged_attention_v1 (the PagedAttn column): one CTA of 4 warps per (head, sequence),
 * 16-token pages. Pass 1: warp w takes pages w, w+4, ...; each page is a page-table load then a
 * dependent K load (2 round trips), logits go to shared memory. Pass 2 walks the pages again for
 * V (2 round trips each). Sharing does not change its work: every sequence reads its whole
 * context.
 */
export function pagedAttnLaunches(gpu: GpuSpec, row: Table3Row): LaunchWork[] {
  const tokens = row.promptTokens;
  const pages = ceilDiv(tokens, 16);
  const work: BlockWork = {
    bytes: 2 * tokens * d * E + 2 * d * E + 2 * pages * 4 + 4,
    tensorFlops: 0,
    cudaFlops: 4 * tokens * d + SOFTMAX_FLOPS * tokens,
    dependentSteps: 1 + 4 * ceilDiv(pages, 4),
  };
  // Assumed: 128 threads, 64 registers; shared memory = fp32 logits for the padded context plus
  // the cross-warp output buffer (2 x 128 x 4 B), as vLLM sizes it.
  const smem = Math.max(tokens * 4, 2 * d * 4) + 2 * 4 * 4;
  return [
    {
      kernel: 'paged_attention_v1',
      blocks: [{ count: heads * batch, work }],
      ctasPerSm: ctasPerSm(gpu, 128, 64, smem),
    },
  ];
}

/**
 * The paper's two-phase kernels (ChunkAttn column).
 * Phase 1, one CTA per (head, shared chunk): loads the chunk's K and V and the whole (padded)
 * batch's q, runs q.k and p.v on tensor cores for all 32 rows, stores fp16 partials; its critical
 * path is 8 + 4 serial round trips (K slices with one slice preloaded, then V).
 * Phase 2, one CTA of 4 warps per (head, sequence): warp w takes the sequence's chunks w, w+4, ...
 * (shared first); merging a stored partial costs 2 round trips, attending a private chunk 12.
 * Phase 1 is launched only when some chunk is shared.
 */
export function chunkAttnLaunches(gpu: GpuSpec, row: Table3Row): LaunchWork[] {
  const sharedChunks = row.sharedTokens / c;
  const privateTokens = row.promptTokens - row.sharedTokens;
  const privateChunks = ceilDiv(privateTokens, c);
  const partialBytes = d * E + 2 * 4;

  const phase1: BlockWork = {
    bytes: 2 * c * d * E + batch * d * E + 16 + batch * partialBytes,
    tensorFlops: 2 * (2 * batch * c * d),
    cudaFlops: SOFTMAX_FLOPS * batch * c,
    dependentSteps: 8 + 4,
  };
  // Warp-by-warp critical path of phase 2.
  const perWarp = [0, 0, 0, 0];
  for (let chunk = 0; chunk < sharedChunks + privateChunks; chunk++)
    perWarp[chunk % 4]! += chunk < sharedChunks ? 2 : 12;
  const phase2: BlockWork = {
    bytes:
      d * E +
      sharedChunks * partialBytes +
      2 * privateTokens * d * E +
      (sharedChunks + privateChunks) * 4 +
      4 +
      d * E,
    tensorFlops: 0,
    cudaFlops: 4 * privateTokens * d + SOFTMAX_FLOPS * privateTokens + sharedChunks * (3 * d + 10),
    dependentSteps: 2 + Math.max(...perWarp),
  };
  // Assumed resources: phase 1 128 threads, 128 registers, K/V chunk + q tile in shared memory
  // (40 KB): 4 CTAs/SM on A100. Phase 2 128 threads, 128 registers, 69,632 B of shared memory:
  // 2 CTAs/SM on A100 (KERNELS.md, "Model").
  return [
    {
      kernel: 'chunk_attn_phase1',
      blocks: [{ count: heads * sharedChunks, work: phase1 }],
      ctasPerSm: ctasPerSm(gpu, 128, 128, 2 * c * d * E + batch * d * E),
    },
    {
      kernel: 'chunk_attn_phase2',
      blocks: [{ count: heads * batch, work: phase2 }],
      ctasPerSm: ctasPerSm(gpu, 128, 128, 69632),
    },
  ];
}

export function paperLaunches(kernel: PaperKernel, gpu: GpuSpec, row: Table3Row): LaunchWork[] {
  return kernel === 'chunkAttn' ? chunkAttnLaunches(gpu, row) : pagedAttnLaunches(gpu, row);
}

/** Bytes of K/V that exist once: the floor any kernel must read. */
export function uniqueKvBytes(row: Table3Row): number {
  const perToken = heads * 2 * d * E;
  return row.sharedTokens * perToken + batch * (row.promptTokens - row.sharedTokens) * perToken;
}
