// The phase-1 CUDA kernel (decode_phase1.cuh: shared runs on mma.sync m16n8k16) in the emu target:
// two-phase and chunk-first against float64 with NaN-poisoned outputs in forward, reverse and
// random block order, over every EMU_CONFIGS shape (head dims 64/80/96/128/256, G = 1/4/6/8/2,
// chunk sizes 16/32/64/128, f16 and bf16) on nested shared prefixes with several sharers and
// row lengths 1, c − 1, c and c + 1 past the prefix; runs longer than one split; each shared
// chunk read once; conflict-free shared memory; and the plan's geometry equal to the C++ plan's.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, test } from 'vitest';
import { phase1Geometry } from '../codegen/plan.ts';
import { attention } from '../dsl/index.ts';
import type { DType, KernelSpec, Partition } from '../dsl/spec.ts';
import { Attention, sectorEfficiency } from '../index.ts';
import { cudaHome, haveCudaHeaders, repoRoot } from '../runtime/cucpu/tools/test-harness.ts';
import { EMU_CONFIGS, emuShapeSpec } from './specs.ts';
import { Rng, WorkloadModel } from './workload-model.ts';

const SEED = Number(process.env.CHUNKATTN_SEED ?? Math.floor(Math.random() * 2 ** 31));
const ORDERS = ['forward', 'reverse', 'random'] as const;

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
async function runtime(spec: KernelSpec, mode: Partition): Promise<Attention> {
  const attn = await Attention.create(spec, { layers: 1, capacityTokens: 16 * 1024, target: 'emu', mode });
  open.push(attn);
  return attn;
}

/**
 * Three sharing levels: every sequence shares `base` (2c + 3 tokens: 2 full chunks), groups of
 * sequences share c + 5 more, leaves add 1, c − 1, c or c + 1 private tokens; one leaf is forked.
 */
function nestedTree(model: WorkloadModel, c: number, batch: number, rng: Rng): number[] {
  const base = Array.from({ length: 2 * c + 3 }, (_, t) => 1000 + t);
  const groups = [0, 1, 2].map((g) => Array.from({ length: c + 5 }, (_, t) => 5000 * (g + 1) + t));
  const tails = [1, c - 1, c, c + 1];
  const seqs: number[] = [];
  for (let i = 0; seqs.length < batch - 2; i++) {
    const tail = Array.from({ length: tails[i % tails.length]! }, (_, t) => 90_000 + 100 * i + t);
    const group = i % 4 === 3 ? [] : groups[i % 3]!; // some rows share the base only
    seqs.push(model.insert([...base, ...group, ...tail]));
  }
  seqs.push(...model.fork(seqs[rng.int(seqs.length)]!, 2));
  return seqs;
}

