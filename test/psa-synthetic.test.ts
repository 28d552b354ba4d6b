// The synthetic Q/K/V generator of bench psa and its float64 metrics.

import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  bytesFraction,
  exactAttention,
  massRecall,
  meanAndP5,
  oracleChunks,
  topKChunks,
} from '../bench/psa-metrics.ts';
import { syntheticQkv } from '../bench/psa-synthetic.ts';

const shape = { tokens: 2048, kvHeads: 3, group: 2, headDim: 64 } as const;

describe('syntheticQkv', () => {
  test('is a pure function of its options and seed', () => {
    const a = syntheticQkv({ seed: 11, ...shape, queries: 2 });
    const b = syntheticQkv({ seed: 11, ...shape, queries: 2 });
    const c = syntheticQkv({ seed: 12, ...shape, queries: 2 });
    for (const key of ['k', 'v', 'q'] as const) {
      expect(Buffer.from(a[key].buffer).equals(Buffer.from(b[key].buffer))).toBe(true);
      expect(Buffer.from(a[key].buffer).equals(Buffer.from(c[key].buffer))).toBe(false);
    }
    expect(a.headTypes).toEqual(['retrieval', 'local', 'diffuse']);
    expect(a.k.length).toBe(shape.tokens * shape.kvHeads * shape.headDim);
    expect(a.q.length).toBe(2 * shape.kvHeads * shape.group * shape.headDim);
    expect([...a.k, ...a.v, ...a.q].every(Number.isFinite)).toBe(true);
  });

  test('head types differ in sparsity: retrieval and local need fewer chunks than diffuse; local favours recent chunks', () => {
    const d = syntheticQkv({ seed: 5, ...shape, queries: 4 });
    const c = 32;
    const scale = 1 / Math.sqrt(shape.headDim);
    const need: Record<string, number[]> = { retrieval: [], local: [], diffuse: [] };
    const recent: Record<string, number[]> = { retrieval: [], local: [], diffuse: [] };
    const hq = shape.kvHeads * shape.group;
    for (let s = 0; s < d.queries; s++)
      for (let h = 0; h < hq; h++) {
        const kvh = Math.floor(h / shape.group);
        const q = d.q.subarray((s * hq + h) * shape.headDim, (s * hq + h + 1) * shape.headDim);
        const e = exactAttention(q, d.k, d.v, { ...shape, chunkSize: c, scale }, kvh);
        need[d.headTypes[kvh]!]!.push(oracleChunks(e.chunkMass, 0.9).length / e.chunkMass.length);
        recent[d.headTypes[kvh]!]!.push(
          massRecall(e.chunkMass, [e.chunkMass.length - 2, e.chunkMass.length - 1]),
        );
      }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(need['retrieval']!)).toBeLessThan(mean(need['diffuse']!));
    expect(mean(need['local']!)).toBeLessThan(mean(need['diffuse']!));
    expect(mean(recent['local']!)).toBeGreaterThan(mean(recent['retrieval']!));
  });
});

describe('PSA metrics', () => {
  test('oracle top-p is the fewest chunks reaching the mass; recall of everything is 1 (fast-check)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 64 }),
        fc.double({ min: 0.05, max: 0.99, noNaN: true }),
        (raw, mass) => {
          const sum = raw.reduce((a, b) => a + b, 0);
          const masses = Float64Array.from(raw, (x) => (sum > 0 ? x / sum : 1 / raw.length));
          const oracle = oracleChunks(masses, mass);
          expect(massRecall(masses, oracle)).toBeGreaterThanOrEqual(Math.min(mass, 1) - 1e-9);
          // One fewer chunk (dropping the smallest chosen) no longer reaches the mass.
          if (oracle.length > 1) {
            const smallest = oracle.reduce((a, j) => (masses[j]! < masses[a]! ? j : a), oracle[0]!);
            expect(
              massRecall(
                masses,
                oracle.filter((j) => j !== smallest),
              ),
            ).toBeLessThan(mass);
          }
          expect(massRecall(masses, Array.from(masses.keys()))).toBeCloseTo(1, 9);
        },
      ),
    );
  });

  test('top-k keeps the forced chunks, bytes include the metadata, p5 is the 5th percentile', () => {
    expect(topKChunks([5, 1, 9, 3, 7], 3, [1])).toEqual([1, 2, 4]);
    expect(
      bytesFraction(10, 100, { chunkSize: 32, headDim: 128, metaVectors: 4, scoredChunks: 99 }),
    ).toBeCloseTo((10 * 2 * 32 + 99 * 4) / (100 * 2 * 32), 12);
    const { mean, p5 } = meanAndP5(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(mean).toBe(50.5);
    expect(p5).toBe(5);
  });
});
