// The tuner: search space and pruning, the three timers (the cuda one with injected fake CUDA
// events over a real cpu module), the float64 gate, the alternating confirmation and the DB write
// that dispatch then reads.

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { type CountedSource, countedSteps, ptxasOccupancy } from '../autotune/counted-step.ts';
import { readDb, userDbPath } from '../autotune/db.ts';
import { dbDispatchRules } from '../autotune/dispatch.ts';
import {
  type CountedKernel,
  type DecodeStepShape,
  type StepCounts,
  splitContext,
} from '../autotune/emu-counts.ts';
import { findGpu } from '../autotune/gpus.ts';
import {
  cudaEventClock,
  type DeviceEvents,
  hostClock,
  MeasuredTimer,
  ModelTimer,
  type Timer,
  type TuneShape,
  WrongResultError,
} from '../autotune/measure.ts';
import { predict } from '../autotune/model.ts';
import { constantsFor, loadModelParams } from '../autotune/model-params.ts';
import {
  candidate,
  combineWinners,
  constraintViolation,
  firstRound,
  SEQUENCE_FIRST_SHARERS,
} from '../autotune/space.ts';
import { EMU_SM_COUNT, splitFactors, withKvHeads } from '../autotune/split-factors.ts';
import { tune } from '../autotune/tune.ts';
import { parseShapes } from '../cli/commands/tune.ts';
import { buildModule, findToolchain } from '../codegen/index.ts';
import { attention } from '../dsl/index.ts';
import type { KernelSpec } from '../dsl/spec.ts';
import { gpuPresent, type ModuleLoader } from '../runtime/module-loader.ts';
import { runCli } from './cli-harness.ts';
import { tinySpec } from './specs.ts';

const spec = tinySpec('f16', 'plain', ['cpu']); // Hq 8, Hkv 2 (group 4), D 64, C 16
const SHAPE: TuneShape = { batch: 4, sharedTokens: 64, privateTokens: 20 };

