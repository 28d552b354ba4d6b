// KernelPlan → a module folder in the content-addressed cache: render, compile, check the
// compiler's resource report against the plan, write the manifest, then publish the folder
// with one atomic rename. Concurrent builders of one key wait on a lock and build once; a
// build killed midway leaves only a temporary folder, which never looks complete.

import { mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { CUCPU_DIR, INCLUDE_DIR } from './cache-key.ts';
import { BuildError, ResourceError } from './errors.ts';
import { acquireLock } from './lock.ts';
import {
  ABI_SYMBOLS,
  type BuiltModule,
  LIBRARY_FILE,
  MANIFEST_FILE,
  type Manifest,
  readModule,
} from './manifest.ts';
import { type KernelPlan, toolchainIdentity } from './plan.ts';
import { type KernelResources, parsePtxasReport } from './ptxas.ts';
import { render } from './render.ts';
import { requireTool, type Toolchain } from './toolchain.ts';

export function cacheDir(): string {
  return process.env.CHUNKATTN_CACHE ?? join(homedir(), '.cache', 'chunkattn');
}

const SANITIZER_FLAGS = {
  none: ['-O2'],
  address: [
    '-O1',
    '-g',
    '-fsanitize=address,undefined',
    '-fno-sanitize-recover=bounds',
    '-fno-omit-frame-pointer',
  ],
  thread: ['-O1', '-g', '-fsanitize=thread'],
} as const;

/** The compiler command line for a plan, relative to the module folder. */
export function buildCommand(plan: KernelPlan, toolchain: Toolchain, sourceFile: string): string[] {
  const out = ['-o', LIBRARY_FILE, sourceFile];
  if (plan.target === 'cuda') {
    const nvcc = requireTool(
      toolchain.nvcc,
      'nvcc',
      'the cuda target compiles with nvcc (set NVCC or CUDA_HOME)',
    );
    const gencode = plan.archs.flatMap((arch) => [
      '-gencode',
      `arch=${arch.replace('sm_', 'compute_')},code=${arch}`,
    ]);
    return [
      nvcc.path,
      '-std=c++17',
      '-O3',
      '--shared',
      '-Xcompiler',
      '-fPIC',
      '-Xptxas',
      '-v',
      `-I${INCLUDE_DIR}`,
      ...gencode,
      ...out,
    ];
  }
  const gxx = requireTool(toolchain.gxx, 'g++', 'the cpu and emu targets compile with g++ (set CXX)');
  const common = ['-std=c++20', '-fPIC', '-shared', '-pthread', `-I${INCLUDE_DIR}`];
  if (plan.target === 'cpu') return [gxx.path, ...common, '-O3', '-march=native', '-fno-math-errno', ...out];
  const cudaInclude = toolchain.cudaInclude;
  if (!cudaInclude)
    throw new BuildError(plan.name, sourceFile, 'g++', 'the emu target needs the CUDA headers');
  return [
    gxx.path,
    ...common,
    ...SANITIZER_FLAGS[plan.sanitize],
    // The shim backs `extern __shared__` arrays with thread_locals; without this, g++ calls a
    // weak TLS-init hook that is null in a dlopened module.
    '-fno-extern-tls-init',
    `-I${cudaInclude}`,
    '-include',
    join(CUCPU_DIR, 'cucpu.h'),
    '-x',
    'c++',
    ...out,
  ];
}

/** Checks ptxas records against the plan: no spills, registers and static smem within budget. */
export function resourceViolations(plan: KernelPlan, resources: readonly KernelResources[]): string[] {
  const violations: string[] = [];
  for (const kernel of plan.kernels) {
    const records = resources.filter((r) => r.symbol.includes(kernel.kernel));
    for (const arch of plan.archs)
      if (!records.some((r) => r.arch === arch))
        violations.push(`${kernel.kernel}: no ptxas report for ${arch}`);
    for (const r of records) {
      const where = `${kernel.kernel} ${r.arch}`;
      if (r.spillStoreBytes || r.spillLoadBytes)
        violations.push(
          `${where}: spills ${r.spillStoreBytes} B stored, ${r.spillLoadBytes} B loaded (plan: 0)`,
        );
      if (r.registers > kernel.maxRegisters)
        violations.push(`${where}: ${r.registers} registers (plan: ≤ ${kernel.maxRegisters})`);
      if (r.smemBytes !== 0) violations.push(`${where}: ${r.smemBytes} B static shared memory (plan: 0)`);
    }
  }
  return violations;
}

async function exportedSymbols(libraryPath: string): Promise<string[]> {
  const { stdout } = await execa('nm', ['-D', '--defined-only', libraryPath]);
  return stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/)[2] ?? '')
    .filter((name) => name.startsWith('ca_'))
    .sort();
}

