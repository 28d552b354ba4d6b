// The cpu target's hand-written kernels (templates/include/chunkattn/cpu/) against float64
// attention, through the C++ driver test/cpu-kernels/cpu_kernel_test.cpp. The driver is built with
// g++ once per content hash (sources + headers + flags) and cached under
// $CHUNKATTN_CACHE/cpu-kernel-tests/<hash>/. Each run draws a fresh seed (CHUNKATTN_SEED pins it).

import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, test } from 'vitest';

const root = join(import.meta.dirname, '..');
const include = join(root, 'templates', 'include');
const driver = join(root, 'test', 'cpu-kernels', 'cpu_kernel_test.cpp');

interface CaseLine {
  readonly case: string;
  readonly mode: 'two-phase' | 'chunk-first' | 'sequence-first';
  readonly cfg: string;
  readonly variant: string;
  readonly rows: number;
  readonly runs: number;
  readonly threads: number;
  readonly status: number;
  readonly nonFinite: number;
  readonly untouchedClobbered: number;
  readonly relErr: number;
  readonly gate: number;
  readonly ok: boolean;
  readonly error?: string;
}
interface CheckLine {
  readonly check: string;
  readonly ok: boolean;
  readonly detail: string;
}
interface Summary {
  readonly checks: number;
  readonly failures: number;
  readonly worstRelErr: { readonly f32: number; readonly f16: number; readonly bf16: number };
}
interface DriverRun {
  readonly seed: string;
  readonly isa: string;
  readonly cases: CaseLine[];
  readonly checks: CheckLine[];
  readonly summary: Summary | undefined;
  readonly exitCode: number | null;
  readonly stderr: string;
}

function hasGxx(): boolean {
  return spawnSync('g++', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** Every file the driver's build depends on, in a stable order. */
function sourceFiles(): string[] {
  const files = [driver, join(root, 'test', 'cpu-kernels', 'fixtures.h')];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) =>
      a.name.localeCompare(b.name),
    )) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (/\.(h|hpp|cuh)$/.test(entry.name)) files.push(path);
    }
  };
  walk(join(include, 'chunkattn'));
  return files;
}

/** Builds the driver with the given flags (cached by content hash) and returns the binary. */
async function buildDriver(name: string, flags: readonly string[]): Promise<string> {
  const args = [...flags, '-std=c++20', '-pthread', '-I', include, driver];
  const hash = createHash('sha256');
  hash.update(JSON.stringify(args));
  hash.update(execFileSync('g++', ['--version']).toString());
  for (const file of sourceFiles()) {
    hash.update(file.slice(root.length));
    hash.update(readFileSync(file));
  }
  const cache = process.env.CHUNKATTN_CACHE ?? join(tmpdir(), 'chunkattn');
  const dir = join(cache, 'cpu-kernel-tests', hash.digest('hex').slice(0, 24));
  const binary = join(dir, name);
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true });
  const partial = `${binary}.${process.pid}.tmp`;
  try {
    await promisify(execFile)('g++', [...args, '-o', partial], { maxBuffer: 16 << 20 });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? String(error);
    throw new Error(`g++ ${args.join(' ')} failed:\n${stderr}`);
  }
  renameSync(partial, binary); // atomic: concurrent builders race harmlessly
  return binary;
}

const builds = new Map<string, Promise<string>>();
/** Starts (once) the build of one flavour of the driver; the three flavours build concurrently. */
function build(name: string, flags: readonly string[]): Promise<string> {
  let pending = builds.get(name);
  if (!pending) {
    pending = buildDriver(name, flags);
    pending.catch(() => {}); // reported by the test that awaits it
    builds.set(name, pending);
  }
  return pending;
}

const fallbacks = [
  { name: 'avx2', flags: ['-O1', '-mavx2', '-mfma', '-mf16c', '-DCA_TEST_FEWER_CONFIGS'], isa: 'avx2' },
  { name: 'scalar', flags: ['-O1', '-march=x86-64', '-DCA_TEST_FEWER_CONFIGS'], isa: 'scalar' },
] as const;
const isX64 = process.arch === 'x64';

function runDriver(binary: string, seed: string, extra: readonly string[] = []): DriverRun {
  const result = spawnSync(binary, ['--seed', seed, ...extra], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    timeout: 300_000,
  });
  const cases: CaseLine[] = [];
  const checks: CheckLine[] = [];
  let summary: Summary | undefined;
  let isa = '?';
  for (const line of result.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    const record = JSON.parse(line.replace(/\bnan\b/g, 'null')) as Record<string, unknown>;
    if ('case' in record) cases.push(record as unknown as CaseLine);
    else if ('check' in record) checks.push(record as unknown as CheckLine);
    else if ('summary' in record) summary = record.summary as Summary;
    else if ('isa' in record) isa = String(record.isa);
  }
  return { seed, isa, cases, checks, summary, exitCode: result.status, stderr: result.stderr };
}

function failures(run: DriverRun): string[] {
  return [
    ...run.cases
      .filter((c) => !c.ok)
      .map(
        (c) =>
          `${c.case} [${c.mode}, ${c.threads} threads]: relErr ${c.relErr} (gate ${c.gate}), status ${c.status}` +
          `${c.error ? ` ${c.error}` : ''}, ${c.nonFinite} non-finite, ${c.untouchedClobbered} clobbered`,
      ),
    ...run.checks.filter((c) => !c.ok).map((c) => `${c.check}: ${c.detail}`),
  ];
}

