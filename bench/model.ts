// bench model: the static performance model against the ChunkAttention paper's Table 3. Every
// "model" number here is a prediction of the model (autotune/model.ts), not a measurement; the
// "paper" numbers are the paper authors' measurements on an A100-80GB. The A100 report is fitted
// on the unshared rows and predicts the shared ones; the H100 report is prediction only.
// "ours": the model's prediction for our CUDA kernels from counted inputs: launches, CTAs and
// bytes of one decode step counted on the emulator, registers and shared memory from ptxas
// (sm_80 / sm_90a), FLOPs computed from the context, latency chains modelled
// (autotune/table3-ours.ts). "ours (design)": the same model on the design's hand-written figures
// (autotune/design-kernels.ts), for comparison. --quick counts the shared rows only.

import { findGpu } from '../autotune/gpus.ts';
import type { LaunchPrediction } from '../autotune/model.ts';
import { loadModelParams } from '../autotune/model-params.ts';
import { type PaperKernel, TABLE3 } from '../autotune/paper-kernels.ts';
import { type Table3Model, type Table3ModelRow, table3Model } from '../autotune/table3.ts';
import { type OursCountedResult, oursOnTable3 } from '../autotune/table3-ours.ts';
import type { BenchOptions, BenchReport } from './report.ts';

const GPUS = ['a100-80', 'h100-sxm'] as const;
const KERNELS: readonly PaperKernel[] = ['pagedAttn', 'chunkAttn'];

const us = (value: number | null) => (value === null ? '-' : value.toFixed(1));
const percent = (value: number | null) =>
  value === null ? '-' : `${value >= 0 ? '+' : ''}${(100 * value).toFixed(1)}%`;
const rowName = (r: { promptTokens: number; sharedTokens: number }) => `${r.promptTokens}/${r.sharedTokens}`;

const launchJson = (l: LaunchPrediction) => ({
  kernel: l.kernel,
  ctas: l.ctas,
  ctasPerSm: l.ctasPerSm,
  waves: l.waves,
  modelUs: l.us,
  bound: l.bound,
});

function oursJson(ours: Table3ModelRow['ours']) {
  if (!ours) return null;
  const { counts, emulatedKvHeads } = ours.counted;
  return {
    modelUs: ours.modelUs,
    emulatedKvHeads,
    kvHeads: counts.kvHeads,
    splits: counts.splits,
    launches: ours.launches.map((l) => ({
      ...launchJson(l),
      countedCtas: counts.kernels[l.kernel]?.ctas,
      countedBytes: counts.kernels[l.kernel]?.bytes,
    })),
  };
}

function gpuJson(model: Table3Model) {
  const shared = model.rows.filter((r) => r.sharedTokens > 0);
  return {
    gpu: model.gpu.name,
    label: model.predictionOnly
      ? 'prediction only: no published numbers for this GPU; constants from the A100 fit'
      : 'model fitted on the unshared rows; shared rows are predictions',
    ...(model.predictionOnly
      ? {}
      : { unsharedMaxError: model.unsharedMaxError, sharedMaxError: model.sharedMaxError }),
    sharedPredictedUs: shared.map((r) => ({
      promptTokens: r.promptTokens,
      sharedTokens: r.sharedTokens,
      pagedAttn: r.kernels.pagedAttn.modelUs,
      chunkAttn: r.kernels.chunkAttn.modelUs,
      paperChunkAttn: r.kernels.chunkAttn.paperUs,
      ours: r.ours?.modelUs ?? null,
      oursDesign: r.oursDesign.modelUs,
    })),
    oursBelowPaperChunkAttn: model.predictionOnly
      ? null
      : shared.every((r) => r.ours !== null && r.ours.modelUs < (r.kernels.chunkAttn.paperUs ?? 0)),
    rows: model.rows.map((r) => ({
      promptTokens: r.promptTokens,
      sharedTokens: r.sharedTokens,
      role: r.role,
      uniqueKvBytes: r.uniqueKvBytes,
      ours: oursJson(r.ours),
      oursDesign: { modelUs: r.oursDesign.modelUs, launches: r.oursDesign.launches.map(launchJson) },
      ...Object.fromEntries(
        KERNELS.map((k) => {
          const row = r.kernels[k];
          return [
            k,
            {
              modelUs: row.modelUs,
              paperUs: row.paperUs,
              relativeError: row.relativeError,
              launches: row.launches.map(launchJson),
            },
          ];
        }),
      ),
    })),
  };
}

