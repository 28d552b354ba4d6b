// Our CUDA decode kernels (decode_phase1.cuh, decode_phase2.cuh) as the performance model sees
// them, from what is counted and what is compiled:
//
//   counted (emulator, emu-counts.ts)  per kernel: launches, CTAs (the grid, split factors
//                                      included) and the bytes its global loads and stores request
//   compiled (ptxas, the cuda build)   registers and static shared memory per kernel and arch; with
//                                      the plan's threads and dynamic shared memory they give
//                                      CTAs per SM (occupancy.ts), hence the waves
//   computed from the context          FLOPs: the mma work phase 1 issues (m16 blocks × the
//                                      split's 64-token stages × D, q·k and p·v), the CUDA-core work
//                                      of phase 2 and the merges, by the counting rule of
//                                      paper-kernels.ts (2 per multiply-add, 5 per softmax score,
//                                      3 per merged element + 10); the shim does not count FLOPs
//   modelled                           the dependent DRAM round trips of each CTA, from the loop
//                                      structure (2 prologue steps, then one per pipeline stage of
//                                      a 2-deep cp.async ring; phase 2 adds 2 to merge partials)
//
// A CTA's bytes: the kernel's counted total over its CTAs; phase 1's K/V bytes are shared out by
// the chunks of each CTA's split (the kernel gives split s chunks [⌊s·n/S⌋, ⌊(s+1)·n/S⌋)).

import { phase1Geometry, phase2Geometry } from '../codegen/plan.ts';
import type { KernelSpec } from '../dsl/spec.ts';
import {
  type CountedKernel,
  type DecodeStepShape,
  type StepCounts,
  splitContext,
  totalBytes,
} from './emu-counts.ts';
import type { BlockGroup, LaunchWork } from './model.ts';

const SOFTMAX_FLOPS = 5;
const MERGE_FLOPS = (d: number) => 3 * d + 10;

/** CTAs per SM of each decode kernel on one arch (from ptxas through occupancy.ts). */
export type CtasPerSm = Readonly<Record<string, number>>;

function perCta(kernel: CountedKernel): number {
  return totalBytes(kernel) / kernel.ctas;
}

function need(counts: StepCounts, name: string): CountedKernel {
  const k = counts.kernels[name];
  if (!k) throw new RangeError(`the counts have no ${name} launch`);
  return k;
}

function occupancyOf(ctasPerSm: CtasPerSm, name: string): number {
  const n = ctasPerSm[name];
  if (n === undefined) throw new RangeError(`no occupancy for ${name}`);
  return n;
}

/** The model's launches for one decode step of `spec` (full head count) from its counts. */
export function countedLaunches(
  spec: KernelSpec,
  shape: DecodeStepShape,
  counts: StepCounts,
  ctasPerSm: CtasPerSm,
): LaunchWork[] {
  if (counts.kvHeads !== spec.heads.kv)
    throw new RangeError(`counts for ${counts.kvHeads} KV heads, the spec has ${spec.heads.kv}`);
  const g = spec.heads.q / spec.heads.kv;
  const d = spec.headDim;
  const c = spec.chunkSize;
  const ctx = splitContext(shape, c);
  const { phase1Splits: s1, phase2Splits: s2 } = counts.splits;
  const launches: LaunchWork[] = [];

  if (counts.kernels.decode_phase1) {
    const k = need(counts, 'decode_phase1');
    const p1 = phase1Geometry(spec);
    const [run] = ctx.runs;
    if (!run || ctx.runs.length !== 1) throw new RangeError('phase 1 is modelled for one shared run');
    const perSplit = k.ctas / s1; // CTAs with the same split index (items × KV heads)
    const kvPerChunk = k.bytes.kv / (perSplit * run.chunks);
    const otherPerCta = (totalBytes(k) - k.bytes.kv) / k.ctas;
    const mcount = Math.min(run.rows * g, p1.mTile);
    const rowsPadded = 16 * Math.ceil(mcount / 16);
    const blocks: BlockGroup[] = [];
    for (let s = 0; s < s1; s++) {
      const chunks = Math.floor(((s + 1) * run.chunks) / s1) - Math.floor((s * run.chunks) / s1);
      const tokens = Math.ceil((chunks * c) / p1.tileTokens) * p1.tileTokens;
      blocks.push({
        count: perSplit,
        work: {
          bytes: otherPerCta + kvPerChunk * chunks,
          tensorFlops: 2 * (2 * rowsPadded * tokens * d),
          cudaFlops: SOFTMAX_FLOPS * mcount * chunks * c,
          dependentSteps: 2 + tokens / p1.tileTokens,
        },
      });
    }
    launches.push({ kernel: 'decode_phase1', blocks, ctasPerSm: occupancyOf(ctasPerSm, 'decode_phase1') });
  }

  const p2 = phase2Geometry(spec);
  const k2 = need(counts, 'decode_phase2');
  const tokens = Math.ceil(ctx.maxRowTokens / s2);
  const partials = counts.kernels.decode_phase1 ? s1 : 0;
  launches.push({
    kernel: 'decode_phase2',
    blocks: [
      {
        count: k2.ctas,
        work: {
          bytes: perCta(k2),
          tensorFlops: 0,
          cudaFlops: g * (4 * tokens * d + SOFTMAX_FLOPS * tokens + partials * MERGE_FLOPS(d)),
          dependentSteps: 2 + Math.ceil(tokens / p2.tileTokens) + (partials ? 2 : 0),
        },
      },
    ],
    ctasPerSm: occupancyOf(ctasPerSm, 'decode_phase2'),
  });

  const merge = counts.kernels.decode_merge_splits;
  if (merge)
    launches.push({
      kernel: 'decode_merge_splits',
      blocks: [
        {
          count: merge.ctas,
          work: {
            bytes: perCta(merge),
            tensorFlops: 0,
            cudaFlops: g * s2 * MERGE_FLOPS(d),
            dependentSteps: 2,
          },
        },
      ],
      ctasPerSm: occupancyOf(ctasPerSm, 'decode_merge_splits'),
    });
  return launches;
}
