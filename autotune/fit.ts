// Fitting the model's constants (eta, launch overhead) on the paper's UNSHARED Table 3 rows
// only: PagedAttention and ChunkAttention at 1024/0 and 4096/0 on the A100-80GB, four points for
// two constants. The shared rows are left out on purpose: the model predicts them.
//
// Objective: the sum of squared relative errors, minimized by a grid search refined around the
// best point (deterministic; the objective is smooth and two-dimensional). Results are rounded
// (eta to 1e-4, overhead to 0.01 µs) so a refit of unchanged inputs writes identical JSON.

import { findGpu } from './gpus.ts';
import { predict } from './model.ts';
import type { FitPoint, FittedConstants, ModelParams } from './model-params.ts';
import { constantsFor } from './model-params.ts';
import { type PaperKernel, paperLaunches, TABLE3 } from './paper-kernels.ts';

export const FIT_GPU = 'a100-80';
export const FIT_METHOD =
  'least squares of relative error over the unshared Table 3 rows (PagedAttn, ChunkAttn at 1024/0, 4096/0), grid search refined 8 times';

const KERNELS: readonly PaperKernel[] = ['pagedAttn', 'chunkAttn'];

export function fitPoints(fitted: FittedConstants, dramLatencyUs: ModelParams['dramLatencyUs']): FitPoint[] {
  const gpu = findGpu(FIT_GPU);
  const constants = constantsFor(gpu, fitted, dramLatencyUs);
  const points: FitPoint[] = [];
  for (const row of TABLE3.filter((r) => r.sharedTokens === 0))
    for (const kernel of KERNELS) {
      const publishedUs = kernel === 'chunkAttn' ? row.published.chunkAttnUs : row.published.pagedAttnUs;
      const predictedUs = predict(gpu, paperLaunches(kernel, gpu, row), constants).us;
      points.push({
        kernel,
        promptTokens: row.promptTokens,
        sharedTokens: row.sharedTokens,
        publishedUs,
        predictedUs,
        relativeError: predictedUs / publishedUs - 1,
      });
    }
  return points;
}

const objective = (points: readonly FitPoint[]) => points.reduce((sum, p) => sum + p.relativeError ** 2, 0);

export function fitModel(dramLatencyUs: ModelParams['dramLatencyUs']): {
  fitted: FittedConstants;
  points: FitPoint[];
  maxRelativeError: number;
} {
  let range = { eta: [0.3, 1.0], overhead: [0, 50] };
  let best: FittedConstants = { eta: 0.8, launchOverheadUs: 5 };
  const steps = 24;
  for (let round = 0; round < 8; round++) {
    let bestScore = Number.POSITIVE_INFINITY;
    for (let i = 0; i <= steps; i++)
      for (let j = 0; j <= steps; j++) {
        const candidate = {
          eta: range.eta[0]! + ((range.eta[1]! - range.eta[0]!) * i) / steps,
          launchOverheadUs: range.overhead[0]! + ((range.overhead[1]! - range.overhead[0]!) * j) / steps,
        };
        const score = objective(fitPoints(candidate, dramLatencyUs));
        if (score < bestScore) {
          bestScore = score;
          best = candidate;
        }
      }
    const etaSpan = (range.eta[1]! - range.eta[0]!) / 4;
    const overheadSpan = (range.overhead[1]! - range.overhead[0]!) / 4;
    range = {
      eta: [Math.max(0.05, best.eta - etaSpan), Math.min(1, best.eta + etaSpan)],
      overhead: [Math.max(0, best.launchOverheadUs - overheadSpan), best.launchOverheadUs + overheadSpan],
    };
  }
  const fitted = {
    eta: Math.round(best.eta * 1e4) / 1e4,
    launchOverheadUs: Math.round(best.launchOverheadUs * 100) / 100,
  };
  const points = fitPoints(fitted, dramLatencyUs);
  return { fitted, points, maxRelativeError: Math.max(...points.map((p) => Math.abs(p.relativeError))) };
}
