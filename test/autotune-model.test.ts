import { describe, expect, test } from 'vitest';
import { designLaunches, phase1Splits } from '../autotune/design-kernels.ts';
import { fitModel } from '../autotune/fit.ts';
import { GPUS, type GpuSpec } from '../autotune/gpus.ts';
import { type BlockWork, type ModelConstants, predict, predictLaunch } from '../autotune/model.ts';
import { loadModelParams } from '../autotune/model-params.ts';
import {
  chunkAttnLaunches,
  pagedAttnLaunches,
  TABLE3,
  type Table3Row,
  uniqueKvBytes,
} from '../autotune/paper-kernels.ts';
import { runModelBench } from '../bench/model.ts';
import { haveNvcc } from '../runtime/cucpu/tools/test-harness.ts';
import { runCli } from './cli-harness.ts';

// A toy GPU with round numbers: 2 SMs, 1 GB/s, 1 TFLOPS tensor and CUDA-core peaks.
const TOY: GpuSpec = { ...GPUS['a100-80'], sms: 2, dramGBs: 1, fp16TensorTflops: 1, fp32Tflops: 1 };
const CONSTANTS: ModelConstants = { eta: 0.5, launchOverheadUs: 3, dramLatencyUs: 1 };
const work = (overrides: Partial<BlockWork>): BlockWork => ({
  bytes: 0,
  tensorFlops: 0,
  cudaFlops: 0,
  dependentSteps: 0,
  ...overrides,
});

describe('the wave model (hand-computed on a toy GPU)', () => {
  test('memory-bound: 10 blocks over 4 slots run in waves of 4, 4, 2', () => {
    // eta x BW = 0.5e9 B/s. A wave of 4: each block gets 1/4 -> 1000 B / 1.25e8 = 8 µs.
    // A wave of 2: 1000 / 2.5e8 = 4 µs. 8 + 8 + 4 + 3 µs overhead = 23 µs.
    const p = predictLaunch(
      TOY,
      { kernel: 'k', blocks: [{ count: 10, work: work({ bytes: 1000 }) }], ctasPerSm: 2 },
      CONSTANTS,
    );
    expect(p).toMatchObject({ ctas: 10, waves: 3, bytes: 10_000, bound: 'memory' });
    expect(p.us).toBeCloseTo(23, 9);
  });

  test('a latency chain bounds a small wave', () => {
    // 6 dependent steps x 1 µs = 6 µs: waves max(8, 6), max(8, 6), max(4, 6) = 22 µs + 3.
    const p = predictLaunch(
      TOY,
      { kernel: 'k', blocks: [{ count: 10, work: work({ bytes: 1000, dependentSteps: 6 }) }], ctasPerSm: 2 },
      CONSTANTS,
    );
    expect(p.us).toBeCloseTo(25, 9);
    expect(p.bound).toBe('memory');
  });

  test('compute: a block gets the share of its SM', () => {
    // Wave of 4 on 2 SMs: 2 blocks per SM -> 1/4 of 1e12 -> 1e7 FLOP / 2.5e11 = 40 µs.
    // Wave of 2: one per SM -> 1/2 -> 20 µs. 40 + 40 + 20 + 3 = 103 µs. CUDA-core FLOPs add.
    const launch = (w: BlockWork) => ({ kernel: 'k', blocks: [{ count: 10, work: w }], ctasPerSm: 2 });
    const tensor = predictLaunch(TOY, launch(work({ tensorFlops: 1e7 })), CONSTANTS);
    expect(tensor.us).toBeCloseTo(103, 9);
    expect(tensor.bound).toBe('compute');
    expect(predictLaunch(TOY, launch(work({ tensorFlops: 5e6, cudaFlops: 5e6 })), CONSTANTS).us).toBeCloseTo(
      103,
      9,
    );
  });

  test('mixed blocks: a wave lasts as long as its slowest block, in launch order', () => {
    // Slots 4: wave 1 = 3 small + 1 big, wave 2 = 1 big alone.
    // Big: 4000 B; in a wave of 4 -> 4000 / 1.25e8 = 32 µs; alone -> 4000 / 5e8 = 8 µs.
    const p = predictLaunch(
      TOY,
      {
        kernel: 'k',
        blocks: [
          { count: 3, work: work({ bytes: 100 }) },
          { count: 2, work: work({ bytes: 4000 }) },
        ],
        ctasPerSm: 2,
      },
      CONSTANTS,
    );
    expect(p.waves).toBe(2);
    expect(p.us).toBeCloseTo(32 + 8 + 3, 9);
  });

  test('each launch pays the overhead; launches without CTAs are not launched', () => {
    const one = { kernel: 'a', blocks: [{ count: 4, work: work({ bytes: 1000 }) }], ctasPerSm: 2 };
    const empty = { kernel: 'b', blocks: [{ count: 0, work: work({}) }], ctasPerSm: 2 };
    const p = predict(TOY, [one, one, empty], CONSTANTS);
    expect(p.launches.map((l) => l.kernel)).toEqual(['a', 'a']);
    expect(p.us).toBeCloseTo(2 * (8 + 3), 9);
  });

  test('a kernel that fits no CTA on an SM is an error, not a time', () => {
    expect(() => predictLaunch(TOY, { kernel: 'k', blocks: [], ctasPerSm: 0 }, CONSTANTS)).toThrow(
      /0 CTAs per SM cannot run/,
    );
  });
});