export async function runModelBench(opts: BenchOptions): Promise<BenchReport> {
  const params = loadModelParams();
  const countedRows = TABLE3.filter((r) => !opts.quick || r.sharedTokens > 0);
  const ours: Map<string, OursCountedResult> = await oursOnTable3(
    GPUS.map((g) => findGpu(g)),
    countedRows,
    opts.progress,
  );
  const models = GPUS.map((gpu) => {
    const counted = ours.get(findGpu(gpu).id);
    return table3Model(gpu, params, counted?.ok ? counted.rows : new Map());
  });
  opts.progress(1, 1, 'done');
  const unavailable = [...ours.values()].find((o) => !o.ok);
  const occupancyNote = [...ours.entries()]
    .map(([id, o]) =>
      o.ok
        ? `${id}: ${Object.entries(o.ctasPerSm)
            .map(([k, n]) => `${k.replace('decode_', '')} ${n}`)
            .join(', ')} CTAs/SM`
        : `${id}: -`,
    )
    .join('; ');
  const [a100, h100] = models as [Table3Model, Table3Model];

  const rows = models.flatMap((m) =>
    m.rows.map((r) => [
      m.gpu.name,
      rowName(r),
      r.role,
      us(r.kernels.pagedAttn.paperUs),
      us(r.kernels.pagedAttn.modelUs),
      percent(r.kernels.pagedAttn.relativeError),
      us(r.kernels.chunkAttn.paperUs),
      us(r.kernels.chunkAttn.modelUs),
      percent(r.kernels.chunkAttn.relativeError),
      us(r.ours?.modelUs ?? null),
      us(r.oursDesign.modelUs),
      r.kernels.chunkAttn.launches.map((l) => `${l.kernel.replace('chunk_attn_', '')} ${l.bound}`).join(', '),
      r.ours?.launches.map((l) => `${l.kernel.replace('decode_', '')} ${l.bound}`).join(', ') ?? '-',
    ]),
  );
  const { eta, launchOverheadUs } = params.fitted;
  return {
    name: 'model',
    title:
      'Performance model vs the ChunkAttention paper, Table 3 (b=32, 32 heads, d=128, fp16, c=64). ' +
      'model = prediction of autotune/model.ts, NOT a measurement; paper = the authors\u2019 A100-80GB measurement.',
    head: [
      'GPU',
      'np/ns',
      'row',
      'PagedAttn paper µs',
      'PagedAttn model µs',
      'error',
      'ChunkAttn paper µs',
      'ChunkAttn model µs',
      'error',
      'ours model µs (counted inputs)',
      'ours (design) model µs',
      'ChunkAttn bound by',
      'ours bound by',
    ],
    rows,
    notes: [
      `fitted constants (A100 unshared rows only): eta ${eta}, launch overhead ${launchOverheadUs} µs; ` +
        `assumed DRAM round trip ${params.dramLatencyUs.sm_80} µs (sm_80), ${params.dramLatencyUs.sm_90a} µs (sm_90a); model version ${params.modelVersion}`,
      `A100 unshared max |error| ${percent(a100.unsharedMaxError)} (fit), shared rows max |error| ${percent(a100.sharedMaxError)} (predicted, not fitted)`,
      `${h100.gpu.name}: prediction only, labelled so: the paper publishes no H100 numbers.`,
      unavailable && !unavailable.ok
        ? `ours: not counted (${unavailable.reason}); only the design figures are shown.`
        : 'ours: the model on our CUDA kernels (decode_phase1 + decode_phase2, split-KV merge when launched) from COUNTED inputs: ' +
          'launches, CTAs and global bytes of one decode step counted by the emulator (heads scaled down at equal split factors, scaled back exactly), ' +
          `registers/smem from ptxas (sm_80, sm_90a) through the occupancy rules (${occupancyNote}); ` +
          'FLOPs computed from the context (the emulator counts none); dependent DRAM round trips MODELLED from the loop structure. ' +
          'A prediction, not a measurement.',
      ...(opts.quick ? ['--quick: our kernels counted on the shared rows only (unshared rows: -).'] : []),
      'ours (design): the design\u2019s hand-written figures with the review prototype\u2019s ptxas resources (KERNELS.md), for comparison; a prediction.',
    ],
    json: {
      predictionNotMeasurement: true,
      modelVersion: params.modelVersion,
      fittedConstants: params.fitted,
      assumedDramLatencyUs: params.dramLatencyUs,
      fit: { gpu: params.fit.gpu, method: params.fit.method },
      unsharedMaxError: a100.unsharedMaxError,
      sharedMaxError: a100.sharedMaxError,
      oursSource:
        unavailable && !unavailable.ok
          ? `not counted: ${unavailable.reason}`
          : 'emulator counts (launches, CTAs, bytes) + ptxas occupancy; FLOPs computed; latency chains modelled',
      sharedPredictedUs: gpuJson(a100).sharedPredictedUs,
      oursBelowPaperChunkAttn: gpuJson(a100).oursBelowPaperChunkAttn,
      a100: gpuJson(a100),
      h100: gpuJson(h100),
    },
    chart: {
      title: 'Table 3 kernel latency: paper (A100, measured) vs model (predicted)',
      unit: 'µs',
      series: [
        ...KERNELS.map((k) => ({
          label: `${k} paper (A100)`,
          values: a100.rows.map((r) => ({ category: rowName(r), value: r.kernels[k].paperUs ?? 0 })),
        })),
        ...models.flatMap((m) => [
          ...KERNELS.map((k) => ({
            label: `${k} model (${m.gpu.id})`,
            values: m.rows.map((r) => ({ category: rowName(r), value: r.kernels[k].modelUs })),
          })),
          {
            label: `ours model (${m.gpu.id})`,
            values: m.rows.map((r) => ({ category: rowName(r), value: r.ours?.modelUs ?? 0 })),
          },
          {
            label: `ours (design) model (${m.gpu.id})`,
            values: m.rows.map((r) => ({ category: rowName(r), value: r.oursDesign.modelUs })),
          },
        ]),
      ],
    },
  };
}
