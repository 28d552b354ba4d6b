// chunkattn demo: runs bench/demo.ts and prints what it measured.

import Table from 'cli-table3';
import { type DemoResult, demoDefaults, runDemo } from '../../bench/demo.ts';
import { EXIT_TOOLCHAIN, UsageError } from '../exit-codes.ts';
import { parseInteger, parseRunTarget } from '../options.ts';
import type { Output } from '../output.ts';
import { makeProgress } from './progress.ts';

export interface DemoFlags {
  readonly batch?: string;
  readonly shared?: string;
  readonly steps?: string;
  readonly heads?: string;
  readonly target?: string;
  readonly json?: boolean;
}

const TARGET_LINE = {
  cpu: 'on the cpu target (--heads 8 runs it 4× lighter)',
  emu: 'on the emu target: the CUDA kernels run by the CPU emulator, which counts what a GPU would move (no speed)',
  cuda: 'on the GPU (cuda target)',
} as const;

export async function demoCommand(flags: DemoFlags, out: Output): Promise<void> {
  const target = flags.target ? parseRunTarget(flags.target) : 'cpu';
  const defaults = demoDefaults(target);
  const options = {
    batch: flags.batch ? parseInteger('--batch', flags.batch) : defaults.batch,
    sharedTokens: flags.shared ? parseInteger('--shared', flags.shared) : defaults.sharedTokens,
    suffixTokens: defaults.suffixTokens,
    steps: flags.steps ? parseInteger('--steps', flags.steps) : defaults.steps,
    heads: flags.heads ? parseInteger('--heads', flags.heads) : defaults.heads,
    target,
  };
  if (options.batch < 1 || options.steps < 1 || options.heads < 1)
    throw new UsageError('--batch, --steps and --heads must be at least 1');
  out.info(
    `chunkattn demo: ${options.batch} sequences share a ${options.sharedTokens}-token system prompt, each adds ` +
      `${options.suffixTokens} unique tokens, then ${options.steps} decode steps.\n` +
      `Llama2-7B attention shapes (d=128, f16, chunk 64, ${options.heads === 32 ? '32 heads' : `${options.heads} heads instead of 32`}), ` +
      `one layer, ${TARGET_LINE[target]}.\n`,
  );
  const progress = makeProgress('demo');
  const result = await runDemo({ ...options, progress: progress.update }).finally(() => progress.stop());
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  const table = new Table({
    head: ['', 'two-phase (ChunkAttention)', 'sequence-first (paged)'],
    style: { head: [], border: [] },
  });
  table.push(...measuredRows(result), [
    `max rel. error vs float64 (steps ${result.sampledSteps.join(', ')})`,
    result.maxRelativeError['two-phase'].toExponential(2),
    result.maxRelativeError['sequence-first'].toExponential(2),
  ]);
  out.info(
    `KV memory: ${mib(result.memory.storedBytes)} stored with sharing vs ${mib(result.memory.unsharedBytes)} without ` +
      `(${result.memory.savedPercent.toFixed(1)}% saved); at full Llama2-7B scale (32 layers × 32 heads) ` +
      `${result.memory.llama2Scale.storedGiB.toFixed(2)} GiB vs ${result.memory.llama2Scale.unsharedGiB.toFixed(2)} GiB.`,
  );
  out.info(table.toString());
  out.info(
    `${headline(result)}; ` +
      `errors are within the f16 gate (${result.tolerance}): ${withinGate(result) ? 'yes' : 'NO'}.`,
  );
  out.result(result);
  // Wrong attention is a failure, whatever the speed: a script running the demo must see it.
  if (!withinGate(result)) process.exitCode = EXIT_TOOLCHAIN;
}

function withinGate(result: DemoResult): boolean {
  return (
    Math.max(result.maxRelativeError['two-phase'], result.maxRelativeError['sequence-first']) <=
    result.tolerance
  );
}

/** cpu and cuda report what they timed; emu reports what it counted (its speed is the emulator's). */
function measuredRows(result: DemoResult): string[][] {
  const modes = ['two-phase', 'sequence-first'] as const;
  if (!result.counts) return [['decode tokens/s', ...modes.map((m) => result.tokensPerSecond[m].toFixed(0))]];
  const counts = result.counts;
  return [
    ['partition the module ran', ...modes.map((m) => result.ranAs[m])],
    [
      'K/V MiB read by the kernels (counted)',
      ...modes.map((m) => (counts[m].kvBytesRead / 2 ** 20).toFixed(2)),
    ],
    ['phase-1 (tensor-core) launches', ...modes.map((m) => String(counts[m].phase1Launches))],
  ];
}

function headline(result: DemoResult): string {
  if (!result.counts) return `two-phase is ${result.speedup.toFixed(2)}× the token rate of sequence-first`;
  const ratio = result.counts['sequence-first'].kvBytesRead / result.counts['two-phase'].kvBytesRead;
  return `two-phase reads ${ratio.toFixed(2)}× fewer K/V bytes than sequence-first (counted, emu)`;
}
