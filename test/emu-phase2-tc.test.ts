// Phase 2 on tensor cores (G ≥ 4: decode_phase2.cuh's phase2_tc_body through tc_engine.cuh) in
// the emu target against float64, NaN-poisoned outputs (WorkloadModel), in forward, reverse and
// random block order: G = 4, 6 and 8 over head dims 64, 96, 128 and 256, f16 and bf16, chunk
// sizes 16, 32, 64 and 128; sequence-first and two-phase; private lengths 0, 1, c − 1, c and
// c + 1; sharing none, all, nested three levels and many small groups; split-KV rows merged by
// decode_merge_splits. Each K/V byte is read from shared memory once (no per-head re-reads).

import { afterAll, describe, expect, test } from 'vitest';
import { phase2Geometry } from '../codegen/plan.ts';
import type { Partition } from '../dsl/spec.ts';
import { Attention, sectorEfficiency } from '../index.ts';
import { haveCudaHeaders } from '../runtime/cucpu/tools/test-harness.ts';
import { EMU_TC_SHAPES as SHAPES, emuTcSpec as tcSpec } from './specs.ts';
import { Rng, WorkloadModel } from './workload-model.ts';

const SEED = Number(process.env.CHUNKATTN_SEED ?? Math.floor(Math.random() * 2 ** 31));
const ORDERS = ['forward', 'reverse', 'random'] as const;
type Pattern = 'none' | 'all' | 'nested' | 'groups';
const PATTERNS: readonly Pattern[] = ['none', 'all', 'nested', 'groups'];

function withOrder<T>(order: string, fn: () => T): T {
  const saved = process.env.CUCPU_ORDER;
  process.env.CUCPU_ORDER = order;
  try {
    return fn();
  } finally {
    if (saved === undefined) delete process.env.CUCPU_ORDER;
    else process.env.CUCPU_ORDER = saved;
  }
}

const open: Attention[] = [];
afterAll(() => {
  for (const a of open) a.close();
});
const runtimes = new Map<string, Promise<Attention>>();
function runtime(i: number, mode: Partition): Promise<Attention> {
  const key = `${i} ${mode}`;
  let attn = runtimes.get(key);
  if (!attn) {
    attn = Attention.create(tcSpec(i), { layers: 1, capacityTokens: 16 * 1024, target: 'emu', mode }).then(
      (a) => {
        open.push(a);
        return a;
      },
    );
    runtimes.set(key, attn);
  }
  return attn;
}

/** Private lengths at the chunk edges: 0, 1, c − 1, c, c + 1 (row i takes the i-th, cyclically). */
const tailLength = (i: number, c: number) => [0, 1, c - 1, c, c + 1][i % 5]!;

function prompts(rng: Rng, pattern: Pattern, batch: number, c: number): number[][] {
  const shared = Array.from({ length: 2 * c + rng.int(c) }, (_, t) => 1 + t);
  return Array.from({ length: batch }, (_, i) => {
    const tail = Array.from({ length: tailLength(i, c) }, (_, t) => 100_000 * (i + 1) + t);
    switch (pattern) {
      case 'none':
        return [70_000 + i, ...tail];
      case 'all':
        return [...shared, ...tail];
      case 'nested': // three levels: a shared root, 2 branches of c + 3 tokens, pairs of leaves
        return [
          ...shared,
          ...Array.from({ length: c + 3 }, (_, t) => 50_000 + 1000 * (i % 2) + t),
          ...(i % 4 < 2 ? [7, 7] : [8]),
          ...tail,
        ];
      default: // many small groups of 5
        return [...Array.from({ length: c + 1 }, (_, t) => 30_000 + 1000 * (i % 5) + t), ...tail];
    }
  });
}