describe('the paper kernels, counted', () => {
  const a100 = GPUS['a100-80'];
  const row = (np: number, ns: number): Table3Row =>
    TABLE3.find((r) => r.promptTokens === np && r.sharedTokens === ns)!;

  test('PagedAttn: one CTA per (head, sequence) reading its whole context', () => {
    const [launch] = pagedAttnLaunches(a100, row(1024, 0));
    // K and V: 2 x 1024 x 128 x 2 B = 524288; q + out 512; page table twice (64 pages x 4 B x 2)
    // = 512; context length 4. Steps: q, then 16 pages per warp x (table + K) and again for V.
    expect(launch!.blocks).toEqual([
      {
        count: 1024,
        work: { bytes: 525316, tensorFlops: 0, cudaFlops: 4 * 1024 * 128 + 5 * 1024, dependentSteps: 65 },
      },
    ]);
    // 64 registers -> 8 CTAs/SM (register-limited), as assumed.
    expect(launch!.ctasPerSm).toBe(8);
  });

  test('ChunkAttn phase 1 reads each shared chunk once per head: its K/V bytes are the unique bytes', () => {
    for (const r of TABLE3.filter((t) => t.sharedTokens === t.promptTokens)) {
      const [phase1] = chunkAttnLaunches(a100, r);
      const count = phase1!.blocks[0]!.count;
      expect(count).toBe(32 * (r.sharedTokens / 64));
      expect(count * 2 * 64 * 128 * 2).toBe(uniqueKvBytes(r));
    }
  });

  test('ChunkAttn occupancy and critical paths follow the reference structure', () => {
    const [phase1, phase2] = chunkAttnLaunches(a100, row(1024, 1024));
    // 4 CTAs/SM for phase 1, 2 for phase 2 on A100 (KERNELS.md).
    expect([phase1!.ctasPerSm, phase2!.ctasPerSm]).toEqual([4, 2]);
    // 16 shared partials over 4 warps: 4 x 2 round trips, + chunk list and q = 10.
    expect(phase2!.blocks[0]!.work.dependentSteps).toBe(10);
    // 64 private chunks: 16 per warp x 12 + 2 = 194; no phase-1 CTAs.
    const [unshared1, unshared2] = chunkAttnLaunches(a100, row(4096, 0));
    expect(unshared1!.blocks[0]!.count).toBe(0);
    expect(unshared2!.blocks[0]!.work.dependentSteps).toBe(194);
  });
});

describe('our two-phase design, counted', () => {
  test('phase 1 splits the run to fill one wave and still reads each shared chunk once per head', () => {
    for (const [id, occupancies, splits] of [
      // A100: phase 1 2 CTAs/SM -> 216 slots / 32 heads = 6 splits; phase 2 4 CTAs/SM.
      ['a100-80', [2, 4], 6],
      // H100: 3 CTAs/SM -> 396 / 32 = 12, capped at 8; phase 2 6 CTAs/SM.
      ['h100-sxm', [3, 6], 8],
    ] as const) {
      const gpu = GPUS[id];
      const row = TABLE3.find((r) => r.promptTokens === 4096 && r.sharedTokens === 4096)!;
      const [phase1, phase2] = designLaunches(gpu, row);
      expect([phase1!.ctasPerSm, phase2!.ctasPerSm]).toEqual(occupancies);
      expect(phase1!.blocks).toHaveLength(splits);
      expect(phase1Splits(gpu, phase1!.ctasPerSm, 32, 64)).toBe(splits);
      // K/V bytes of all phase-1 CTAs = the unique shared bytes: subtract the per-CTA extras.
      const extras = (chunks: number) => 24 + chunks * 4 + 32 * 4 + 32 * 128 * 2 + 32 * (128 * 4 + 4);
      const kv = phase1!.blocks.reduce(
        (sum, g) => sum + g.count * (g.work.bytes - extras(g.work.dependentSteps - 2)),
        0,
      );
      expect(kv).toBe(uniqueKvBytes(row));
    }
  });
});

