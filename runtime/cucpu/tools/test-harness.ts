// Builds and runs the shim's C++ test programs (runtime/cucpu/tests) for test/cucpu-*.test.ts.
//
// A program is built once per content: the cache key hashes the compiler's identity, the flags, its
// main source and every header it may include (runtime/cucpu, its tests, prims.cuh and abi.h).
// Binaries live in $CHUNKATTN_CACHE/cucpu-tests/<key>/ (default: <tmpdir>/chunkattn), so a
// second run compiles nothing. Builds run from the repository root, so the file names in
// diagnostics are repository-relative (runtime/cucpu/tests/test_bugs.cpp:23:18).

import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { execa } from 'execa';

export const repoRoot = resolve(import.meta.dirname, '..', '..', '..');
export const cudaHome = process.env.CUDA_HOME ?? '/usr/local/cuda';
/** The shim needs the CUDA headers (vector types, cuda_fp16.h); nvcc is only for the cubin check. */
export const haveCudaHeaders = existsSync(join(cudaHome, 'include', 'cuda_fp16.h'));
export const nvccPath = join(cudaHome, 'bin', 'nvcc');
export const haveNvcc = existsSync(nvccPath);

/** Flags of every build against the shim: the emu target's, plus the test kernels' folder. */
export const emuFlags: readonly string[] = [
  '-std=c++20',
  '-pthread',
  '-g',
  '-Wall',
  '-Wno-unknown-pragmas',
  '-include',
  'runtime/cucpu/cucpu.h',
  `-I${join(cudaHome, 'include')}`,
  '-Itemplates/include',
  '-Iruntime/cucpu/tests/kernels',
];
export const asanFlags: readonly string[] = [
  '-O1',
  '-fsanitize=address,undefined',
  '-fno-sanitize-recover=all',
  '-fno-omit-frame-pointer',
];
export const tsanFlags: readonly string[] = ['-O1', '-fsanitize=thread'];

export interface Program {
  /** File name of the binary (or shared library). */
  readonly name: string;
  /** Main source, relative to the repository root. */
  readonly source: string;
  /** Flags after the base flags, before the source (a .cu needs `-x c++` last). */
  readonly flags: readonly string[];
  /** `emu` (default): built against the shim with emuFlags; `plain`: plain g++ -std=c++20. */
  readonly base?: 'emu' | 'plain';
  /** After the source (libraries). */
  readonly libs?: readonly string[];
}

function compileArgs(program: Program, output: string): string[] {
  const base = program.base === 'plain' ? ['-std=c++20', '-g'] : emuFlags;
  return [...base, ...program.flags, program.source, ...(program.libs ?? []), '-o', output];
}

/** The headers any test program may include (its main source is hashed separately). */
function headerFiles(): string[] {
  const dirs = ['runtime/cucpu', 'runtime/cucpu/tests', 'runtime/cucpu/tests/kernels'];
  const files = dirs.flatMap((dir) =>
    readdirSync(join(repoRoot, dir))
      .filter((f) => /\.(h|cuh)$/.test(f))
      .map((f) => `${dir}/${f}`),
  );
  return [...files, 'templates/include/chunkattn/prims.cuh', 'templates/include/chunkattn/abi.h'].sort();
}

function hashSources(hash: ReturnType<typeof createHash>, mainSource: string): void {
  for (const file of [mainSource, ...headerFiles()]) {
    hash.update(file);
    hash.update(readFileSync(join(repoRoot, file)));
  }
}

let compilerIdentity: Promise<string> | undefined;
function identity(): Promise<string> {
  compilerIdentity ??= execa('g++', ['--version']).then((r) => r.stdout.split('\n')[0] ?? 'g++');
  return compilerIdentity;
}

function cacheRoot(): string {
  return join(process.env.CHUNKATTN_CACHE ?? join(tmpdir(), 'chunkattn'), 'cucpu-tests');
}

