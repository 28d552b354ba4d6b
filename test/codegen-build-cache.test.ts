import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, test } from 'vitest';
import { BuildError, build, findToolchain, plan, render } from '../codegen/index.ts';
import { attention } from '../dsl/index.ts';
import { runCli, spawnCli } from './cli-harness.ts';

interface ModuleResult {
  name: string;
  target: string;
  key: string;
  cached: boolean;
  seconds: number;
  dir: string;
  spillBytes: number;
  maxRegisters: number;
  resources: { symbol: string; arch: string; spillStoreBytes: number; spillLoadBytes: number }[];
}

const EXAMPLES = ['llama2-7b', 'llama3-8b', 'softcap-window'];

function freshCache(): string {
  return mkdtempSync(join(tmpdir(), 'chunkattn-cache-test-'));
}

describe('compile for GPUs through nvcc', () => {
  test.each(EXAMPLES)(
    '%s builds for sm_80 and sm_90a with 0 spill bytes; the second run is a cache hit',
    async (example) => {
      const file = join('examples', `${example}.ts`);
      const first = await runCli(['compile', file, '--arch', 'sm_80,sm_90a', '--json']);
      expect(first.exitCode, first.stderr).toBe(0);
      const [module] = (first.json as { modules: ModuleResult[] }).modules;
      expect(module!.target).toBe('cuda');
      // One ptxas record per decode kernel (phase 1, phase 2 and the split-KV merge), dense and PSA
      // list-driven (kListed = true: mangled Lb1E), per arch; all on both archs.
      const records = module!.resources
        .filter((r) => /decode_\w+?_kernel/.test(r.symbol))
        .map(
          (r) =>
            `${/decode_\w+?_kernel/.exec(r.symbol)?.[0]}${/Lb1E/.test(r.symbol) ? ' listed' : ''} ${r.arch}`,
        );
      expect(records.sort()).toEqual(
        ['decode_merge_splits_kernel', 'decode_phase1_kernel', 'decode_phase2_kernel'].flatMap((k) => [
          `${k} listed sm_80`,
          `${k} listed sm_90a`,
          `${k} sm_80`,
          `${k} sm_90a`,
        ]),
      );
      expect([...new Set(module!.resources.map((r) => r.arch))].sort()).toEqual(['sm_80', 'sm_90a']);
      expect(module!.resources.length % 2).toBe(0);
      for (const r of module!.resources) expect(r.spillStoreBytes + r.spillLoadBytes).toBe(0);
      const libraryMtime = statSync(join(module!.dir, 'module.so')).mtimeMs;

      const second = await runCli(['compile', file, '--arch', 'sm_80,sm_90a', '--json']);
      expect(second.exitCode, second.stderr).toBe(0);
      const [again] = (second.json as { modules: ModuleResult[] }).modules;
      expect(again!.cached).toBe(true);
      expect(again!.key).toBe(module!.key);
      expect(again!.seconds).toBeLessThan(1);
      expect(statSync(join(again!.dir, 'module.so')).mtimeMs).toBe(libraryMtime);
    },
  );
});

describe('the build cache under concurrency and interruption', () => {
  test('4 processes compiling one spec at once produce one build and four identical manifests', async () => {
    const cache = freshCache();
    const env = { CHUNKATTN_CACHE: cache };
    const runs = await Promise.all(
      [0, 1, 2, 3].map(() => runCli(['compile', 'examples/llama3-8b.ts', '--target', 'cpu', '--json'], env)),
    );
    for (const run of runs) expect(run.exitCode, run.stderr).toBe(0);
    const modules = runs.map((r) => (r.json as { modules: ModuleResult[] }).modules[0]!);
    expect(modules.filter((m) => !m.cached)).toHaveLength(1);
    expect(new Set(modules.map((m) => m.key)).size).toBe(1);
    const manifests = modules.map((m) => readFileSync(join(m.dir, 'manifest.json'), 'utf8'));
    expect(new Set(manifests).size).toBe(1);
    const entries = readdirSync(cache).filter((e) => !e.startsWith('.'));
    expect(entries).toEqual([modules[0]!.dir.split('/').at(-1)]);
    expect(existsSync(join(modules[0]!.dir, 'module.so'))).toBe(true);
  });

  test('a build killed midway leaves nothing that looks complete, and the next build recovers', async () => {
    const cache = freshCache();
    const env = { CHUNKATTN_CACHE: cache };
    const child = spawnCli(['compile', 'examples/llama2-7b.ts', '--arch', 'sm_80', '--json'], env);
    const tmpRoot = join(cache, '.tmp');
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && !(existsSync(tmpRoot) && readdirSync(tmpRoot).length > 0))
      await sleep(20);
    await sleep(300); // inside the compiler now
    child.kill('SIGKILL');
    await child.catch(() => undefined);
    const complete = readdirSync(cache).filter((e) => !e.startsWith('.') && !e.endsWith('.lease'));
    expect(complete).toEqual([]);

    const retry = await runCli(['compile', 'examples/llama2-7b.ts', '--arch', 'sm_80', '--json'], env);
    expect(retry.exitCode, retry.stderr).toBe(0);
    const [module] = (retry.json as { modules: ModuleResult[] }).modules;
    expect(module!.cached).toBe(false);
    expect(readdirSync(tmpRoot)).toEqual([]); // the dead builder's folder was swept
  });

  test('a compiler error shows the compiler message, the generated file and the spec name', async () => {
    const saved = process.env.CHUNKATTN_CACHE;
    process.env.CHUNKATTN_CACHE = freshCache();
    const spec = attention({
      name: 'broken-variant',
      heads: { q: 4, kv: 4 },
      headDim: 64,
      dtype: 'f32',
      targets: ['cpu'],
    });
    // Generated C++ always compiles, so a stand-in compiler fails the way g++ would.
    const failing = join(freshCache(), 'failing-gxx');
    writeFileSync(
      failing,
      '#!/bin/sh\necho "kernel.cpp:1:1: error: simulated compiler failure" >&2\nexit 1\n',
    );
    chmodSync(failing, 0o755);
    const toolchain = { ...(await findToolchain()), gxx: { path: failing, version: 'failing 1.0' } };
    const error = await build(plan(spec, { target: 'cpu' }, toolchain), toolchain)
      .catch((e: unknown) => e)
      .finally(() => {
        process.env.CHUNKATTN_CACHE = saved;
      });
    expect(error).toBeInstanceOf(BuildError);
    const message = (error as BuildError).message;
    expect(message).toContain('spec "broken-variant"');
    expect(message).toMatch(/generated file: .*\.failed.*kernel\.cpp/);
    expect(message).toContain('error:');
    expect(existsSync((error as BuildError).generatedFile)).toBe(true);
  });
});

