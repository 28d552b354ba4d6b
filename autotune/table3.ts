// The model against the paper's Table 3: per row, the model's time for PagedAttention and
// ChunkAttention beside the published ones. On the A100 the unshared rows are the fit's points
// and the shared rows are predictions; on any other GPU every row is a prediction only (the
// paper publishes A100 numbers alone). Beside them, the model's prediction for our own kernels:
// counted on the emulator with ptxas resources (table3-ours.ts) when the caller passes them, and
// the design's hand-written figures (design-kernels.ts) for comparison. Neither has a published
// or measured number.

import { designLaunches } from './design-kernels.ts';
import { FIT_GPU } from './fit.ts';
import { findGpu, type GpuSpec } from './gpus.ts';
import { type LaunchPrediction, predict } from './model.ts';
import { constantsFor, type ModelParams } from './model-params.ts';
import {
  type PaperKernel,
  paperLaunches,
  rowKey,
  TABLE3,
  type Table3Row,
  uniqueKvBytes,
} from './paper-kernels.ts';
import type { OursCounted } from './table3-ours.ts';

export type RowRole = 'fit' | 'prediction' | 'prediction only';

export interface KernelRow {
  readonly modelUs: number;
  /** Published time on the paper's A100; null on other GPUs. */
  readonly paperUs: number | null;
  /** model / paper - 1; null without a published number. */
  readonly relativeError: number | null;
  readonly launches: readonly LaunchPrediction[];
}

export interface Table3ModelRow {
  readonly promptTokens: number;
  readonly sharedTokens: number;
  readonly role: RowRole;
  readonly uniqueKvBytes: number;
  readonly kernels: Readonly<Record<PaperKernel, KernelRow>>;
  /** Our two-phase design (KERNELS.md figures): a prediction, never compared with a measurement. */
  readonly oursDesign: { readonly modelUs: number; readonly launches: readonly LaunchPrediction[] };
  /**
   * Our kernels, counted on the emulator with ptxas resources (a prediction of the model from
   * counted inputs); null when they were not counted for this row.
   */
  readonly ours: {
    readonly modelUs: number;
    readonly launches: readonly LaunchPrediction[];
    readonly counted: OursCounted;
  } | null;
}

export interface Table3Model {
  readonly gpu: GpuSpec;
  readonly predictionOnly: boolean;
  readonly rows: readonly Table3ModelRow[];
  /** Largest |relative error| over the unshared rows (the fit's points); null when prediction only. */
  readonly unsharedMaxError: number | null;
  /** Largest |relative error| over the shared rows (out-of-sample); null when prediction only. */
  readonly sharedMaxError: number | null;
}

const KERNELS: readonly PaperKernel[] = ['pagedAttn', 'chunkAttn'];

function published(row: Table3Row, kernel: PaperKernel): number {
  return kernel === 'chunkAttn' ? row.published.chunkAttnUs : row.published.pagedAttnUs;
}

/**
 * The model on every Table 3 row for one GPU. `ours`: our kernels' launches per row (rowKey),
 * from oursOnTable3; rows without an entry get `ours: null`.
 */
export function table3Model(
  gpuName: string,
  params: ModelParams,
  ours: ReadonlyMap<string, OursCounted> = new Map(),
): Table3Model {
  const gpu = findGpu(gpuName);
  const predictionOnly = gpu.id !== FIT_GPU;
  const constants = constantsFor(gpu, params.fitted, params.dramLatencyUs);
  const rows = TABLE3.map((row): Table3ModelRow => {
    const kernels = {} as Record<PaperKernel, KernelRow>;
    for (const kernel of KERNELS) {
      const prediction = predict(gpu, paperLaunches(kernel, gpu, row), constants);
      const paperUs = predictionOnly ? null : published(row, kernel);
      kernels[kernel] = {
        modelUs: prediction.us,
        paperUs,
        relativeError: paperUs === null ? null : prediction.us / paperUs - 1,
        launches: prediction.launches,
      };
    }
    const role: RowRole = predictionOnly ? 'prediction only' : row.sharedTokens === 0 ? 'fit' : 'prediction';
    const design = predict(gpu, designLaunches(gpu, row), constants);
    const counted = ours.get(rowKey(row));
    const oursPrediction = counted ? predict(gpu, counted.launches, constants) : null;
    return {
      ...row,
      role,
      uniqueKvBytes: uniqueKvBytes(row),
      kernels,
      oursDesign: { modelUs: design.us, launches: design.launches },
      ours:
        counted && oursPrediction
          ? { modelUs: oursPrediction.us, launches: oursPrediction.launches, counted }
          : null,
    };
  });
  const maxError = (role: RowRole) => {
    const errors = rows
      .filter((r) => r.role === role)
      .flatMap((r) => KERNELS.map((k) => Math.abs(r.kernels[k].relativeError ?? 0)));
    return predictionOnly ? null : Math.max(...errors);
  };
  return {
    gpu,
    predictionOnly,
    rows,
    unsharedMaxError: maxError('fit'),
    sharedMaxError: maxError('prediction'),
  };
}
