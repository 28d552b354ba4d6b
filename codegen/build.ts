// KernelPlan → a module folder in the content-addressed cache: render, compile, check the
// compiler's resource report against the plan, write the manifest, then publish the folder
// with one atomic rename. Concurrent builders of one key wait on a lock and build once; a
// build killed midway leaves only a temporary folder, which never looks complete.

import { mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { execa } from 'execa';
import { buildProgress, buildStart } from './build-progress.ts';
import { CUCPU_DIR, INCLUDE_DIR } from './cache-key.ts';
import { BuildError, ResourceError } from './errors.ts';
import { acquireLock, type LockOwner } from './lock.ts';
import {
  ABI_SYMBOLS,
  type BuiltModule,
  checkModule,
  fileSha256,
  LIBRARY_FILE,
  MANIFEST_ABI,
  MANIFEST_FILE,
  type Manifest,
} from './manifest.ts';
import { type KernelPlan, plan as makePlan, toolchainIdentity } from './plan.ts';
import { type KernelResources, parsePtxasReport } from './ptxas.ts';
import { render } from './render.ts';
import { requireTool, type Toolchain } from './toolchain.ts';

/** The cache root, absolute. An empty CHUNKATTN_CACHE means unset (never the current directory). */
export function cacheDir(): string {
  const chosen = process.env.CHUNKATTN_CACHE?.trim();
  return resolve(chosen ? chosen : join(homedir(), '.cache', 'chunkattn'));
}

/** The folder of a build id, refusing any id that would leave the cache root. */
export function moduleDir(root: string, buildId: string): string {
  const dir = resolve(root, buildId);
  if (dirname(dir) !== resolve(root) || buildId.startsWith('.'))
    throw new BuildError(buildId, dir, '-', `build id ${JSON.stringify(buildId)} leaves the cache folder`);
  return dir;
}

/** Where damaged entries are moved before they are deleted (a rename: atomic, and frees the name). */
export function discardEntry(root: string, dir: string): void {
  const trash = join(root, '.trash');
  mkdirSync(trash, { recursive: true });
  const aside = join(trash, `${dir.split('/').at(-1)}-${process.pid}-${Date.now().toString(36)}`);
  try {
    renameSync(dir, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  rmSync(aside, { recursive: true, force: true });
}

function warn(text: string): void {
  process.stderr.write(`chunkattn: warning: ${text}\n`);
}

function describeOwner(owner: LockOwner | null): string {
  return owner ? `pid ${owner.pid} on ${owner.host}, building since ${owner.since}` : 'an unknown builder';
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
      '-fPIC,-fno-gnu-unique',
      '-Xptxas',
      '-v',
      `-I${INCLUDE_DIR}`,
      ...gencode,
      ...out,
    ];
  }
  const gxx = requireTool(toolchain.gxx, 'g++', 'the cpu and emu targets compile with g++ (set CXX)');
  // -fno-gnu-unique: a header's function-local statics (the counters, the shim's tables) stay
  // the module's own; as STB_GNU_UNIQUE symbols the dynamic linker would share them with every
  // other module in the process, RTLD_LOCAL notwithstanding.
  const common = ['-std=c++20', '-fPIC', '-fno-gnu-unique', '-shared', '-pthread', `-I${INCLUDE_DIR}`];
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

/**
 * Removes the temporary folders of killed builds of `buildId`. Called under its lock, so no live
 * builder of this id exists; other ids' folders are left to `chunkattn cache prune`.
 */
function sweepTemporaries(tmpRoot: string, buildId: string): void {
  let entries: string[];
  try {
    entries = readdirSync(tmpRoot);
  } catch {
    return;
  }
  for (const entry of entries)
    if (entry.startsWith(`${buildId}-`)) rmSync(join(tmpRoot, entry), { recursive: true, force: true });
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
  const libraryPath = join(dir, LIBRARY_FILE);
  const symbols = await exportedSymbols(libraryPath);
  const missing = ABI_SYMBOLS.filter((s) => !symbols.includes(s));
  if (missing.length)
    throw new BuildError(
      plan.name,
      join(dir, fileName),
      command.join(' '),
      `missing ABI symbols: ${missing.join(', ')}`,
    );
  return {
    abi: MANIFEST_ABI,
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
    librarySize: statSync(libraryPath).size,
    librarySha256: fileSha256(libraryPath),
    resources,
    symbols,
    buildCommand: command,
    buildSeconds: Math.round((performance.now() - started) / 10) / 100,
    builtAt: new Date().toISOString(),
  };
}

/** Returns the module for `plan`, building it unless the cache already has it. */
export async function build(requested: KernelPlan, toolchain: Toolchain): Promise<BuiltModule> {
  // A plan is plain data that may come from anywhere: plan again from its inputs, so every name,
  // key and line of C++ comes from a validated spec.
  const plan = makePlan(
    requested.spec,
    {
      target: requested.target,
      archs: requested.archs,
      sanitize: requested.sanitize,
      tunables: requested.tunables,
    },
    toolchain,
  );
  const root = cacheDir();
  const dir = moduleDir(root, plan.buildId);
  const hit = checkModule(dir, true);
  if (hit.status === 'ok') return hit.module;

  mkdirSync(root, { recursive: true });
  const release = await acquireLock(join(root, `${plan.buildId}.lease`), {
    onWait: (owner) => warn(`waiting for ${describeOwner(owner)} (cache entry ${plan.buildId})`),
  });
  try {
    const now = checkModule(dir, true); // another process finished while we waited
    if (now.status === 'ok') return now.module;
    if (now.status === 'damaged') {
      // A damaged entry is a miss: move it aside and rebuild.
      warn(`cache entry ${plan.buildId} is damaged (${now.reason}); rebuilding it`);
      discardEntry(root, dir);
    }
    const tmpRoot = join(root, '.tmp');
    mkdirSync(tmpRoot, { recursive: true });
    sweepTemporaries(tmpRoot, plan.buildId);
    const tmp = join(tmpRoot, `${plan.buildId}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
    mkdirSync(tmp);
    const shown = buildProgress().start(buildStart(plan, root));
    try {
      const manifest = await compile(plan, toolchain, tmp);
      writeFileSync(join(tmp, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
      renameSync(tmp, dir);
      shown.done(manifest.buildSeconds);
    } catch (error) {
      shown.failed();
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
    const module = checkModule(dir, false);
    if (module.status !== 'ok') throw new Error(`module folder ${dir} is incomplete right after its build`);
    return module.module;
  } finally {
    release();
  }
}