describe('search space', () => {
  test('the first round is the defaults, each tunable moved alone, and the threshold', () => {
    const { candidates, pruned } = firstRound(spec, 'cpu', { cores: 4, threshold: true });
    expect(candidates[0]!.id).toBe('defaults');
    expect(candidates.map((c) => c.id)).toContain('cpu_tile_rows=32');
    expect(candidates.map((c) => c.id)).toContain('cpu_threads=3');
    expect(candidates.at(-1)).toMatchObject({ kernel: {}, minSharers: SEQUENCE_FIRST_SHARERS });
    expect(pruned).toEqual([]);
    // One core: no thread candidates.
    expect(firstRound(spec, 'cpu', { cores: 1 }).candidates.some((c) => 'cpu_threads' in c.kernel)).toBe(
      false,
    );
  });

  test('constraints prune before any build', () => {
    const wide = attention({
      name: 'g64',
      heads: { q: 64, kv: 1 },
      headDim: 64,
      dtype: 'f16',
      chunkSize: 16,
      targets: ['cpu'],
    });
    const { pruned } = firstRound(wide, 'cpu');
    expect(pruned.map((p) => p.id)).toEqual(['cpu_tile_rows=32']);
    expect(pruned[0]!.reason).toMatch(/group 64/);
    expect(constraintViolation(spec, 'cpu', { cpu_tile_rows: 32, cpu_direct_below: 48 })).toMatch(
      /no tile is ever that tall/,
    );
    expect(constraintViolation(spec, 'cpu', { cpu_tile_rows: 32, cpu_direct_below: 8 })).toBeNull();
  });

  test('the second round combines the best value of each improving tunable', () => {
    const t = (kernel: Record<string, number>, us: number, minSharers?: number) => ({
      candidate: candidate(kernel, minSharers),
      us,
    });
    const combined = combineWinners(spec, 'cpu', [
      t({}, 100),
      t({ cpu_tile_rows: 32 }, 90),
      t({ cpu_tile_rows: 128 }, 95),
      t({ cpu_prefetch: 0 }, 97),
      t({ cpu_direct_below: 8 }, 120),
    ]);
    expect(combined?.kernel).toEqual({ cpu_tile_rows: 32, cpu_prefetch: 0 });
    // Only one tunable improved: nothing new to try.
    expect(combineWinners(spec, 'cpu', [t({}, 100), t({ cpu_tile_rows: 32 }, 90)])).toBeNull();
  });

  test.skipIf(gpuPresent())('--measure on a GPU needs one: refused here, naming why', async () => {
    const result = await runCli(['tune', 'examples/llama2-7b.ts', '--gpu', 'a100', '--measure']);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toMatch(/CUDA events on this machine's GPU, and it has none/);
  });

  test('--shapes parses BATCHxSHARED[+PRIVATE]', () => {
    expect(parseShapes('32x2048+256, 8x0')).toEqual([
      { batch: 32, sharedTokens: 2048, privateTokens: 256 },
      { batch: 8, sharedTokens: 0, privateTokens: 256 },
    ]);
    expect(() => parseShapes('32by2048')).toThrow(/BATCHxSHARED/);
  });
});

/** Fake CUDA events: each record() stamps the next scripted time (ms) on the event. */
function fakeEvents(stampsMs: number[]) {
  const log: string[] = [];
  let live = 0;
  const events: DeviceEvents = {
    create: () => {
      live++;
      return { at: Number.NaN, synced: false };
    },
    record: (_module, event) => {
      const next = stampsMs.shift();
      if (next === undefined) throw new Error('no more scripted stamps');
      (event as { at: number }).at = next;
      log.push('record');
    },
    synchronize: (_module, event) => {
      (event as { synced: boolean }).synced = true;
      log.push('sync');
    },
    elapsedMs: (_module, start, stop) => {
      const [a, b] = [start as { at: number }, stop as { at: number; synced: boolean }];
      if (!b.synced) throw new Error('elapsed before the stop event completed');
      return b.at - a.at;
    },
    destroy: () => {
      live--;
    },
    clock: () => 'injected events',
  };
  return { events, log, live: () => live };
}

describe('timers', () => {
  test('the cuda timer reads CUDA events around each decode (fake events over a real cpu module), after the float64 check', async () => {
    // 7 timed reps: elapsed 1, 2, ..., 7 ms → median 4 ms.
    const stamps = [1, 2, 3, 4, 5, 6, 7].flatMap((d, i) => [i * 100, i * 100 + d]);
    const fake = fakeEvents(stamps);
    const timer = new MeasuredTimer({ spec, target: 'cpu', clock: cudaEventClock(fake.events), reps: 7 });
    try {
      expect(timer.kind).toBe('cuda');
      const timing = await timer.time(candidate({ cpu_tile_rows: 32 }), SHAPE);
      expect(timing.samplesUs).toEqual([1000, 2000, 3000, 4000, 5000, 6000, 7000]);
      expect(timing.us).toBe(4000);
      expect(timing.predicted).toBe(false);
      expect(timing.maxError).toBeLessThan(2e-3);
      expect(fake.log).toEqual(Array.from({ length: 7 }, () => ['record', 'record', 'sync']).flat());
      expect(fake.live()).toBe(0);
    } finally {
      timer.close();
    }
  });

  test('a candidate whose output is wrong is rejected, however fast', async () => {
    // An "instance" built with a score function the spec does not have (compiled in; the softmax
    // scale would not do, it is a call argument): same memory layout, wrong answers.
    const wrong = attention({
      name: 'e2e-f16-wrong-scores',
      heads: { q: 8, kv: 2 },
      headDim: 64,
      dtype: 'f16',
      chunkSize: 16,
      targets: ['cpu'],
      scoreMod: (s) => s * 0.25,
    });
    const loader: ModuleLoader = (s, target, tunables) =>
      buildModule(tunables && Object.keys(tunables).length ? wrong : s, {
        target,
        ...(tunables && { tunables }),
      });
    const timer = new MeasuredTimer({ spec, target: 'cpu', clock: hostClock, reps: 1, loader });
    try {
      await expect(timer.time(candidate({ cpu_prefetch: 0 }), SHAPE)).rejects.toThrow(WrongResultError);
      const fine = await timer.time(candidate({}), SHAPE);
      expect(fine.maxError).toBeLessThan(2e-3);
    } finally {
      timer.close();
    }
  });

  test('the model timer predicts from what its source counts and compiles: worse occupancy or more bytes is slower', async () => {
    const llama = attention({
      name: 'l',
      heads: { q: 32, kv: 32 },
      headDim: 128,
      dtype: 'f16',
      chunkSize: 64,
      targets: ['sm_80', 'emu'],
    });
    // Candidate {x: 1}: half the CTAs per SM of the defaults; {x: 2}: twice the bytes.
    const seen: string[] = [];
    const source: CountedSource = {
      occupancy: async (_spec, tunables, gpus) => {
        const scale = tunables['x'] === 1 ? 0.5 : 1;
        const ctas = { decode_phase1: 2 * scale, decode_phase2: 4 * scale, decode_merge_splits: 4 * scale };
        return new Map(gpus.map((g) => [g.id, ctas]));
      },
      counts: async (spec, tunables, shape, kvHeads) => {
        seen.push(
          `${JSON.stringify(tunables)} ${shape.batch}x${shape.sharedTokens}+${shape.privateTokens} ms=${shape.minSharers ?? 2}`,
        );
        return syntheticCounts(spec, shape, kvHeads, tunables['x'] === 2 ? 2 : 1);
      },
    };
    const timer = new ModelTimer(findGpu('a100-80'), llama, loadModelParams(), { source });
    const shape = { batch: 64, sharedTokens: 1024, privateTokens: 255 };
    const base = await timer.time(candidate({}), shape);
    const lessOccupancy = await timer.time(candidate({ x: 1 }), shape);
    const moreBytes = await timer.time(candidate({ x: 2 }), shape);
    const off = await timer.time(candidate({}, SEQUENCE_FIRST_SHARERS), shape);
    expect(base.predicted).toBe(true);
    expect(base.clock).toBe('model');
    // Bandwidth-bound (long contexts): twice the bytes is slower; fewer CTAs per SM never faster.
    expect(moreBytes.us).toBeGreaterThan(1.5 * base.us);
    expect(lessOccupancy.us).toBeGreaterThanOrEqual(base.us);
    // Latency-bound (a few tokens per row, many CTAs): half the CTAs per SM, twice the waves, slower.
    const short = { batch: 64, sharedTokens: 0, privateTokens: 15 };
    const shortBase = await timer.time(candidate({}), short);
    expect((await timer.time(candidate({ x: 1 }), short)).us).toBeGreaterThan(shortBase.us);
    expect(base.occupancy).toMatch(/^phase1 2\/SM, phase2 4\/SM/);
    expect(lessOccupancy.occupancy).toMatch(/^phase1 1\/SM, phase2 2\/SM/);
    // The step it asked for: the decoded token counted in, the threshold passed on when not the default.
    expect(seen).toContain('{} 64x1024+256 ms=2');
    expect(seen.some((s) => s.startsWith('{} 64x1024+256 ms=1073741824'))).toBe(true);
    expect(off.occupancy).toMatch(/^phase2 /);
    // Counts are asked once per instance, shape and head count.
    await timer.time(candidate({}), shape);
    expect(seen.filter((s) => s === '{} 64x1024+256 ms=2')).toHaveLength(1);
  });

  test('the model timer on the emulator and ptxas is the bench-model path: two-phase beats sequence-first on a long shared prefix', async (ctx) => {
    if (!(await findToolchain()).nvcc) ctx.skip();
    const small = attention({
      name: 'tune-model-small',
      heads: { q: 4, kv: 4 },
      headDim: 128,
      dtype: 'f16',
      chunkSize: 64,
      targets: ['sm_80', 'emu'],
    });
    const gpu = findGpu('a100-80');
    const params = loadModelParams();
    const timer = new ModelTimer(gpu, small, params);
    const shape = { batch: 16, sharedTokens: 1024, privateTokens: 63 };
    const two = await timer.time(candidate({}), shape);
    const off = await timer.time(candidate({}, SEQUENCE_FIRST_SHARERS), shape);
    expect(two.us).toBeLessThan(off.us);
    // The same numbers bench model computes for this instance and step.
    const occupancy = await ptxasOccupancy(small, [gpu]);
    const step = { batch: 16, sharedTokens: 1024, privateTokens: 64 };
    const counted = (await countedSteps(small, [gpu], step, { occupancy })).get(gpu.id)!;
    expect(two.us).toBe(
      predict(gpu, counted.launches, constantsFor(gpu, params.fitted, params.dramLatencyUs)).us,
    );
    const p1 = occupancy.get(gpu.id)!['decode_phase1'];
    expect(two.occupancy).toContain(`phase1 ${p1}/SM`);
    expect(off.occupancy).not.toContain('phase1');
  });
});

/** Counts shaped like the emulator's for a step (grids from the split mirror), `scale` × the bytes. */
function syntheticCounts(
  spec: KernelSpec,
  shape: DecodeStepShape,
  kvHeads: number,
  scale: number,
): StepCounts {
  const ctx = splitContext(shape, spec.chunkSize);
  const splits = splitFactors(withKvHeads(spec, kvHeads), ctx, EMU_SM_COUNT);
  const bytes = (kv: number, other: number) => ({
    q: other * kvHeads * scale,
    kv: kv * kvHeads * scale,
    partial: other * kvHeads * scale,
    out: other * kvHeads * scale,
    context: 64 * kvHeads,
  });
  const kernels: Record<string, CountedKernel> = {};
  const [run] = ctx.runs;
  if (run)
    kernels['decode_phase1'] = {
      launches: 1,
      ctas: splits.phase1Items * splits.phase1Splits * kvHeads,
      bytes: bytes(run.chunks * spec.chunkSize * spec.headDim * 4, 4096),
    };
  const rows = shape.batch * splits.phase2Splits;
  kernels['decode_phase2'] = {
    launches: 1,
    ctas: rows * kvHeads,
    bytes: bytes(shape.batch * ctx.maxRowTokens * spec.headDim * 4, 1024 * shape.batch),
  };
  if (splits.phase2Splits > 1)
    kernels['decode_merge_splits'] = {
      launches: 1,
      ctas: shape.batch * kvHeads,
      bytes: bytes(0, 2048 * shape.batch),
    };
  return { kvHeads, emulatedKvHeads: kvHeads, splits, kernels };
}

/** A timer with scripted times per candidate id (and which it saw). */
function scriptedTimer(times: Record<string, number[]>): Timer & { seen: string[] } {
  const seen: string[] = [];
  return {
    kind: 'cpu',
    seen,
    time: async (c) => {
      seen.push(c.id);
      const list = times[c.id] ?? [1000];
      const us = list.length > 1 ? list.shift()! : list[0]!;
      return { us, samplesUs: [us], maxError: 1e-4, predicted: false };
    },
    close: () => undefined,
  };
}

describe('tune()', () => {
  test('times every candidate, confirms the winner alternating, writes it where dispatch finds it', async () => {
    const cacheRoot = mkdtempSync(join(tmpdir(), 'chunkattn-tune-'));
    const timer = scriptedTimer({ defaults: [1000], 'cpu_tile_rows=32': [800], 'cpu_prefetch=0': [900] });
    const progress: number[] = [];
    const report = await tune({
      spec,
      gpu: 'cpu',
      target: 'cpu',
      timer,
      shapes: [SHAPE],
      confirmRounds: 4,
      write: 'user',
      cacheRoot,
      cores: 1,
      onProgress: (p) => progress.push(p.timed),
    });
    const [shape] = report.shapes;
    expect(shape!.winner?.candidate.id).toBe('cpu_tile_rows=32');
    // The second round tried both improving tunables together.
    expect(timer.seen).toContain('cpu_prefetch=0,cpu_tile_rows=32');
    expect(shape!.results.filter((r) => r.status === 'timed').length).toBeGreaterThanOrEqual(7);
    expect(shape!.confirmation?.rounds).toBe(4);
    expect(shape!.confirmation!.medianRatio).toBeLessThan(1);
    expect(shape!.confirmation).toMatchObject({ wins: 4, confirmed: true });
    // Alternating order: defaults first in even rounds, the winner first in odd ones.
    const confirm = timer.seen.slice(-8);
    expect(confirm.filter((_, i) => i % 4 === 0).every((id) => id === 'defaults')).toBe(true);
    expect(confirm.filter((_, i) => i % 4 === 2).every((id) => id !== 'defaults')).toBe(true);
    expect(Math.max(...progress)).toBe(timer.seen.length - 8);

    const db = readDb(userDbPath('cpu', cacheRoot), 'cpu');
    expect(db.entries).toHaveLength(1);
    expect(db.entries[0]!.source).toBe('measured');
    const rules = await dbDispatchRules(spec, 'cpu', { toolchain: await findToolchain(), cacheRoot });
    expect(rules!.choose({ batch: SHAPE.batch, sharedTokens: SHAPE.sharedTokens }).kernel).toEqual(
      shape!.winner!.candidate.kernel,
    );
  });

  test('a winner the alternating rounds do not confirm leaves the defaults in the DB', async () => {
    const cacheRoot = mkdtempSync(join(tmpdir(), 'chunkattn-tune-'));
    // Fast once in the search, slower than the defaults afterwards.
    const timer = scriptedTimer({ defaults: [1000], 'cpu_tile_rows=32': [500, 1200] });
    const report = await tune({
      spec,
      gpu: 'cpu',
      target: 'cpu',
      timer,
      shapes: [SHAPE],
      confirmRounds: 3,
      cacheRoot,
      cores: 1,
    });
    expect(report.shapes[0]!.winner?.candidate.id).toBe('cpu_tile_rows=32');
    expect(report.shapes[0]!.confirmation).toMatchObject({ wins: 0, confirmed: false });
    const [entry] = readDb(userDbPath('cpu', cacheRoot), 'cpu').entries;
    expect(entry!.tunables).toEqual({ min_sharers: 2 });
  });
});
