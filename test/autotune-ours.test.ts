// Our kernels in the performance model: one decode step counted on the emulator (not constants),
// counts that follow the context, the split-factor mirror against the emulator's grids, and the
// KV-head scaling (exact where the split factors agree, refused where they do not).

import { describe, expect, test } from 'vitest';
import {
  countDecodeStep,
  type DecodeStepShape,
  type StepCounts,
  scaleCounts,
  splitContext,
  totalBytes,
} from '../autotune/emu-counts.ts';
import { countedLaunches } from '../autotune/our-kernels.ts';
import { TABLE3 } from '../autotune/paper-kernels.ts';
import { EMU_SM_COUNT, emulatorKvHeads, splitFactors, withKvHeads } from '../autotune/split-factors.ts';
import { TABLE3_SPEC, table3StepShape } from '../autotune/table3-ours.ts';
import { attention } from '../dsl/attention.ts';

const D = 128;
const spec = attention({
  name: 'ours-count',
  heads: { q: 2, kv: 2 },
  headDim: D,
  dtype: 'f16',
  chunkSize: 64,
  targets: ['emu'],
});
const count = (shape: DecodeStepShape, kvHeads: number) =>
  countDecodeStep(spec, shape, kvHeads, { cache: false });
const unscaled = ({ emulatedKvHeads: _, ...rest }: StepCounts) => rest;

describe('one decode step counted on the emulator', () => {
  test('bytes follow the context: phase 1 reads each shared chunk once, phase 2 each private token once per row', async () => {
    const shapes: DecodeStepShape[] = [
      { batch: 4, sharedTokens: 128, privateTokens: 9 },
      { batch: 4, sharedTokens: 192, privateTokens: 9 },
      { batch: 3, sharedTokens: 128, privateTokens: 40 },
    ];
    const counted = [];
    for (const shape of shapes) {
      const c = await count(shape, 1);
      counted.push(c);
      const p1 = c.kernels.decode_phase1!;
      const p2 = c.kernels.decode_phase2!;
      // K and V, 2 B each, of the shared tokens (one KV head) / of every row's private tokens.
      expect(p1.bytes.kv).toBe(shape.sharedTokens * D * 2 * 2);
      expect(p2.bytes.kv).toBe(shape.batch * shape.privateTokens * D * 2 * 2);
      expect(p2.bytes.out).toBe(shape.batch * D * 2);
      expect(p1.ctas).toBe(c.splits.phase1Items * c.splits.phase1Splits);
      expect(p2.ctas).toBe(shape.batch * c.splits.phase2Splits);
    }
    // Another context, other counts: nothing here is a constant.
    expect(totalBytes(counted[1]!.kernels.decode_phase1!)).toBeGreaterThan(
      totalBytes(counted[0]!.kernels.decode_phase1!),
    );
    expect(counted[2]!.kernels.decode_phase2!.bytes).not.toEqual(counted[0]!.kernels.decode_phase2!.bytes);
  });

  test('linear in KV heads at equal split factors: counts at 2 heads = 2 x counts at 1 (two-phase, and split-KV with its merge)', async () => {
    for (const shape of [
      { batch: 4, sharedTokens: 128, privateTokens: 9 },
      { batch: 2, sharedTokens: 0, privateTokens: 300 },
    ]) {
      const ctx = splitContext(shape, 64);
      expect(splitFactors(withKvHeads(spec, 1), ctx, EMU_SM_COUNT)).toEqual(
        splitFactors(withKvHeads(spec, 2), ctx, EMU_SM_COUNT),
      );
      const one = await count(shape, 1);
      const two = await count(shape, 2);
      expect(unscaled(scaleCounts(one, 2))).toEqual(unscaled(two));
      expect(Object.keys(two.kernels).length).toBeGreaterThanOrEqual(2);
    }
    // The split-KV shape launches the merge: 3 splits of 300 tokens (>= 128 each).
    const split = await count({ batch: 2, sharedTokens: 0, privateTokens: 300 }, 1);
    expect(split.splits.phase2Splits).toBe(3);
    expect(split.kernels.decode_merge_splits?.ctas).toBe(2);
  });

  test('GQA: stacked rows past one m-tile make two phase-1 items, each reading the shared chunks once (grids checked against the split mirror)', async () => {
    const gqa = attention({
      name: 'ours-count-g4',
      heads: { q: 4, kv: 1 },
      headDim: D,
      dtype: 'f16',
      chunkSize: 64,
      targets: ['emu'],
    });
    // 40 sharers x G = 4 = 160 stacked rows: m-tiles of 128 and 32.
    const shape = { batch: 40, sharedTokens: 256, privateTokens: 9 };
    const c = await countDecodeStep(gqa, shape, 1, { cache: false });
    expect(c.splits.phase1Items).toBe(2);
    expect(c.kernels.decode_phase1!.bytes.kv).toBe(2 * 256 * D * 2 * 2);
    expect(c.kernels.decode_phase1!.ctas).toBe(2 * c.splits.phase1Splits);
  });

  test('the model launches carry the counted CTAs and bytes exactly', async () => {
    const shape = { batch: 4, sharedTokens: 192, privateTokens: 9 };
    const counts = await count(shape, 2);
    const launches = countedLaunches(spec, shape, counts, {
      decode_phase1: 1,
      decode_phase2: 4,
      decode_merge_splits: 8,
    });
    for (const launch of launches) {
      const k = counts.kernels[launch.kernel]!;
      expect(launch.blocks.reduce((n, g) => n + g.count, 0)).toBe(k.ctas);
      const bytes = launch.blocks.reduce((n, g) => n + g.count * g.work.bytes, 0);
      expect(bytes).toBeCloseTo(totalBytes(k), 6);
    }
  });
});

