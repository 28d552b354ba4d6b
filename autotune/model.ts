// The static performance model for the cuda target: a prediction, never a measurement.
//
// A kernel launch is a list of CTAs (blocks), each described by the work it does: bytes moved
// through global memory, tensor-core and CUDA-core FLOPs, and the length of its chain of
// dependent DRAM round trips. Blocks are placed in waves over the GPU's CTA slots
// (SMs x CTAs per SM from the occupancy rules), in launch order. In a wave of n blocks each
// block gets
//   memory   its bytes at 1/n of eta x DRAM bandwidth,
//   compute  its FLOPs at its share of peak (the SM's peak split over the blocks on that SM),
//   latency  dependent steps x DRAM latency (a lone block cannot stream faster than its chain),
// and takes the largest of the three; a wave lasts as long as its slowest block. A launch costs
// the sum of its waves plus a fixed per-launch overhead.

import type { GpuSpec } from './gpus.ts';

/** The work of one CTA. */
export interface BlockWork {
  /** Bytes read and written through global memory. */
  readonly bytes: number;
  readonly tensorFlops: number;
  readonly cudaFlops: number;
  /** Dependent DRAM round trips on the CTA's critical path. */
  readonly dependentSteps: number;
}

/** `count` CTAs with the same work, in launch order. */
export interface BlockGroup {
  readonly count: number;
  readonly work: BlockWork;
}

export interface LaunchWork {
  readonly kernel: string;
  readonly blocks: readonly BlockGroup[];
  /** Resident CTAs per SM (from the occupancy calculator). */
  readonly ctasPerSm: number;
}

/** The model's constants: the fitted ones and the assumed DRAM latency. */
export interface ModelConstants {
  /** Fraction of peak DRAM bandwidth a kernel can sustain. */
  readonly eta: number;
  readonly launchOverheadUs: number;
  /** Loaded DRAM round trip, µs (an assumption per GPU, not fitted). */
  readonly dramLatencyUs: number;
}

export type Bound = 'memory' | 'compute' | 'latency';

export interface LaunchPrediction {
  readonly kernel: string;
  readonly ctas: number;
  readonly ctasPerSm: number;
  readonly waves: number;
  /** Model time of the launch including its overhead, µs. */
  readonly us: number;
  readonly bytes: number;
  /** What bound the waves that took most of the time. */
  readonly bound: Bound;
}

export interface Prediction {
  readonly us: number;
  readonly bytes: number;
  readonly launches: readonly LaunchPrediction[];
}

export class ModelError extends Error {
  override name = 'ModelError';
}

function blockSeconds(
  gpu: GpuSpec,
  work: BlockWork,
  inWave: number,
  constants: ModelConstants,
): { seconds: number; bound: Bound } {
  const blocksOnSm = Math.ceil(inWave / gpu.sms);
  const memory = work.bytes / ((constants.eta * gpu.dramGBs * 1e9) / inWave);
  const perBlockShare = 1 / (gpu.sms * blocksOnSm);
  const compute =
    work.tensorFlops / (gpu.fp16TensorTflops * 1e12 * perBlockShare) +
    work.cudaFlops / (gpu.fp32Tflops * 1e12 * perBlockShare);
  const latency = work.dependentSteps * constants.dramLatencyUs * 1e-6;
  if (memory >= compute && memory >= latency) return { seconds: memory, bound: 'memory' };
  return compute >= latency ? { seconds: compute, bound: 'compute' } : { seconds: latency, bound: 'latency' };
}

export function predictLaunch(gpu: GpuSpec, launch: LaunchWork, constants: ModelConstants): LaunchPrediction {
  if (!Number.isInteger(launch.ctasPerSm) || launch.ctasPerSm < 1)
    throw new ModelError(`${launch.kernel}: ${launch.ctasPerSm} CTAs per SM cannot run`);
  const slots = gpu.sms * launch.ctasPerSm;
  const ctas = launch.blocks.reduce((sum, g) => sum + g.count, 0);
  const bytes = launch.blocks.reduce((sum, g) => sum + g.count * g.work.bytes, 0);
  // Walk the groups wave by wave: a wave takes the next `slots` CTAs in launch order.
  const boundSeconds: Record<Bound, number> = { memory: 0, compute: 0, latency: 0 };
  let seconds = 0;
  let waves = 0;
  let group = 0;
  let usedOfGroup = 0;
  for (let placed = 0; placed < ctas; waves++) {
    const inWave = Math.min(slots, ctas - placed);
    let wave = { seconds: 0, bound: 'memory' as Bound };
    for (let left = inWave; left > 0; ) {
      const current = launch.blocks[group]!;
      const take = Math.min(left, current.count - usedOfGroup);
      if (take > 0) {
        const block = blockSeconds(gpu, current.work, inWave, constants);
        if (block.seconds > wave.seconds) wave = block;
      }
      left -= take;
      usedOfGroup += take;
      if (usedOfGroup === current.count) {
        group++;
        usedOfGroup = 0;
      }
    }
    seconds += wave.seconds;
    boundSeconds[wave.bound] += wave.seconds;
    placed += inWave;
  }
  const bound = (Object.entries(boundSeconds) as [Bound, number][]).reduce((a, b) =>
    b[1] > a[1] ? b : a,
  )[0];
  return {
    kernel: launch.kernel,
    ctas,
    ctasPerSm: launch.ctasPerSm,
    waves,
    us: seconds * 1e6 + constants.launchOverheadUs,
    bytes,
    bound,
  };
}

/** Model time of a sequence of launches (launches without CTAs are skipped: nothing is launched). */
export function predict(
  gpu: GpuSpec,
  launches: readonly LaunchWork[],
  constants: ModelConstants,
): Prediction {
  const out = launches
    .filter((l) => l.blocks.some((g) => g.count > 0))
    .map((l) => predictLaunch(gpu, l, constants));
  return {
    us: out.reduce((sum, l) => sum + l.us, 0),
    bytes: out.reduce((sum, l) => sum + l.bytes, 0),
    launches: out,
  };
}