describe.skipIf(!haveCudaHeaders)(`phase 2 on tensor cores (G ≥ 4) in the emu target (seed ${SEED})`, () => {
  const cases = SHAPES.flatMap((s, i) =>
    (['sequence-first', 'two-phase'] as const).flatMap((mode, j) =>
      [0, 1].map((k) => ({
        i,
        mode,
        g: s.heads.q / s.heads.kv,
        d: s.headDim,
        c: s.chunkSize,
        dtype: s.dtype,
        pattern: PATTERNS[(i + 2 * j + k) % 4]!,
        batch: [1, 2, 17, 33][(i + j + 2 * k) % 4]!,
        order: ORDERS[(i + j + k) % 3]!,
      })),
    ),
  );
  test.each(cases)(
    'd=$d G=$g c=$c $dtype $mode: batch $batch, sharing $pattern, CUCPU_ORDER=$order',
    async ({ i, mode, pattern, batch, order }) => {
      const attn = await runtime(i, mode);
      const spec = attn.spec;
      expect(phase2Geometry(spec).tensorCores).toBe(true);
      expect(attn.module.info.raw['smemBytes']).toBe(phase2Geometry(spec).smemBytes);
      const rng = new Rng(SEED + 13 * i + (mode === 'two-phase' ? 1 : 0));
      const model = new WorkloadModel(attn, spec, rng);
      const seqs = prompts(rng, pattern, batch, spec.chunkSize).map((p) => model.insert(p));
      withOrder(order, () => {
        attn.module.resetStats();
        model.step(seqs); // poisons the output, decodes, compares with float64 attention
        const p2 = attn.module.stats().kernels['decode_phase2'];
        expect(p2?.launches).toBe(1);
        if (p2!.requestedBytes.kv > 0) expect(sectorEfficiency(p2!, 'kv')).toBeGreaterThanOrEqual(0.9);
        model.step([...seqs].reverse());
      });
      expect(model.maxError).toBeLessThanOrEqual(spec.dtype.kv === 'bf16' ? 1e-2 : 2e-3);
      for (const s of seqs) model.release(s);
      attn.cache.evict();
    },
    300_000,
  );

  test.each(SHAPES.map((_, i) => i))(
    'shape %i: each K/V byte is read from shared memory once for all G heads (long private parts)',
    async (i) => {
      const attn = await runtime(i, 'sequence-first');
      const model = new WorkloadModel(attn, attn.spec, new Rng(SEED + 7));
      const seqs = Array.from({ length: 4 }, (_, s) =>
        model.insert(Array.from({ length: 512 }, (_, t) => 40_000 * (s + 1) + t)),
      );
      attn.module.resetStats();
      model.step(seqs);
      const p2 = attn.module.stats().kernels['decode_phase2']!;
      expect(sectorEfficiency(p2, 'kv')).toBeGreaterThanOrEqual(0.9);
      // The copies (8 wavefronts per KB), one ldmatrix read of K and of V (8), and per split
      // (4 rows × 2 KV heads split about 5 ways) the warps' merge and the output: no re-read per
      // query head (the CUDA-core path reads a token row once per lane group and head group).
      expect(p2.smemWavefronts / (p2.requestedBytes.kv / 1024)).toBeLessThanOrEqual(40);
      for (const s of seqs) model.release(s);
      attn.cache.evict();
    },
    300_000,
  );

  test.each(ORDERS)(
    'split-KV: batch 1 and 2 with long private parts are split over CTAs and merged (CUCPU_ORDER=%s)',
    async (order) => {
      const i = ORDERS.indexOf(order) % SHAPES.length;
      const attn = await runtime(i, 'sequence-first');
      const model = new WorkloadModel(attn, attn.spec, new Rng(SEED + 99));
      withOrder(order, () => {
        for (const batch of [1, 2]) {
          const seqs = Array.from({ length: batch }, (_, s) =>
            model.insert(Array.from({ length: 700 + 37 * s }, (_, t) => 90_000 * (s + 1) + t)),
          );
          attn.module.resetStats();
          model.step(seqs);
          const stats = attn.module.stats();
          expect(stats.kernels['decode_merge_splits']?.launches).toBe(1);
          expect(stats.bytesWritten.partial).toBeGreaterThan(0);
          for (const s of seqs) model.release(s);
          attn.cache.evict();
        }
      });
      expect(model.maxError).toBeLessThanOrEqual(attn.spec.dtype.kv === 'bf16' ? 1e-2 : 2e-3);
    },
    300_000,
  );
});
