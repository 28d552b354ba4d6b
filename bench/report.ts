// What every `chunkattn bench NAME` report shares: options, the result shape, and writing
// NAME.json + NAME.svg to bench/out under the current directory (or --out DIR). A report prints
// its table last; with --json the one JSON object is the last line of stdout and the table goes
// to stderr.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Table from 'cli-table3';
import type { RuntimeTarget } from '../runtime/attention.ts';
import { barChartSvg, type ChartSeries } from './svg-chart.ts';

export interface BenchOptions {
  readonly quick: boolean;
  /** `--target`, for the reports that run on more than one (see cli/commands/bench.ts). */
  readonly target?: RuntimeTarget;
  /** Called with a short status line while the report runs (the CLI draws a progress bar). */
  readonly progress: (done: number, total: number, label: string) => void;
}

export interface BenchReport {
  readonly name: string;
  readonly title: string;
  readonly head: readonly string[];
  readonly rows: readonly (readonly (string | number)[])[];
  /** Lines printed under the table (what the numbers mean, caveats). */
  readonly notes: readonly string[];
  readonly json: Record<string, unknown>;
  readonly chart: { readonly title: string; readonly unit: string; readonly series: readonly ChartSeries[] };
  /** Set when a correctness gate of the report failed: the CLI exits non-zero after printing it. */
  readonly gateFailure?: string;
  /** A ready SVG that replaces the bar chart of `chart` (e.g. a line plot). */
  readonly svg?: string;
}

/** Default report folder: bench/out under the current directory (never inside the package). */
export function defaultBenchOut(): string {
  return resolve('bench', 'out');
}

export function renderTable(report: BenchReport): string {
  const table = new Table({ head: [...report.head], style: { head: [], border: [] } });
  for (const row of report.rows) table.push(row.map(String));
  return [report.title, table.toString(), ...report.notes].join('\n');
}

/** Writes <outDir>/<name>.json and .svg (default ./bench/out); returns their paths. */
export function writeReportFiles(
  report: BenchReport,
  outDir = defaultBenchOut(),
): { json: string; svg: string } {
  mkdirSync(outDir, { recursive: true });
  const json = join(outDir, `${report.name}.json`);
  const svg = join(outDir, `${report.name}.svg`);
  writeFileSync(json, JSON.stringify(report.json, null, 2) + '\n');
  writeFileSync(svg, report.svg ?? barChartSvg(report.chart.title, report.chart.unit, report.chart.series));
  return { json, svg };
}