/** The cache key of a program: compiler, flags and the content of every source it may include. */
export async function programKey(program: Program): Promise<string> {
  const hash = createHash('sha256');
  hash.update(await identity());
  hash.update(JSON.stringify(compileArgs(program, '')));
  hashSources(hash, program.source);
  return hash.digest('hex').slice(0, 24);
}

/** A command's failure with its output, so a broken build shows the compiler's message. */
export class BuildError extends Error {
  override name = 'BuildError';
}

async function buildOne(program: Program): Promise<string> {
  const dir = join(cacheRoot(), await programKey(program));
  const binary = join(dir, program.name);
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true });
  const partial = `${binary}.partial-${process.pid}`;
  const args = compileArgs(program, partial);
  const result = await execa('g++', args, { cwd: repoRoot, reject: false, all: true });
  if (result.exitCode !== 0) {
    rmSync(partial, { force: true });
    throw new BuildError(
      `g++ ${args.join(' ')}\n(in ${repoRoot}) failed:\n${(result.all ?? '').slice(0, 6000)}`,
    );
  }
  writeFileSync(join(dir, `${program.name}.command`), `cd ${repoRoot} && g++ ${args.join(' ')}\n`);
  renameSync(partial, binary); // atomic: a concurrent run sees a whole binary or none
  return binary;
}

/** Every test program of the shim's suites (test/cucpu-*.test.ts), built together. */
export const cucpuPrograms: readonly Program[] = [
  { name: 'test_kernels_asan', source: 'runtime/cucpu/tests/test_kernels.cpp', flags: asanFlags },
  { name: 'test_kernels_tsan', source: 'runtime/cucpu/tests/test_kernels.cpp', flags: tsanFlags },
  { name: 'test_asan', source: 'runtime/cucpu/tests/test_asan.cpp', flags: asanFlags },
  { name: 'test_kernels', source: 'runtime/cucpu/tests/test_kernels.cpp', flags: ['-O1'] },
  { name: 'test_bugs', source: 'runtime/cucpu/tests/test_bugs.cpp', flags: ['-O1', '-rdynamic'] },
  { name: 'test_memstats', source: 'runtime/cucpu/tests/test_memstats.cpp', flags: ['-O1'] },
  { name: 'test_tsan', source: 'runtime/cucpu/tests/test_tsan.cpp', flags: tsanFlags },
  ...[1, 2].map((id) => ({
    name: `test_module_${id}.so`,
    source: 'runtime/cucpu/tests/test_module.cu',
    flags: ['-O1', '-fPIC', '-shared', `-DMODULE_ID=${id}`, '-x', 'c++'],
  })),
  {
    name: 'module_host',
    source: 'runtime/cucpu/tests/module_host.cpp',
    flags: ['-O1'],
    base: 'plain',
    libs: ['-ldl'],
  },
];

let allBuilt: Promise<Map<string, string>> | undefined;
/**
 * Builds all of cucpuPrograms (two compilers at a time, largest first) and returns name -> path.
 * Every suite asks for all of them: whichever runs first builds, the others find the cache.
 */
export function buildCucpuPrograms(): Promise<Map<string, string>> {
  allBuilt ??= buildPrograms(cucpuPrograms);
  return allBuilt;
}

/** Builds the programs not yet cached, at most `parallel` compilers at a time; returns name -> path. */
export async function buildPrograms(
  programs: readonly Program[],
  parallel = 2,
): Promise<Map<string, string>> {
  const paths = new Map<string, string>();
  const queue = [...programs];
  const workers = Array.from({ length: Math.min(parallel, queue.length) }, async () => {
    for (let p = queue.shift(); p; p = queue.shift()) paths.set(p.name, await buildOne(p));
  });
  await Promise.all(workers);
  return paths;
}

/**
 * Compiles every test kernel (tests/kernels/all.cu) with nvcc for `arch` to a cubin, cached like
 * the programs; returns the ptxas report (-Xptxas -v). Throws BuildError when nvcc fails.
 */