describe('the cache key', () => {
  test('changes with the spec, target and tunables, and not between identical specs', async () => {
    const toolchain = await findToolchain();
    const base = {
      name: 'k',
      heads: { q: 8, kv: 2 },
      headDim: 64,
      dtype: 'f16',
      targets: ['cpu', 'emu'],
    } as const;
    const a = plan(attention(base), { target: 'cpu' }, toolchain).key;
    expect(plan(attention(base), { target: 'cpu' }, toolchain).key).toBe(a);
    expect(plan(attention({ ...base, headDim: 128 }), { target: 'cpu' }, toolchain).key).not.toBe(a);
    expect(plan(attention(base), { target: 'emu' }, toolchain).key).not.toBe(a);
    expect(plan(attention(base), { target: 'emu', sanitize: 'address' }, toolchain).key).toMatch(
      /^k-emu-address-/,
    );
  });

  test('the cpu target carries its own tunables: defaults rendered, overrides keyed and checked', async () => {
    const toolchain = await findToolchain();
    const spec = attention({
      name: 't',
      heads: { q: 8, kv: 2 },
      headDim: 64,
      dtype: 'f16',
      targets: ['cpu', 'emu'],
    });
    const defaults = plan(spec, { target: 'cpu' }, toolchain);
    expect(defaults.tunables).toEqual({
      cpu_tile_rows: 64,
      cpu_direct_below: 20,
      cpu_prefetch: 3,
      cpu_threads: 0,
    });
    expect(render(defaults).source).toContain('static constexpr int k_cpu_tile_rows = 64;');
    const tuned = plan(spec, { target: 'cpu', tunables: { cpu_tile_rows: 32 } }, toolchain);
    expect(tuned.key).not.toBe(defaults.key);
    expect(render(tuned).source).toContain('static constexpr int k_cpu_tile_rows = 32;');
    expect(() => plan(spec, { target: 'cpu', tunables: { cpu_tile_rows: 33 } }, toolchain)).toThrow(
      /cpu_tile_rows: 33 is not one of 16, 32, 64, 128/,
    );
    expect(() => plan(spec, { target: 'emu', tunables: { cpu_tile_rows: 32 } }, toolchain)).toThrow(
      /unknown tunable cpu_tile_rows/,
    );
    expect(plan(spec, { target: 'emu' }, toolchain).tunables).toEqual({});
  });
});

test('the cache key ignores where a score function was written, not what it computes', async () => {
  const toolchain = await findToolchain();
  const spec = attention({
    name: 'moved',
    heads: { q: 4, kv: 4 },
    headDim: 64,
    dtype: 'f32',
    targets: ['cpu'],
    scoreMod: (s) => s * 2,
  });
  const moved = {
    ...spec,
    scoreMod: {
      ...spec.scoreMod!,
      loc: { file: 'elsewhere.ts', line: 99, column: 1 },
      source: '(x) => x * 2',
    },
  };
  const changed = {
    ...spec,
    scoreMod: {
      ...spec.scoreMod!,
      ir: {
        kind: 'binary' as const,
        op: '*' as const,
        left: { kind: 'score' as const },
        right: { kind: 'num' as const, value: 3 },
      },
    },
  };
  // A stored cpp is never used (the C++ is regenerated from the IR), so it cannot change the key.
  const cppOnly = { ...spec, scoreMod: { ...spec.scoreMod!, cpp: '(score * 3.0f)' } };
  const key = plan(spec, { target: 'cpu' }, toolchain).key;
  expect(plan(moved, { target: 'cpu' }, toolchain).key).toBe(key);
  expect(plan(cppOnly, { target: 'cpu' }, toolchain).key).toBe(key);
  expect(plan(changed, { target: 'cpu' }, toolchain).key).not.toBe(key);
});
