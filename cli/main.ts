// The chunkattn program: parses flags and calls the libraries; no logic lives here.

import { Command } from 'commander';
import { PACKAGE_VERSION } from '../codegen/index.ts';
import { BENCH_NAMES, benchCommand } from './commands/bench.ts';
import { CACHE_ACTIONS, cacheCommand } from './commands/cache.ts';
import { compileCommand } from './commands/compile.ts';
import { demoCommand } from './commands/demo.ts';
import { doctorCommand } from './commands/doctor.ts';
import { inspectCommand } from './commands/inspect.ts';
import { TUNE_GPUS, tuneCommand } from './commands/tune.ts';
import { describeError, EXIT_OK, EXIT_USER } from './exit-codes.ts';
import { makeOutput } from './output.ts';

const program = new Command()
  .name('chunkattn')
  .description(
    'Prefix-shared chunk attention: compile attention specs to CUDA and CPU kernels, run and benchmark them',
  )
  .version(PACKAGE_VERSION, '-V, --version', 'print the package version')
  .option('--verbose', 'show stack traces of internal errors')
  .showHelpAfterError()
  .exitOverride();

// Read before parsing: a flag error must honour --json too.
const argv = process.argv.slice(2);
const jsonMode = argv.includes('--json');
const verbose = argv.includes('--verbose');

const specFlags = (command: Command) =>
  command
    .option(
      '--arch <list>',
      'GPU archs, comma-separated (sm_80, sm_86, sm_89, sm_90a); implies --target cuda',
    )
    .option('--target <list>', 'build targets, comma-separated: cuda, emu, cpu (default: the spec targets)')
    .option('--head-dim <n>', 'override the spec head dim (retarget)')
    .option('--chunk-size <n>', 'override the spec chunk size')
    .option('--sanitize <kind>', 'emu builds only: address (ASan+UBSan) or thread (TSan)')
    .option('--json', 'print one JSON object as the last line of output');

specFlags(program.command('compile <spec>').description('build the kernels of a spec file')).action(
  async (file: string, flags) => compileCommand(file, flags, makeOutput(!!flags.json)),
);

specFlags(
  program
    .command('inspect <spec>')
    .description('print the normalized spec, the plan, the cache key and resources'),
).action(async (file: string, flags) => inspectCommand(file, flags, makeOutput(!!flags.json)));

program
  .command('doctor')
  .description('show compilers, GPU, cache location and the native addon')
  .option('--json', 'print one JSON object as the last line of output')
  .action(async (flags) => doctorCommand(makeOutput(!!flags.json)));

program
  .command('demo')
  .description('a shared-system-prompt workload: memory saved, two-phase vs sequence-first, error vs float64')
  .option(
    '--target <target>',
    'cpu (default, timed), emu (CUDA kernels emulated, counted, small shapes) or cuda',
  )
  .option('--batch <n>', 'sequences (default 32; emu 8)')
  .option('--shared <n>', 'shared prompt tokens (default 2048; emu 256)')
  .option('--steps <n>', 'decode steps (default 256; emu 8)')
  .option('--heads <n>', 'attention heads (default 32, as Llama2-7B; 8 runs 4× lighter; emu 2)')
  .option('--json', 'print one JSON object as the last line of stdout')
  .action(async (flags) => demoCommand(flags, makeOutput(!!flags.json)));

program
  .command('bench <name>')
  .description(`run a benchmark report (${BENCH_NAMES.join(', ')}) and write bench/out/<name>.{json,svg}`)
  .option('--quick', 'a reduced grid (under a minute on 2 cores)')
  .option('--target <target>', 'tpp only: cpu (default, timed) or emu (CUDA kernels emulated, counted)')
  .option('--out <dir>', 'where to write the report files (default: bench/out under the current directory)')
  .option('--json', 'print one JSON object as the last line of stdout (the table goes to stderr)')
  .action(async (name: string, flags) => benchCommand(name, flags, makeOutput(!!flags.json)));

program
  .command('tune <spec>')
  .description('search the tunables per decode shape and write the winners to the tuning DB')
  .option('--gpu <id>', `what to tune for: ${TUNE_GPUS.join(', ')} (default cpu)`)
  .option('--measure', 'time candidates for real (the cpu target here); without it the model predicts')
  .option('--budget <seconds>', 'time for the whole search (default 600)')
  .option('--shapes <list>', 'decode shapes BATCHxSHARED[+PRIVATE], comma-separated (default per target)')
  .option('--head-dim <n>', 'override the spec head dim (retarget)')
  .option('--chunk-size <n>', 'override the spec chunk size')
  .option('--write <db>', 'where winners go: user (the cache folder, default), shipped (autotune/db), none')
  .option('--svg <file>', 'where the predicted-vs-measured chart goes (default ./tune-<spec>-<gpu>.svg)')
  .option('--json', 'print one JSON object as the last line of stdout')
  .action(async (file: string, flags) => tuneCommand(file, flags, makeOutput(!!flags.json)));

program
  .command('cache <action>')
  .description(
    `the build cache: ${CACHE_ACTIONS.join(' | ')} (list entries, remove damaged and left-over ones, remove all)`,
  )
  .option('--older-than <days>', 'prune: also remove modules built more than this many days ago')
  .option('--json', 'print one JSON object as the last line of stdout')
  .action(async (action: string, flags) => cacheCommand(action, flags, makeOutput(!!flags.json)));

/** Under --json, the last stdout line of every exit is one JSON object. */
function exitWith(code: number, json: object): never {
  if (jsonMode) process.stdout.write(JSON.stringify(json) + '\n');
  process.exit(code);
}

try {
  await program.parseAsync(process.argv);
} catch (error) {
  const code = (error as { code?: string }).code;
  if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help')
    exitWith(EXIT_OK, { ok: true, help: true });
  if (code?.startsWith('commander.'))
    // commander printed its message (and the usage) to stderr already.
    exitWith(EXIT_USER, {
      ok: false,
      error: { kind: 'usage', message: (error as Error).message.replace(/^error: /, '') },
    });
  const { message, exitCode, json } = describeError(error, verbose);
  process.stderr.write(message.endsWith('\n') ? message : message + '\n');
  exitWith(exitCode, { ok: false, error: json });
}
