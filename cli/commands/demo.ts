// chunkattn demo: runs bench/demo.ts and prints what it measured.

import Table from 'cli-table3';
import { DEMO_DEFAULTS, runDemo } from '../../bench/demo.ts';
import { UsageError } from '../exit-codes.ts';
import { parseInteger } from '../options.ts';
import type { Output } from '../output.ts';
import { makeProgress } from './progress.ts';

export interface DemoFlags {
  readonly batch?: string;
  readonly shared?: string;
  readonly steps?: string;
  readonly heads?: string;
  readonly json?: boolean;
}

export async function demoCommand(flags: DemoFlags, out: Output): Promise<void> {
  const options = {
    batch: flags.batch ? parseInteger('--batch', flags.batch) : DEMO_DEFAULTS.batch,
    sharedTokens: flags.shared ? parseInteger('--shared', flags.shared) : DEMO_DEFAULTS.sharedTokens,
    suffixTokens: DEMO_DEFAULTS.suffixTokens,
    steps: flags.steps ? parseInteger('--steps', flags.steps) : DEMO_DEFAULTS.steps,
    heads: flags.heads ? parseInteger('--heads', flags.heads) : DEMO_DEFAULTS.heads,
  };
  if (options.batch < 1 || options.steps < 1 || options.heads < 1)
    throw new UsageError('--batch, --steps and --heads must be at least 1');
  out.info(
    `chunkattn demo: ${options.batch} sequences share a ${options.sharedTokens}-token system prompt, each adds ` +
      `${options.suffixTokens} unique tokens, then ${options.steps} decode steps.\n` +
      `Llama2-7B attention shapes (d=128, f16, chunk 64, ${options.heads === 32 ? '32 heads' : `${options.heads} heads instead of 32`}), ` +
      'one layer, on the cpu target (--heads 8 runs it 4× lighter).\n',
  );
  const progress = makeProgress('demo');
  const result = await runDemo({ ...options, progress: progress.update }).finally(() => progress.stop());
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  const table = new Table({
    head: ['', 'two-phase (ChunkAttention)', 'sequence-first (paged)'],
    style: { head: [], border: [] },
  });
  table.push(
    [
      'decode tokens/s',
      result.tokensPerSecond['two-phase'].toFixed(0),
      result.tokensPerSecond['sequence-first'].toFixed(0),
    ],
    [
      `max rel. error vs float64 (steps ${result.sampledSteps.join(', ')})`,
      result.maxRelativeError['two-phase'].toExponential(2),
      result.maxRelativeError['sequence-first'].toExponential(2),
    ],
  );
  out.info(
    `KV memory: ${mib(result.memory.storedBytes)} stored with sharing vs ${mib(result.memory.unsharedBytes)} without ` +
      `(${result.memory.savedPercent.toFixed(1)}% saved); at full Llama2-7B scale (32 layers × 32 heads) ` +
      `${result.memory.llama2Scale.storedGiB.toFixed(2)} GiB vs ${result.memory.llama2Scale.unsharedGiB.toFixed(2)} GiB.`,
  );
  out.info(table.toString());
  out.info(
    `two-phase is ${result.speedup.toFixed(2)}× the token rate of sequence-first; ` +
      `errors are within the f16 gate (${result.tolerance}): ${Math.max(result.maxRelativeError['two-phase'], result.maxRelativeError['sequence-first']) <= result.tolerance ? 'yes' : 'NO'}.`,
  );
  out.result(result);
}
