// The performance model's parameters live in one file, autotune/model-params.json, written by
// `npx tsx scripts/fit-model.ts` (autotune/fit.ts): the fitted constants and, beside them, the
// DRAM latency the model assumes per architecture (not fitted: the rows it is fitted on are
// bandwidth-bound and say nothing about latency).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../codegen/cache-key.ts';
import type { Arch } from '../dsl/spec.ts';
import type { GpuSpec } from './gpus.ts';
import type { ModelConstants } from './model.ts';

export interface FittedConstants {
  readonly eta: number;
  readonly launchOverheadUs: number;
}

export interface FitPoint {
  readonly kernel: string;
  readonly promptTokens: number;
  readonly sharedTokens: number;
  readonly publishedUs: number;
  readonly predictedUs: number;
  readonly relativeError: number;
}

export interface ModelParams {
  /** Bumped whenever the fitted constants change; tuning-DB model entries of another version are stale. */
  readonly modelVersion: number;
  readonly fitted: FittedConstants;
  readonly dramLatencyUs: Readonly<Record<Arch, number>>;
  readonly fit: {
    readonly gpu: string;
    readonly method: string;
    readonly points: readonly FitPoint[];
    readonly maxRelativeError: number;
  };
}

// From the package root, not import.meta.dirname: compiled code runs from dist/, the JSON ships
// beside the sources.
export const MODEL_PARAMS_PATH = join(PACKAGE_ROOT, 'autotune', 'model-params.json');

export function loadModelParams(path = MODEL_PARAMS_PATH): ModelParams {
  return JSON.parse(readFileSync(path, 'utf8')) as ModelParams;
}

export function constantsFor(
  gpu: GpuSpec,
  fitted: FittedConstants,
  dramLatencyUs: ModelParams['dramLatencyUs'],
): ModelConstants {
  return { ...fitted, dramLatencyUs: dramLatencyUs[gpu.limits.arch] };
}
