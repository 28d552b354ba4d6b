// chunkattn tune <spec.ts> [--gpu ID|cpu] [--measure] [--budget S] [--shapes ...] [--head-dim N]
// [--write user|shipped|none] [--json]: searches the tunables per decode shape, prints a progress
// bar, the results table and the winners, writes them to the tuning DB, and an SVG of predicted
// against measured time where both exist.

import { writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import Table from 'cli-table3';
import { findGpu, GPU_IDS } from '../../autotune/gpus.ts';
import {
  cudaEventTimer,
  hostClock,
  MeasuredTimer,
  ModelTimer,
  type Timer,
  type TuneShape,
} from '../../autotune/measure.ts';
import { loadModelParams } from '../../autotune/model-params.ts';
import { SEQUENCE_FIRST_SHARERS } from '../../autotune/space.ts';
import { type ShapeResult, type TuneReport, tune } from '../../autotune/tune.ts';
import { barChartSvg } from '../../bench/svg-chart.ts';
import { gpuPresent } from '../../runtime/module-loader.ts';
import { UsageError } from '../exit-codes.ts';
import { parseInteger } from '../options.ts';
import type { Output } from '../output.ts';
import { loadSpecsWithFlags, type SpecFlags } from './compile.ts';
import { makeProgress } from './progress.ts';

export interface TuneFlags extends SpecFlags {
  readonly gpu?: string;
  readonly measure?: boolean;
  readonly budget?: string;
  readonly shapes?: string;
  readonly write?: string;
  readonly svg?: string;
  readonly json?: boolean;
}

/** The cpu target's default shapes: Table 3's shared case, and a small unshared batch. */
const CPU_SHAPES: readonly TuneShape[] = [
  { batch: 32, sharedTokens: 2048, privateTokens: 256 },
  { batch: 8, sharedTokens: 0, privateTokens: 1024 },
];

/** A GPU's default shapes (model): every batch and shared-length bucket the DB keys on. */
export function gpuShapes(): TuneShape[] {
  const out: TuneShape[] = [];
  for (const batch of [1, 2, 4, 8, 16, 32, 64, 128, 256])
    for (const sharedTokens of [0, 512, 1024, 2048, 4096])
      out.push({ batch, sharedTokens, privateTokens: 512 });
  return out;
}

/**
 * The shapes of the shipped model-derived DBs (scripts/ship-dbs.ts): 1, 4, 16 and 64 rows sharing
 * 0, 1024 or 4096 tokens (the emulator counts every candidate's step, minutes per spec and GPU on
 * a small machine); dispatch serves the buckets between and beyond from the nearest tuned one.
 */
export const SHIPPED_SHAPES: readonly TuneShape[] = gpuShapes().filter(
  (s) => [1, 4, 16, 64].includes(s.batch) && [0, 1024, 4096].includes(s.sharedTokens),
);

/** `32x2048+256,8x0+1024`: batch x shared tokens (+ private tokens, default 256). */
export function parseShapes(text: string): TuneShape[] {
  return text.split(',').map((part) => {
    const m = /^\s*(\d+)x(\d+)(?:\+(\d+))?\s*$/.exec(part);
    if (!m) throw new UsageError(`--shapes: '${part}' is not BATCHxSHARED[+PRIVATE], e.g. 32x2048+256`);
    const batch = parseInteger('--shapes batch', m[1]!);
    if (batch < 1 || batch > 4096) throw new UsageError(`--shapes: batch ${batch} is outside [1, 4096]`);
    return {
      batch,
      sharedTokens: parseInteger('--shapes shared', m[2]!),
      privateTokens: m[3] ? parseInteger('--shapes private', m[3]) : 256,
    };
  });
}

const us = (x: number | null) =>
  x === null ? '-' : x >= 1000 ? `${(x / 1000).toFixed(2)} ms` : `${x.toFixed(1)} µs`;
const label = (id: string) => id.replace(`min_sharers=${SEQUENCE_FIRST_SHARERS}`, 'min_sharers=off');

function shapeTable(result: ShapeResult): string {
  const table = new Table({
    head: [
      'candidate',
      'resources',
      'occupancy',
      'predicted',
      'measured',
      'samples',
      'error vs f64',
      'status',
    ],
  });
  for (const r of result.results) {
    const star = r === result.winner ? ' ★' : '';
    table.push([
      label(r.candidate.id) + star,
      Object.keys(r.candidate.kernel).length ? 'own build' : 'default build',
      r.occupancy ?? '-',
      us(r.predictedUs),
      us(r.measuredUs),
      r.samplesUs.length > 1 ? `${us(Math.min(...r.samplesUs))}–${us(Math.max(...r.samplesUs))}` : '-',
      r.maxError === null ? '-' : r.maxError.toExponential(2),
      r.status === 'timed' ? 'ok' : `${r.status}: ${r.reason ?? ''}`.slice(0, 60),
    ]);
  }
  const s = result.shape;
  const lines = [`b=${s.batch} shared=${s.sharedTokens} private=${s.privateTokens}`, table.toString()];
  if (result.winner && result.defaults) {
    const c = result.confirmation;
    lines.push(
      result.winner === result.defaults
        ? 'winner: the defaults'
        : `winner: ${label(result.winner.candidate.id)}` +
            (c
              ? `; alternating ${c.rounds} rounds: winner/defaults = ${c.medianRatio.toFixed(3)} median (range ${c.minRatio.toFixed(3)}–${c.maxRatio.toFixed(3)}, faster in ${c.wins}/${c.rounds})${c.confirmed ? '' : ': not confirmed, the DB keeps the defaults'}`
              : ''),
    );
  }
  return lines.join('\n');
}

function chart(report: TuneReport): string | null {
  const points = report.shapes.flatMap((s) =>
    s.results
      .filter((r) => r.predictedUs !== null && r.measuredUs !== null)
      .map((r) => ({ category: `b${s.shape.batch} s${s.shape.sharedTokens} ${label(r.candidate.id)}`, r })),
  );
  if (points.length === 0) return null;
  return barChartSvg(`chunkattn tune ${report.spec} on ${report.gpu}: predicted vs measured`, 'µs', [
    {
      label: 'predicted (model)',
      values: points.map((p) => ({ category: p.category, value: p.r.predictedUs! })),
    },
    { label: 'measured', values: points.map((p) => ({ category: p.category, value: p.r.measuredUs! })) },
  ]);
}

export async function tuneCommand(file: string, flags: TuneFlags, out: Output): Promise<void> {
  const specs = await loadSpecsWithFlags(file, flags);
  if (specs.length !== 1)
    throw new UsageError(`${file} holds ${specs.length} specs; tune takes a file with one`);
  const spec = specs[0]!;
  const gpu = flags.gpu === undefined || flags.gpu === 'cpu' ? 'cpu' : findGpu(flags.gpu).id;
  const target = gpu === 'cpu' ? 'cpu' : 'cuda';
  if (target === 'cpu' && !spec.targets.includes('cpu'))
    throw new UsageError(`spec "${spec.name}" does not target cpu (add 'cpu' to its targets)`);
  const budget = flags.budget === undefined ? 600 : parseInteger('--budget', flags.budget);
  const write = flags.write ?? 'user';
  if (!['user', 'shipped', 'none'].includes(write))
    throw new UsageError(`--write must be user, shipped or none, got '${write}'`);
  let timer: Timer;
  let predictor: Timer | undefined;
  if (target === 'cpu') {
    if (!flags.measure)
      throw new UsageError('the cpu target has no performance model: pass --measure to time it here');
    timer = new MeasuredTimer({ spec, target, clock: hostClock });
  } else if (flags.measure) {
    if (!gpuPresent())
      throw new UsageError(
        `--measure on ${gpu} times our kernels with CUDA events on this machine's GPU, and it has none ` +
          '(no /dev/nvidia0). Without --measure the model predicts.',
      );
    // CUDA events on this machine's GPU (the module's ca_event_* entry points), the model beside.
    timer = cudaEventTimer({ spec, target });
    predictor = new ModelTimer(findGpu(gpu), spec, loadModelParams());
  } else {
    timer = new ModelTimer(findGpu(gpu), spec, loadModelParams());
  }
  const shapes = flags.shapes ? parseShapes(flags.shapes) : target === 'cpu' ? CPU_SHAPES : gpuShapes();
  const progress = makeProgress('tune');
  let report: TuneReport;
  try {
    report = await tune({
      spec,
      gpu,
      target,
      timer,
      ...(predictor && { predictor }),
      shapes,
      budgetS: budget,
      write: write as 'user' | 'shipped' | 'none',
      cores: availableParallelism(),
      onProgress: (p) =>
        progress.update(
          p.timed + p.pruned,
          Math.max(p.total, 1),
          `built ${p.built}, pruned ${p.pruned}, timed ${p.timed} · ${p.label}`,
        ),
    });
  } finally {
    progress.stop();
    timer.close();
    predictor?.close();
  }
  for (const shape of report.shapes) out.info(shapeTable(shape));
  const clocks = new Set(
    report.shapes.flatMap((s) =>
      s.results.flatMap((r) => (r.measuredUs !== null && r.clock ? [r.clock] : [])),
    ),
  );
  if (clocks.has('emu-host-clock'))
    out.info('measured: emulator wall time on the host (emu-host-clock), not a GPU time');
  else if (clocks.size) out.info(`measured with: ${[...clocks].join(', ')}`);
  if (report.timer === 'model')
    out.info(`${gpu}: every time above is a model prediction (no ${gpu} here), none measured`);
  if (report.written)
    out.info(
      `wrote ${report.written.path}: ${report.written.added} added, ${report.written.replaced} replaced, ${report.written.droppedStale} stale dropped`,
    );
  const svg = chart(report);
  if (svg) {
    const path = resolve(flags.svg ?? `tune-${spec.name}-${gpu}.svg`);
    writeFileSync(path, svg);
    out.info(`wrote ${path}`);
  }
  out.result({
    tune: {
      ...report,
      shapes: report.shapes.map((s) => ({
        ...s,
        winner: s.winner?.candidate.id ?? null,
        defaults: s.defaults?.candidate.id ?? null,
      })),
    },
  });
}

export const TUNE_GPUS = ['cpu', ...GPU_IDS];
