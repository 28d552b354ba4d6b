// chunkattn bench NAME [--quick] [--json] [--out DIR]: runs one report, prints its table last (to
// stderr under --json, with the JSON object as the last stdout line), and writes NAME.{json,svg}
// to ./bench/out (or DIR).

import { resolve } from 'node:path';
import type { BenchOptions, BenchReport } from '../../bench/report.ts';
import { renderTable, writeReportFiles } from '../../bench/report.ts';
import { UsageError } from '../exit-codes.ts';
import type { Output } from '../output.ts';
import { makeProgress } from './progress.ts';

type BenchRunner = (opts: BenchOptions) => Promise<BenchReport>;

const REPORTS: Record<string, () => Promise<BenchRunner>> = {
  build: async () => (await import('../../bench/build.ts')).runBuildBench,
  memory: async () => (await import('../../bench/memory.ts')).runMemoryBench,
  model: async () => (await import('../../bench/model.ts')).runModelBench,
  prefill: async () => (await import('../../bench/prefill.ts')).runPrefillBench,
  psa: async () => (await import('../../bench/psa.ts')).runPsaBench,
  tpp: async () => (await import('../../bench/tpp.ts')).runTppBench,
  traffic: async () => (await import('../../bench/traffic.ts')).runTrafficBench,
};

export const BENCH_NAMES = Object.keys(REPORTS);

export async function benchCommand(
  name: string,
  flags: { quick?: boolean; json?: boolean; out?: string },
  out: Output,
): Promise<void> {
  const load = REPORTS[name];
  if (!load) throw new UsageError(`unknown report '${name}'; available: ${BENCH_NAMES.join(', ')}`);
  const run = await load();
  const progress = makeProgress(name);
  const report = await run({ quick: !!flags.quick, progress: progress.update }).finally(() =>
    progress.stop(),
  );
  const files = writeReportFiles(report, ...(flags.out ? [resolve(flags.out)] : []));
  out.info(`wrote ${files.json} and ${files.svg}`);
  out.info(renderTable(report));
  out.result({ report: report.name, ...report.json });
}