export async function compileCubin(arch: string): Promise<string> {
  const args = ['-std=c++17', `-arch=${arch}`, '-cubin', '-Xptxas', '-v', '-Itemplates/include'];
  const source = 'runtime/cucpu/tests/kernels/all.cu';
  const hash = createHash('sha256');
  hash.update(nvccPath);
  hash.update(JSON.stringify(args));
  hashSources(hash, source);
  const dir = join(cacheRoot(), `nvcc-${hash.digest('hex').slice(0, 24)}`);
  const log = join(dir, `all_${arch}.ptxas.log`);
  if (existsSync(log)) return readFileSync(log, 'utf8');
  mkdirSync(dir, { recursive: true });
  const result = await execa(nvccPath, [...args, '-o', join(dir, `all_${arch}.cubin`), source], {
    cwd: repoRoot,
    reject: false,
    all: true,
  });
  if (result.exitCode !== 0)
    throw new BuildError(`nvcc ${args.join(' ')} ${source} failed:\n${(result.all ?? '').slice(0, 6000)}`);
  writeFileSync(`${log}.partial-${process.pid}`, result.all ?? '');
  renameSync(`${log}.partial-${process.pid}`, log);
  return result.all ?? '';
}

export interface RunResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a test program from the repository root with extra environment variables. */
export async function runProgram(
  binary: string,
  args: readonly string[] = [],
  env: Record<string, string> = {},
  timeoutMs = 120_000,
): Promise<RunResult> {
  const result = await execa(binary, [...args], {
    cwd: repoRoot,
    env: { ...process.env, ...env },
    reject: false,
    timeout: timeoutMs,
  });
  if (result.timedOut)
    throw new Error(`${relative(repoRoot, binary)} ${args.join(' ')} timed out after ${timeoutMs} ms`);
  return { exitCode: result.exitCode ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** A cucpu::Error as Error::to_json prints it. */
export interface ShimError {
  readonly kind: string;
  readonly kernel: string;
  readonly file: string;
  readonly line: number;
  readonly column: number;
  readonly block: readonly [number, number, number];
  readonly thread: readonly [number, number, number];
  readonly message: string;
}

/** One `RESULT {...}` line of a test program (runtime/cucpu/tests/check.h). */
export interface CheckResult {
  readonly name: string;
  readonly ok: boolean;
  readonly error?: ShimError | null;
  readonly [key: string]: unknown;
}

/** The RESULT lines of a program's output, by name. */
export function parseResults(stdout: string): Map<string, CheckResult> {
  const results = new Map<string, CheckResult>();
  for (const line of stdout.split('\n')) {
    if (!line.startsWith('RESULT ')) continue;
    const r = JSON.parse(line.slice('RESULT '.length)) as CheckResult;
    results.set(r.name, r);
  }
  return results;
}

/**
 * The 1-based line of `// BUG: <name>` in a source file (relative to the repository root). The
 * marker must follow code on the same line (a formatter that wraps the line breaks the test).
 */
export function markerLine(source: string, name: string): number {
  const lines = readFileSync(join(repoRoot, source), 'utf8').split('\n');
  const index = lines.findIndex((l) => new RegExp(`// BUG: ${name}\\b`).test(l));
  if (index < 0) throw new Error(`no "// BUG: ${name}" marker in ${source}`);
  const code = lines[index]!.slice(0, lines[index]!.indexOf('//')).trim();
  if (!/[;{]$/.test(code))
    throw new Error(`${source}:${index + 1}: "// BUG: ${name}" must end a line of code`);
  return index + 1;
}

/** Line numbers of `file` in a sanitizer report, in order of appearance. */
export function reportLines(report: string, file: string): number[] {
  const escaped = file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return [...report.matchAll(new RegExp(`${escaped}:(\\d+)`, 'g'))].map((m) => Number(m[1]));
}