describe('scaling the heads down', () => {
  test('the split factors depend on the KV heads: the emulator head count reproduces the GPU\u2019s', () => {
    const row = TABLE3.find((r) => r.promptTokens === 4096 && r.sharedTokens === 4096)!;
    const ctx = splitContext(table3StepShape(row), 64);
    // A100 (108 SMs, two 4-warp phase-1 CTAs per SM at D = 128) at 32 KV heads: floor(216 / 32) =
    // 6 splits; the emulator plans for 108 SMs too, so it needs 216 / h >= 6 and < 7: h in 31..36.
    expect(splitFactors(TABLE3_SPEC, ctx, 108).phase1Splits).toBe(6);
    expect(emulatorKvHeads(TABLE3_SPEC, ctx, [108])).toBe(31);
    // H100 (132 SMs): floor(264 / 32) = 8, capped at 7 by the K/V a split must still read per
    // partial byte; that cap binds at any head count, so one KV head reproduces it.
    expect(splitFactors(TABLE3_SPEC, ctx, 132).phase1Splits).toBe(7);
    expect(emulatorKvHeads(TABLE3_SPEC, ctx, [132])).toBe(1);
    // No head count serves both.
    expect(emulatorKvHeads(TABLE3_SPEC, ctx, [108, 132])).toBeNull();
  });

  test('a GPU with fewer SMs than the emulator plans for is matched at more KV heads than the spec has', () => {
    // Llama-3-8B-like (32/8 heads), 16 rows reading 1024 tokens each, sequence-first, on an L4
    // (58 SMs): at 8 heads its phase-2 split needs more heads on the emulator's 108 SMs.
    const gqa = attention({
      name: 'gqa-8kv',
      heads: { q: 32, kv: 8 },
      headDim: D,
      dtype: 'bf16',
      chunkSize: 64,
      targets: ['emu'],
    });
    const ctx = splitContext({ batch: 16, sharedTokens: 0, privateTokens: 1024 }, 64);
    const heads = emulatorKvHeads(gqa, ctx, [58]);
    expect(heads).not.toBeNull();
    expect(heads!).toBeGreaterThan(8);
    expect(splitFactors(withKvHeads(gqa, heads!), ctx, EMU_SM_COUNT)).toEqual(splitFactors(gqa, ctx, 58));
    // Scaling down is the same arithmetic as up.
    const at = (h: number): StepCounts => ({
      kvHeads: h,
      emulatedKvHeads: h,
      splits: splitFactors(withKvHeads(gqa, h), ctx, EMU_SM_COUNT),
      kernels: {
        decode_phase2: {
          launches: 1,
          ctas: 16 * 2 * h,
          bytes: { q: 7 * h, kv: 9 * h, partial: 0, out: 3 * h, context: 0 },
        },
      },
    });
    expect(scaleCounts(at(heads!), 8).kernels).toEqual(at(8).kernels);
  });

  test('scaling refuses counts that are not whole per KV head', () => {
    const counts: StepCounts = {
      kvHeads: 2,
      emulatedKvHeads: 2,
      splits: { phase1Items: 0, phase1Splits: 1, phase2Splits: 1 },
      kernels: {
        decode_phase2: { launches: 1, ctas: 3, bytes: { q: 0, kv: 0, partial: 0, out: 0, context: 0 } },
      },
    };
    expect(() => scaleCounts(counts, 32)).toThrow(/not a whole number per KV head/);
  });
});
