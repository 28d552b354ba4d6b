// The phase-2 / sequence-first CUDA kernel (decode_phase2.cuh) in the emu target: conflict-free
// shared memory and coalesced K/V reads (counted by the shim), split-KV with its merge against
// float64 in every block order, and the plan's geometry equal to the C++ plan's for every
// instance.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, test } from 'vitest';
import { phase2Geometry } from '../codegen/plan.ts';
import { attention } from '../dsl/index.ts';
import type { DType } from '../dsl/spec.ts';
import { sectorEfficiency } from '../index.ts';
import { cudaHome, haveCudaHeaders, repoRoot } from '../runtime/cucpu/tools/test-harness.ts';
import { EmuShapeRuntimes } from './emu-runtimes.ts';
import { EMU_CONFIGS } from './specs.ts';
import { Rng, WorkloadModel } from './workload-model.ts';

const SEED = Number(process.env.CHUNKATTN_SEED ?? Math.floor(Math.random() * 2 ** 31));

const runtimes = new EmuShapeRuntimes(16 * 1024);
const runtimeFor = (index: number) => runtimes.get(index);
afterAll(() => runtimes.closeAll());

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

describe.skipIf(!haveCudaHeaders)(`decode_phase2 in the emu target (seed ${SEED})`, () => {
  test.each(EMU_CONFIGS.map((c, i) => ({ i, ...c, g: c.heads.q / c.heads.kv })))(
    'config $i (d=$headDim, G=$g, c=$chunkSize, $dtype): ≤ 48 shared wavefronts per KB of K/V, K/V sector efficiency ≥ 0.9',
    async ({ i }) => {
      const { attn, spec } = await runtimeFor(i);
      expect(attn.module.info.raw['smemBytes']).toBe(phase2Geometry(spec).smemBytes);
      const model = new WorkloadModel(attn, spec, new Rng(SEED + i));
      const seqs = [0, 1, 2, 3, 4, 5, 6, 7].map((s) =>
        model.insert(Array.from({ length: 520 + 5 * s }, (_, t) => 7000 * s + t)),
      );
      attn.module.resetStats();
      model.step(seqs); // checks the numbers against float64 too
      const kernels = attn.module.stats().kernels;
      const k = kernels['decode_phase2'];
      expect(k, JSON.stringify(kernels)).toBeDefined();
      const perKB = k!.smemWavefronts / (k!.requestedBytes.kv / 1024);
      expect(perKB).toBeLessThanOrEqual(48);
      expect(sectorEfficiency(k!, 'kv')).toBeGreaterThanOrEqual(0.9);
      for (const s of seqs) model.release(s);
      attn.cache.evict();
    },
  );

  test.each(['forward', 'reverse', 'random'])(
    'split-KV: batch 1 and 2 with long rows are split over CTAs and merged, matching float64 (CUCPU_ORDER=%s)',
    async (order) => {
      const { attn, spec } = await runtimeFor(0); // 4 KV heads: 1-2 rows cannot fill 108 SMs
      const model = new WorkloadModel(attn, spec, new Rng(SEED + 99));
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
          expect(stats.bytesRead.partial).toBe(stats.bytesWritten.partial);
          for (const s of seqs) model.release(s);
          attn.cache.evict();
        }
      });
    },
  );
});

// Every instance of Phase2Plan the suites and the spec matrix use, read back from C++.
describe.skipIf(!haveCudaHeaders)('codegen/plan.ts agrees with Phase2Plan<Cfg>', () => {
  const cases: {
    heads: { q: number; kv: number };
    headDim: 64 | 80 | 96 | 128 | 256;
    dtype: DType;
    chunkSize: 16 | 32 | 64 | 128;
    listed?: boolean;
  }[] = [
    ...EMU_CONFIGS.map((c) => ({
      heads: c.heads,
      headDim: c.headDim,
      dtype: c.dtype as DType,
      chunkSize: 16 as const,
    })),
    ...[64, 96, 128, 256].flatMap((headDim) =>
      [1, 4, 6, 8].flatMap((g) =>
        ([16, 128] as const).map((chunkSize) => ({
          heads: { q: 2 * g, kv: 2 },
          headDim: headDim as 64 | 96 | 128 | 256,
          dtype: 'f16' as DType,
          chunkSize,
        })),
      ),
    ),
    // The PSA list-driven instances (CUDA cores for every G).
    ...[4, 8].map((g) => ({
      heads: { q: 2 * g, kv: 2 },
      headDim: 128 as const,
      dtype: 'bf16' as DType,
      chunkSize: 32 as const,
      listed: true,
    })),
  ];
  test('threads, shared memory, lanes per row, groups and tokens per stage of every instance', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'phase2-plan-'));
    try {
      const cfgs = cases.map(
        (c, i) =>
          `struct Cfg${i} { static constexpr int kQHeads = ${c.heads.q}, kKvHeads = ${c.heads.kv}, kHeadDim = ${c.headDim}, kChunk = ${c.chunkSize}; using QT = ca::${c.dtype}; using KvT = ca::${c.dtype}; using OutT = ca::${c.dtype}; };\n` +
          `static void print${i}() { using P = ca::Phase2Plan<Cfg${i}, ${c.listed === true}>; std::printf("%d %d %d %d %d %d %d %zu %zu\\n", int(P::kTensorCores), P::kThreads, P::kLaneBytes, P::kTx, P::kGroups, P::kKT, P::kMaxRegisters, P::kSmemBytes, P::kMergeSplitsSmemBytes); }`,
      );
      const source = `#define CA_TARGET_EMU 1\n#include <cstdio>\n#include "chunkattn/decode_phase2.cuh"\n${cfgs.join('\n')}\nint main() {\n${cases.map((_, i) => `  print${i}();`).join('\n')}\n}\n`;
      writeFileSync(join(dir, 'plan.cpp'), source);
      await execa(
        'g++',
        [
          '-std=c++20',
          '-O0',
          '-include',
          join(repoRoot, 'runtime/cucpu/cucpu.h'),
          `-I${join(cudaHome, 'include')}`,
          `-I${join(repoRoot, 'templates/include')}`,
          '-Wno-unknown-pragmas',
          join(dir, 'plan.cpp'),
          '-o',
          join(dir, 'plan'),
          '-pthread',
        ],
        { cwd: dir },
      );
      const { stdout } = await execa(join(dir, 'plan'));
      const lines = stdout.trim().split('\n');
      expect(lines.length).toBe(cases.length);
      for (const [i, c] of cases.entries()) {
        const { listed = false, ...shape } = c;
        const spec = attention({ name: `plan-${i}`, ...shape, targets: ['emu'] });
        const ts = phase2Geometry(spec, listed);
        const [
          tc,
          threads,
          laneBytes,
          lanesPerRow,
          groups,
          tileTokens,
          maxRegisters,
          smemBytes,
          mergeSplitsSmemBytes,
        ] = lines[i]!.split(' ').map(Number);
        expect(
          {
            tensorCores: tc === 1,
            threads,
            laneBytes,
            lanesPerRow,
            groups,
            tileTokens,
            maxRegisters,
            smemBytes,
            mergeSplitsSmemBytes,
          },
          JSON.stringify(c),
        ).toEqual(ts);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
