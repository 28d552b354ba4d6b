// The memory claims of `chunkattn bench memory`, on a short trace.

import { describe, expect, test } from 'vitest';
import { runMemoryBench, simulateMemory } from '../bench/memory.ts';

describe('bench memory', () => {
  test('stored KV stays within one chunk per live sequence of the ideal, and sharing saves most of it', () => {
    const arrivals = Array.from({ length: 60 }, (_, i) => i * 20);
    for (const ns of [0, 1024, 4096]) {
      const r = simulateMemory(ns, arrivals, 7);
      expect(r.overIdealChunksPerSeq).toBeLessThanOrEqual(1);
      expect(r.peakChunksShared).toBeGreaterThanOrEqual(r.peakChunksIdeal);
      if (ns === 0) expect(r.savedPercent).toBe(0);
      else expect(r.savedPercent).toBeGreaterThan(60);
    }
  });

  test('the quick report has per-ns savings, over-ideal and timings in its JSON', async () => {
    const report = await runMemoryBench({ quick: true, progress: () => {} });
    const json = report.json as {
      results: { ns: number; savedPercent: number; overIdealChunksPerSeq: number }[];
      withinOneChunkPerSeqOfIdeal: boolean;
      timing: { appendBatchUs: { median: number }; rebuildMs: Record<string, { median: number }> };
    };
    expect(json.results.map((r) => r.ns)).toEqual([0, 1024, 2048, 4096]);
    expect(json.withinOneChunkPerSeqOfIdeal).toBe(true);
    expect(json.timing.appendBatchUs.median).toBeGreaterThan(0);
    expect(Object.keys(json.timing.rebuildMs)).toEqual(['private', 'shared2048', 'nested']);
    expect(report.rows).toHaveLength(4);
  });
});