/** Removes temporary folders whose builder is gone (killed builds). */
function sweepTemporaries(tmpRoot: string): void {
  let entries: string[];
  try {
    entries = readdirSync(tmpRoot);
  } catch {
    return;
  }
  for (const entry of entries) {
    const pid = Number(/-(\d+)-[a-z0-9]+$/.exec(entry)?.[1]);
    let alive = false;
    try {
      process.kill(pid, 0);
      alive = true;
    } catch (error) {
      alive = (error as NodeJS.ErrnoException).code === 'EPERM';
    }
    if (!alive) rmSync(join(tmpRoot, entry), { recursive: true, force: true });
  }
}

async function compile(plan: KernelPlan, toolchain: Toolchain, dir: string): Promise<Manifest> {
  const started = performance.now();
  const { fileName, source } = render(plan);
  writeFileSync(join(dir, fileName), source);
  const command = buildCommand(plan, toolchain, fileName);
  const result = await execa(command[0]!, command.slice(1), { cwd: dir, all: true, reject: false });
  writeFileSync(join(dir, 'build.log'), `${command.join(' ')}\n${result.all ?? ''}`);
  if (result.exitCode !== 0)
    throw new BuildError(
      plan.name,
      join(dir, fileName),
      command.join(' '),
      result.all ?? String(result.exitCode),
    );
  const resources = plan.target === 'cuda' ? parsePtxasReport(result.all ?? '') : [];
  const violations = resourceViolations(plan, resources);
  if (violations.length) throw new ResourceError(plan.spec, violations);
  const symbols = await exportedSymbols(join(dir, LIBRARY_FILE));
  const missing = ABI_SYMBOLS.filter((s) => !symbols.includes(s));
  if (missing.length)
    throw new BuildError(
      plan.name,
      join(dir, fileName),
      command.join(' '),
      `missing ABI symbols: ${missing.join(', ')}`,
    );
  return {
    abi: 2,
    key: plan.key,
    buildId: plan.buildId,
    name: plan.name,
    target: plan.target,
    archs: plan.archs,
    sanitize: plan.sanitize,
    spec: plan.spec,
    tunables: plan.tunables,
    phase1: plan.phase1,
    kernels: plan.kernels,
    compilerVersion: plan.compilerVersion,
    toolchain: toolchainIdentity(plan.target, toolchain),
    source: fileName,
    library: LIBRARY_FILE,
    resources,
    symbols,
    buildCommand: command,
    buildSeconds: Math.round((performance.now() - started) / 10) / 100,
    builtAt: new Date().toISOString(),
  };
}

/** Returns the module for `plan`, building it unless the cache already has it. */
export async function build(plan: KernelPlan, toolchain: Toolchain): Promise<BuiltModule> {
  const root = cacheDir();
  const dir = join(root, plan.buildId);
  const hit = readModule(dir, true);
  if (hit) return hit;

  mkdirSync(root, { recursive: true });
  const release = await acquireLock(join(root, `${plan.buildId}.lock`));
  try {
    const built = readModule(dir, true); // another process finished while we waited
    if (built) return built;
    const tmpRoot = join(root, '.tmp');
    mkdirSync(tmpRoot, { recursive: true });
    sweepTemporaries(tmpRoot);
    const tmp = join(tmpRoot, `${plan.buildId}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
    mkdirSync(tmp);
    try {
      const manifest = await compile(plan, toolchain, tmp);
      writeFileSync(join(tmp, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
      renameSync(tmp, dir);
    } catch (error) {
      // Keep what failed for inspection (the error names the generated file inside it).
      const failed = join(root, '.failed', plan.buildId);
      rmSync(failed, { recursive: true, force: true });
      mkdirSync(join(root, '.failed'), { recursive: true });
      renameSync(tmp, failed);
      if (error instanceof BuildError)
        throw new BuildError(
          error.specName,
          error.generatedFile.replace(tmp, failed),
          error.command,
          error.compilerOutput,
        );
      throw error;
    }
    const module = readModule(dir, false);
    if (!module) throw new Error(`module folder ${dir} is incomplete right after its build`);
    return module;
  } finally {
    release();
  }
}