const seed = process.env.CHUNKATTN_SEED ?? String(Date.now() % 1_000_000_007);
const gxx = hasGxx();

describe.skipIf(!gxx)('cpu kernels (native build of the driver)', () => {
  let native: DriverRun;

  beforeAll(async () => {
    const binary = build('cpu_kernel_test', ['-O2', '-march=native']);
    if (isX64) for (const f of fallbacks) build(`cpu_kernel_test_${f.name}`, f.flags);
    native = runDriver(await binary, seed);
  }, 600_000);

  test('the driver ran to completion', () => {
    expect(native.stderr).toBe('');
    expect(native.summary, `seed ${seed}: no summary line`).toBeDefined();
    expect(native.cases.length).toBeGreaterThan(200);
  });

  test('decode matches float64 attention in two-phase, chunk-first and sequence-first partitions', () => {
    expect(failures(native), `seed ${seed} (rerun with CHUNKATTN_SEED=${seed})`).toEqual([]);
    expect(native.exitCode).toBe(0);
    for (const mode of ['two-phase', 'chunk-first', 'sequence-first'] as const) {
      const ofMode = native.cases.filter((c) => c.mode === mode);
      expect(ofMode.length).toBeGreaterThan(60);
      expect(ofMode.every((c) => c.ok)).toBe(true);
    }
  });

  test('errors stay within the gates: f32 1e-5, f16 2e-3, bf16 1e-2', () => {
    const worst = native.summary!.worstRelErr;
    expect(worst.f32).toBeLessThanOrEqual(1e-5);
    expect(worst.f16).toBeLessThanOrEqual(2e-3);
    expect(worst.bf16).toBeLessThanOrEqual(1e-2);
  });

  test('shared runs really run: two-phase uses phase 1 for shared prefixes, sequence-first never does', () => {
    const shared = native.cases.filter(
      (c) => c.mode === 'two-phase' && /all share|nested|groups/.test(c.case),
    );
    expect(shared.length).toBeGreaterThan(20);
    expect(shared.every((c) => c.runs > 0)).toBe(true);
    expect(native.cases.filter((c) => c.mode === 'sequence-first').every((c) => c.runs === 0)).toBe(true);
    const chunkFirst = native.cases.filter(
      (c) => c.mode === 'chunk-first' && /single len=(1|[2-9]\d*)$/.test(c.case),
    );
    expect(chunkFirst.every((c) => c.runs > 0)).toBe(true);
  });

  test('covers head dims 64/80/96/128, GQA groups 1/2/4/6/8, every dtype, mask and score_mod', () => {
    const cfgs = new Set(native.cases.map((c) => c.cfg));
    for (const d of [64, 80, 96, 128]) expect([...cfgs].some((c) => c.includes(`D=${d} `))).toBe(true);
    const groups = new Set(
      [...cfgs].map((c) => {
        const m = /Hq=(\d+) Hkv=(\d+)/.exec(c)!;
        return Number(m[1]) / Number(m[2]);
      }),
    );
    for (const g of [1, 2, 4, 6, 8]) expect(groups.has(g)).toBe(true);
    for (const t of ['f16', 'bf16', 'f32']) expect([...cfgs].some((c) => c.includes(`kv=${t}`))).toBe(true);
    const variants = new Set(native.cases.map((c) => c.variant));
    for (const v of ['plain', 'softcap+window', 'head-bias+mask', 'score-only'])
      expect(variants.has(v)).toBe(true);
  });

  test('no output is NaN and io rows outside the batch are left untouched', () => {
    expect(native.cases.filter((c) => c.nonFinite > 0 || c.untouchedClobbered > 0)).toEqual([]);
  });

  test('vector exp, transposes and f16/bf16 conversions are exact enough', () => {
    for (const name of ['simd exp', 'simd transpose and transpose-sum', 'f16/bf16 conversions']) {
      const check = native.checks.find((c) => c.check === name);
      expect(check, name).toBeDefined();
      expect(check!.ok, `${name}: ${check!.detail}`).toBe(true);
    }
  });

  test('write_kv, copy_chunk and malformed decode calls return CaStatus codes', () => {
    for (const name of ['write_kv and copy_chunks', 'decode argument errors']) {
      const check = native.checks.find((c) => c.check === name);
      expect(check, name).toBeDefined();
      expect(check!.ok, `${name}: ${check!.detail}`).toBe(true);
    }
  });
});

describe.skipIf(!gxx)('cpu kernels (portable fallbacks)', () => {
  for (const fallback of fallbacks) {
    test.skipIf(!isX64)(
      `the ${fallback.name} path matches float64 attention too`,
      async () => {
        const binary = await build(`cpu_kernel_test_${fallback.name}`, fallback.flags);
        const run = runDriver(binary, seed, ['--quick']);
        expect(run.isa).toBe(fallback.isa);
        expect(run.summary, `seed ${seed}`).toBeDefined();
        expect(failures(run), `seed ${seed} (rerun with CHUNKATTN_SEED=${seed})`).toEqual([]);
        expect(run.exitCode).toBe(0);
      },
      600_000,
    );
  }
});
