import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import type { DemoResult } from '../bench/demo.ts';
import { runCli } from './cli-harness.ts';
import { DEMO_TEST_HEADS } from './specs.ts';

function specFile(source: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'chunkattn-cli-'));
  const file = join(dir, 'spec.ts');
  writeFileSync(file, source.replaceAll('DSL', join(import.meta.dirname, '..', 'dsl', 'index.ts')));
  return file;
}

describe('chunkattn CLI', () => {
  test('doctor reports compilers, GPU, cache and addon as JSON', async () => {
    const result = await runCli(['doctor', '--json']);
    expect(result.exitCode, result.stderr).toBe(0);
    const report = result.json as Record<string, unknown>;
    expect(report).toHaveProperty('gxx');
    expect(report).toHaveProperty('nvcc');
    expect(String(report.gpu)).toMatch(/^(yes|no|a device)/);
    expect(String(report.cache)).toBeTruthy();
  });

  test('a bad spec exits 1 with file:line:col and starts no build', async () => {
    const cache = mkdtempSync(join(tmpdir(), 'chunkattn-cli-cache-'));
    const file = specFile(
      [
        "import { attention } from 'DSL';",
        'export default attention({',
        "  name: 'bad', heads: { q: 8, kv: 8 }, headDim: 64, dtype: 'f16',",
        '  mask: (pos) => pos.query > 3,',
        '});',
        '',
      ].join('\n'),
    );
    const result = await runCli(['compile', file, '--target', 'cpu'], { CHUNKATTN_CACHE: cache });
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain(`${file}:4:`);
    expect(result.stderr).toMatch(/query/);
    expect(readdirSync(cache)).toEqual([]);
  });

  test('a spec field error names the field path and exits 1', async () => {
    const file = specFile(
      "import { attention } from 'DSL';\nexport default attention({ name: 'x', heads: { q: 32, kv: 5 }, headDim: 128, dtype: 'f16' });\n",
    );
    const result = await runCli(['compile', file]);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain('heads.kv');
  });

  test('unknown flags values, targets and files are user errors (exit 1)', async () => {
    for (const args of [
      ['compile', 'examples/llama2-7b.ts', '--arch', 'sm_70'],
      ['compile', 'examples/llama2-7b.ts', '--target', 'tpu'],
      ['compile', 'examples/llama2-7b.ts', '--head-dim', 'big'],
      ['compile', 'examples/does-not-exist.ts'],
      ['bench', 'no-such-report'],
      ['no-such-command'],
    ]) {
      const result = await runCli(args);
      expect(result.exitCode, `${args.join(' ')}\n${result.stderr}`).toBe(1);
      expect(result.stderr.length).toBeGreaterThan(0);
    }
  });

  test('--head-dim retargets a spec, and an unsupported one is refused', async () => {
    const ok = await runCli([
      'inspect',
      'examples/llama2-7b.ts',
      '--target',
      'cpu',
      '--head-dim',
      '64',
      '--json',
    ]);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect((ok.json as { specs: { headDim: number }[] }).specs[0]!.headDim).toBe(64);
    const bad = await runCli(['inspect', 'examples/llama2-7b.ts', '--head-dim', '100']);
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toContain('headDim');
  });
  test('demo runs the shared-prompt workload end to end and reports memory, rates and error', async () => {
    const args = ['demo', '--batch', '4', '--shared', '128', '--steps', '8', '--heads', `${DEMO_TEST_HEADS}`];
    const result = await runCli([...args, '--json']);
    expect(result.exitCode, result.stderr).toBe(0);
    const demo = result.json as DemoResult;
    expect(demo.shape.heads).toBe(DEMO_TEST_HEADS);
    expect(demo.memory.storedBytes).toBeLessThan(demo.memory.unsharedBytes);
    expect(demo.memory.savedPercent).toBeGreaterThan(0);
    for (const mode of ['two-phase', 'sequence-first'] as const) {
      expect(demo.tokensPerSecond[mode]).toBeGreaterThan(0);
      expect(demo.maxRelativeError[mode]).toBeLessThanOrEqual(demo.tolerance);
    }
    expect(demo.sampledSteps).toContain(8);
    const bad = await runCli(['demo', '--steps', '0']);
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toContain('--steps');
  });

  test('demo --target emu runs two-phase for real on the CUDA kernels: counted bytes, phase-1 launches, float64 gate', async () => {
    const args = [
      'demo',
      '--target',
      'emu',
      '--batch',
      '4',
      '--shared',
      '128',
      '--steps',
      '4',
      '--heads',
      `${DEMO_TEST_HEADS}`,
    ];
    const result = await runCli([...args, '--json']);
    expect(result.exitCode, result.stderr).toBe(0);
    const demo = result.json as DemoResult;
    expect(demo.target).toBe('emu');
    expect(demo.ranAs).toEqual({ 'two-phase': 'two-phase', 'sequence-first': 'sequence-first' });
    for (const mode of ['two-phase', 'sequence-first'] as const)
      expect(demo.maxRelativeError[mode]).toBeLessThanOrEqual(demo.tolerance);
    const counts = demo.counts!;
    expect(counts['two-phase'].phase1Launches).toBeGreaterThan(0);
    expect(counts['sequence-first'].phase1Launches).toBe(0);
    // 4 sequences share 128 tokens (2 chunks): sequence-first reads them 4 times, two-phase once.
    const chunkKv = 2 * 64 * DEMO_TEST_HEADS * 128 * 2; // K and V of one chunk, f16
    expect(counts['sequence-first'].kvBytesRead - counts['two-phase'].kvBytesRead).toBe(4 * 3 * 2 * chunkKv);
    expect(result.stderr).toContain('fewer K/V bytes');
  });

  test('bench tpp --target emu counts both modes and gates their error; other reports refuse --target', async () => {
    const out = mkdtempSync(join(tmpdir(), 'chunkattn-tpp-emu-'));
    const result = await runCli(['bench', 'tpp', '--target', 'emu', '--quick', '--out', out, '--json']);
    expect(result.exitCode, result.stderr).toBe(0);
    const report = result.json as {
      target: string;
      errorGate: { pass: boolean; worst: number; tolerance: number };
      results: { ns: number; kvReadRatio: number; phase1Launches: number }[];
    };
    expect(report.target).toBe('emu');
    expect(report.errorGate.pass).toBe(true);
    expect(report.errorGate.worst).toBeGreaterThan(0);
    const [shared, unshared] = report.results;
    expect(shared!.ns).toBeGreaterThan(0);
    expect(shared!.kvReadRatio).toBeGreaterThan(2);
    expect(shared!.phase1Launches).toBeGreaterThan(0);
    expect(unshared!.ns).toBe(0);
    expect(unshared!.kvReadRatio).toBe(1);
    expect(unshared!.phase1Launches).toBe(0);
    for (const [args, message] of [
      [['bench', 'traffic', '--target', 'emu'], 'has no --target'],
      [['bench', 'tpp', '--target', 'cuda'], 'runs on cpu or emu'],
      [['demo', '--target', 'tpu'], "'tpu' is not allowed"],
    ] as const) {
      const bad = await runCli([...args]);
      expect(bad.exitCode, args.join(' ')).toBe(1);
      expect(bad.stderr).toContain(message);
    }
  });
});