describe.skipIf(!haveCudaHeaders)(`decode_phase1 in the emu target (seed ${SEED})`, () => {
  const cases = EMU_CONFIGS.flatMap((c, i) =>
    (['two-phase', 'chunk-first'] as const).map((mode, j) => ({
      i,
      mode,
      order: ORDERS[(i + j) % 3]!,
      g: c.heads.q / c.heads.kv,
      ...c,
    })),
  );
  test.each(cases)(
    'config $i (d=$headDim, G=$g, c=$chunkSize, $dtype) $mode, CUCPU_ORDER=$order: matches float64 on nested sharing',
    async ({ i, mode, order }) => {
      const spec = emuShapeSpec(i);
      const attn = await runtime(spec, mode);
      expect(attn.mode).toBe(mode);
      expect(attn.module.info.phase1).toBe(true);
      expect(attn.module.info.raw['phase1SmemBytes']).toBe(phase1Geometry(spec).smemBytes);
      const rng = new Rng(SEED + 7 * i);
      const model = new WorkloadModel(attn, spec, rng);
      const seqs = nestedTree(model, spec.chunkSize, i % 2 === 0 ? 9 : 17, rng);
      withOrder(order, () => {
        attn.module.resetStats();
        model.step(seqs); // throws past the dtype's tolerance (f16 2e-3, bf16 1e-2)
        const stats = attn.module.stats();
        const p1 = stats.kernels['decode_phase1'];
        expect(p1?.launches, JSON.stringify(stats.kernels)).toBe(1);
        expect(stats.bytesWritten.partial).toBeGreaterThan(0);
        expect(stats.bytesRead.partial).toBeGreaterThan(0);
        // Phase 1 reads K/V through whole sectors, without bank conflicts.
        expect(sectorEfficiency(p1!, 'kv')).toBeGreaterThanOrEqual(0.9);
        model.step([...seqs].reverse()); // the next step, rows requested in another order
      });
      expect(model.maxError).toBeLessThanOrEqual(spec.dtype.kv === 'bf16' ? 1e-2 : 2e-3);
      for (const s of seqs) model.release(s);
      attn.cache.evict();
    },
    300_000,
  );

  test.each(ORDERS)(
    'runs longer than one split (batch 2 and 3 behind a long prefix) merge in phase 2 (CUCPU_ORDER=%s)',
    async (order) => {
      const spec = emuShapeSpec(0); // 4 KV heads, G = 1: one m-tile cannot fill 108 SMs
      const attn = await runtime(spec, 'two-phase');
      const model = new WorkloadModel(attn, spec, new Rng(SEED + 31));
      const prefix = Array.from({ length: 700 }, (_, t) => 77_000 + t);
      withOrder(order, () => {
        for (const batch of [2, 3]) {
          const seqs = Array.from({ length: batch }, (_, s) =>
            model.insert([...prefix, ...Array.from({ length: 5 + 9 * s }, (_, t) => 3000 * (s + 1) + t)]),
          );
          attn.module.resetStats();
          model.step(seqs);
          const stats = attn.module.stats();
          const p1 = stats.kernels['decode_phase1']!;
          // 43 full chunks of the prefix in one run: more CTAs than m-tiles × KV heads.
          expect(p1.blocks).toBeGreaterThan(4);
          for (const s of seqs) model.release(s);
          attn.cache.evict();
        }
      });
    },
    300_000,
  );

  test('two-phase reads every shared chunk once; ≤ 48 shared-memory wavefronts per KB of K/V at 128 stacked rows', async () => {
    const spec = emuShapeSpec(3); // d = 128, G = 8, c = 64, bf16
    const attn = await runtime(spec, 'two-phase');
    const model = new WorkloadModel(attn, spec, new Rng(SEED + 5));
    const c = spec.chunkSize;
    // A bench-traffic-sized run (1024 tokens): the prologue (Q staging) is amortized as there.
    const prefix = Array.from({ length: 16 * c }, (_, t) => 11_000 + t);
    const batch = 16; // 16 rows × G = 8: one m-tile of 128 stacked rows
    const seqs = Array.from({ length: batch }, (_, s) =>
      model.insert([...prefix, ...Array.from({ length: 3 + s }, (_, t) => 20_000 * (s + 1) + t)]),
    );
    attn.module.resetStats();
    model.step(seqs);
    const p1 = attn.module.stats().kernels['decode_phase1']!;
    const kvBytesPerToken = spec.heads.kv * spec.headDim * 2 * 2; // K and V, bf16
    expect(p1.requestedBytes.kv).toBe(16 * c * kvBytesPerToken);
    // Two m16 blocks a warp at d = 128, 4 warps: ~8 wavefronts/KB for the copies, 8 per warp's
    // read of the staged K/V and 1 per warp for the Q step re-read from shared memory.
    const perKB = p1.smemWavefronts / (p1.requestedBytes.kv / 1024);
    expect(perKB).toBeLessThanOrEqual(48);
    // Phase 1 computes a run for all its sharers: keep two, so 2 rows × 8 = 16 stacked rows make
    // one m16 block (the tile's 4 warps: 1 along m, 4 splitting the tokens).
    for (const s of seqs.slice(2)) model.release(s);
    attn.cache.evict();
    attn.module.resetStats();
    model.step(seqs.slice(0, 2));
    const q = attn.module.stats().kernels['decode_phase1']!;
    expect(q.smemWavefronts / (q.requestedBytes.kv / 1024)).toBeLessThanOrEqual(48);
    for (const s of seqs.slice(0, 2)) model.release(s);
    attn.cache.evict();
  }, 300_000);
});

