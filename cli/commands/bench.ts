// chunkattn bench NAME [--quick] [--json] [--out DIR]: runs one report, prints its table last (to
// stderr under --json, with the JSON object as the last stdout line), and writes NAME.{json,svg}
// to ./bench/out (or DIR).

import { resolve } from 'node:path';
import type { BenchOptions, BenchReport } from '../../bench/report.ts';
import { renderTable, writeReportFiles } from '../../bench/report.ts';
import type { BuildTarget } from '../../dsl/spec.ts';
import { EXIT_TOOLCHAIN, UsageError } from '../exit-codes.ts';
import { parseRunTarget } from '../options.ts';
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

/** The reports that take `--target`, and the targets each runs on (the first is the default). */
const REPORT_TARGETS: Readonly<Record<string, readonly BuildTarget[]>> = { tpp: ['cpu', 'emu'] };

export async function benchCommand(
  name: string,
  flags: { quick?: boolean; json?: boolean; out?: string; target?: string },
  out: Output,
): Promise<void> {
  const load = REPORTS[name];
  if (!load) throw new UsageError(`unknown report '${name}'; available: ${BENCH_NAMES.join(', ')}`);
  const target = flags.target ? parseRunTarget(flags.target) : undefined;
  const targets = REPORT_TARGETS[name];
  if (target && !targets?.includes(target))
    throw new UsageError(
      targets
        ? `bench ${name} runs on ${targets.join(' or ')}, not ${target}`
        : `bench ${name} has no --target (reports with one: ${Object.keys(REPORT_TARGETS).join(', ')})`,
    );
  const run = await load();
  const progress = makeProgress(name);
  const report = await run({
    quick: !!flags.quick,
    progress: progress.update,
    ...(target ? { target } : {}),
  }).finally(() => progress.stop());
  const files = writeReportFiles(report, ...(flags.out ? [resolve(flags.out)] : []));
  out.info(`wrote ${files.json} and ${files.svg}`);
  out.info(renderTable(report));
  out.result({ report: report.name, ...report.json });
  if (report.gateFailure) {
    process.stderr.write(`bench ${name}: ${report.gateFailure}\n`);
    process.exitCode = EXIT_TOOLCHAIN;
  }
}
