// `bench traffic --quick`: per mode and shape, the bytes one decode step moves and how the GPU
// would serve them, counted in the emu target. The sequence-first kernel reads the shared prefix
// once per sequence; two-phase and chunk-first read it once in all; all with conflict-free shared
// memory and whole sectors.

import { describe, expect, test } from 'vitest';
import { runTrafficBench, type TrafficResult } from '../bench/traffic.ts';
import { haveCudaHeaders } from '../runtime/cucpu/tools/test-harness.ts';

describe.skipIf(!haveCudaHeaders)('bench traffic --quick', () => {
  test('reports every mode and shape; sequence-first reads the shared part b times, two-phase once, conflict-free and coalesced', async () => {
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
    // Two-phase and chunk-first read every unique K/V byte once: phase 1 reads each shared chunk
    // once for all 32 sharers × G heads (one m-tile of ≤ 128 stacked rows), phase 2 (two-phase)
    // or single-row runs (chunk-first) the private tokens.
    for (const r of results.filter((x) => x.mode !== 'sequence-first')) {
      expect(r.skipped).toBeUndefined();
      expect(r.ranAs).toBe(r.mode);
      expect(r.kernels['decode_phase1']?.launches).toBe(1);
      expect(r.kvRatio).toBeLessThanOrEqual(1.02);
      // Chunk-first also writes and merges a partial for every private chunk: only two-phase has
      // the total gate.
      if (r.mode === 'two-phase') expect(r.totalRatio).toBeLessThanOrEqual(1.3);
      expect(r.kvSectorEfficiency).toBeGreaterThanOrEqual(0.9);
      expect(r.kernels['decode_phase1']!.kvSectorEfficiency).toBeGreaterThanOrEqual(0.9);
      expect(r.kernels['decode_phase2']!.smemWavefrontsPerKB).toBeLessThanOrEqual(48);
      // 32 stacked rows (G = 1) are one warp's two m16 blocks; 128 rows (G = 4) four warps'.
      expect(r.kernels['decode_phase1']!.smemWavefrontsPerKB).toBeLessThanOrEqual(48);
    }
  }, 600_000);
});