// Every instance of Phase1Plan the suites and the spec matrix use, read back from C++.
describe.skipIf(!haveCudaHeaders)('codegen/plan.ts agrees with Phase1PlanOf<Cfg, Variant, kListed>', () => {
  const cases: {
    heads: { q: number; kv: number };
    headDim: 64 | 80 | 96 | 128 | 256;
    dtype: DType;
    pos: boolean;
    listed?: boolean;
    narrow?: boolean;
  }[] = [
    ...EMU_CONFIGS.map((c) => ({ heads: c.heads, headDim: c.headDim, dtype: c.dtype as DType, pos: false })),
    ...[64, 96, 128, 256].flatMap((headDim) =>
      [1, 4, 6, 8].flatMap((g) =>
        [false, true].map((pos) => ({
          heads: { q: 2 * g, kv: 2 },
          headDim: headDim as 64 | 96 | 128 | 256,
          dtype: (g === 4 ? 'f16' : 'bf16') as DType,
          pos,
        })),
      ),
    ),
    // The PSA list-driven instances.
    ...[64, 128, 256].map((headDim) => ({
      heads: { q: 8, kv: 2 },
      headDim: headDim as 64 | 128 | 256,
      dtype: 'bf16' as DType,
      pos: false,
      listed: true,
    })),
    // A build for sm_86 or sm_89 (Cfg::kNarrowPhase1).
    ...[96, 128].map((headDim) => ({
      heads: { q: 8, kv: 2 },
      headDim: headDim as 96 | 128,
      dtype: 'f16' as DType,
      pos: false,
      narrow: true,
    })),
  ];
  test('threads, m-tile, stage tokens, registers and shared memory of every instance', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'phase1-plan-'));
    try {
      const cfgs = cases.map(
        (c, i) =>
          `struct Cfg${i} { static constexpr int kQHeads = ${c.heads.q}, kKvHeads = ${c.heads.kv}, kHeadDim = ${c.headDim}, kChunk = 16;${c.narrow ? ' static constexpr bool kNarrowPhase1 = true;' : ''} using QT = ca::${c.dtype}; using KvT = ca::${c.dtype}; using OutT = ca::${c.dtype}; };\n` +
          `static void print${i}() { using P = ca::Phase1PlanOf<Cfg${i}, ${c.pos ? 'Masked' : 'Plain'}, ${c.listed === true}>; std::printf("%d %d %d %d %d %d %zu\\n", P::kBlocksPerWarp, P::kThreads, P::kMT, P::kKT, P::kQRegSteps, P::kMaxRegisters, P::kSmemBytes); }`,
      );
      const variants =
        'struct Plain { static constexpr bool kHasMask = false, kHasScoreMod = false; };\n' +
        'struct Masked { static constexpr bool kHasMask = true, kHasScoreMod = false; };\n';
      const source = `#define CA_TARGET_EMU 1\n#include <cstdio>\n#include "chunkattn/decode_phase1.cuh"\n${variants}${cfgs.join('\n')}\nint main() {\n${cases.map((_, i) => `  print${i}();`).join('\n')}\n}\n`;
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
        const { pos, listed = false, narrow = false, ...shape } = c;
        const spec = attention({
          name: `plan-${i}`,
          ...shape,
          chunkSize: 16,
          targets: ['emu'],
          ...(pos ? { mask: (p: { q: number; kv: number }) => p.q - p.kv < 64 } : {}),
        });
        const ts = phase1Geometry(spec, listed, narrow ? ['sm_89'] : []);
        const [blocksPerWarp, threads, mTile, tileTokens, qRegSteps, maxRegisters, smemBytes] =
          lines[i]!.split(' ').map(Number);
        expect(
          { blocksPerWarp, threads, mTile, tileTokens, qRegSteps, maxRegisters, smemBytes },
          JSON.stringify(c),
        ).toEqual(ts);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