describe('the fit', () => {
  const params = loadModelParams();

  test('the committed parameters are the fit script\u2019s result', () => {
    const fit = fitModel(params.dramLatencyUs);
    expect(fit.fitted).toEqual(params.fitted);
    expect(fit.points).toEqual(params.fit.points);
  });

  test('at most 3 fitted constants, fitted on the four unshared points only, within 15%', () => {
    expect(Object.keys(params.fitted).length).toBeLessThanOrEqual(3);
    expect(params.fit.points).toHaveLength(4);
    expect(params.fit.points.every((p) => p.sharedTokens === 0)).toBe(true);
    expect(params.fit.maxRelativeError).toBeLessThanOrEqual(0.15);
  });
});

describe('bench model', () => {
  test('the report: fitted constants, unshared error within 15%, shared predictions, H100 labelled prediction only', {
    timeout: 900_000,
  }, async () => {
    const report = await runModelBench({ quick: true, progress: () => {} });
    const json = report.json as {
      predictionNotMeasurement: boolean;
      unsharedMaxError: number;
      fittedConstants: unknown;
      sharedPredictedUs: {
        sharedTokens: number;
        chunkAttn: number;
        paperChunkAttn: number;
        ours: number | null;
        oursDesign: number;
      }[];
      oursSource: string;
      a100: {
        rows: {
          sharedTokens: number;
          ours: { emulatedKvHeads: number; launches: { kernel: string; countedBytes: unknown }[] } | null;
        }[];
      };
      h100: { label: string; sharedPredictedUs: { paperChunkAttn: number | null }[] };
    };
    expect(json.predictionNotMeasurement).toBe(true);
    expect(json.unsharedMaxError).toBeLessThanOrEqual(0.15);
    expect(json.fittedConstants).toEqual(loadModelParams().fitted);
    expect(json.sharedPredictedUs.map((r) => r.sharedTokens)).toEqual([1024, 2048, 4096]);
    expect(json.sharedPredictedUs.map((r) => r.paperChunkAttn)).toEqual([56.0, 110.5, 206.2]);
    expect(json.sharedPredictedUs.every((r) => r.oursDesign > 0)).toBe(true);
    if (haveNvcc) {
      // Our kernels from emulator counts and ptxas: a prediction per shared row, with its counts.
      expect(json.oursSource).toMatch(/^emulator counts/);
      expect(json.sharedPredictedUs.every((r) => r.ours !== null && r.ours > 0)).toBe(true);
      const shared = json.a100.rows.filter((r) => r.sharedTokens > 0);
      for (const r of shared) {
        expect(r.ours!.launches.map((l) => l.kernel)).toEqual(['decode_phase1', 'decode_phase2']);
        expect(r.ours!.launches.every((l) => l.countedBytes !== undefined)).toBe(true);
      }
      // --quick counts the shared rows only.
      expect(json.a100.rows.filter((r) => r.sharedTokens === 0).every((r) => r.ours === null)).toBe(true);
    } else {
      expect(json.oursSource).toMatch(/^not counted: nvcc not found/);
    }
    expect(json.h100.label).toMatch(/^prediction only/);
    expect(json.h100.sharedPredictedUs.every((r) => r.paperChunkAttn === null)).toBe(true);
    // Every table row says whether it is a fit point or a prediction.
    expect(report.rows.map((r) => r[2])).toEqual([
      'fit',
      'prediction',
      'prediction',
      'fit',
      'prediction',
      ...Array(5).fill('prediction only'),
    ]);
  });

  test('`chunkattn bench model --quick --json` prints the JSON object last', {
    timeout: 900_000,
  }, async () => {
    const result = await runCli(['bench', 'model', '--quick', '--json']);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.json).toMatchObject({ report: 'model', predictionNotMeasurement: true });
    expect(result.stderr).toMatch(/NOT a measurement/);
  });
});
