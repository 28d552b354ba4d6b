// `bench traffic --quick`: per mode and shape, the bytes one decode step moves and how the GPU
// would serve them, counted in the emu target. The sequence-first kernel reads the shared prefix
// once per sequence, with conflict-free shared memory and whole sectors.

import { describe, expect, test } from 'vitest';
import { runTrafficBench, type TrafficResult } from '../bench/traffic.ts';
import { haveCudaHeaders } from '../runtime/cucpu/tools/test-harness.ts';

describe.skipIf(!haveCudaHeaders)('bench traffic --quick', () => {
  test('reports every mode and shape; sequence-first reads the shared part b times, conflict-free and coalesced', async () => {
    const report = await runTrafficBench({ quick: true, progress: () => {} });
    const results = report.json['results'] as TrafficResult[];
    expect(results.map((r) => `${r.mode}/${r.group}`)).toEqual([
      'two-phase/1',
      'chunk-first/1',
      'sequence-first/1',
      'two-phase/4',
      'chunk-first/4',
      'sequence-first/4',
    ]);
    for (const r of results.filter((x) => x.mode === 'sequence-first')) {
      const b = 32;
      const expectedRatio = (b * (r.sharedTokens + 64)) / (r.sharedTokens + b * 64);
      expect(r.kvRatio).toBeCloseTo(expectedRatio, 6);
      expect(r.smemWavefrontsPerKB).toBeLessThanOrEqual(48);
      expect(r.kvSectorEfficiency).toBeGreaterThanOrEqual(0.9);
      expect(r.kernels['decode_phase2']!.smemWavefrontsPerKB).toBeLessThanOrEqual(48);
    }
    // Without a phase-1 kernel, chunk-first is refused and two-phase runs as sequence-first.
    for (const r of results.filter((x) => x.mode === 'chunk-first')) expect(r.skipped).toMatch(/phase-1/);
    for (const r of results.filter((x) => x.mode === 'two-phase')) expect(r.ranAs).toBe('sequence-first');
  }, 600_000);
});
