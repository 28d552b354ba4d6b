// The tuner: search space and pruning, the three timers (the cuda one with injected fake CUDA
// events over a real cpu module), the float64 gate, the alternating confirmation and the DB write
// that dispatch then reads.

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { readDb, userDbPath } from '../autotune/db.ts';
import { dbDispatchRules } from '../autotune/dispatch.ts';
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
import { loadModelParams } from '../autotune/model-params.ts';
import {
  candidate,
  combineWinners,
  constraintViolation,
  firstRound,
  SEQUENCE_FIRST_SHARERS,
} from '../autotune/space.ts';
import { tune } from '../autotune/tune.ts';
import { parseShapes } from '../cli/commands/tune.ts';
import { buildModule, findToolchain } from '../codegen/index.ts';
import { attention } from '../dsl/index.ts';
import type { ModuleLoader } from '../runtime/module-loader.ts';
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
    elapsedMs: (start, stop) => {
      const [a, b] = [start as { at: number }, stop as { at: number; synced: boolean }];
      if (!b.synced) throw new Error('elapsed before the stop event completed');
      return b.at - a.at;
    },
    destroy: () => {
      live--;
    },
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

  test('the model timer predicts, and two-phase beats sequence-first on a long shared prefix', async () => {
    const llama = attention({
      name: 'l',
      heads: { q: 32, kv: 32 },
      headDim: 128,
      dtype: 'f16',
      chunkSize: 64,
      targets: ['cpu'],
    });
    const timer = new ModelTimer(findGpu('a100-80'), llama, loadModelParams());
    const shape = { batch: 32, sharedTokens: 2048, privateTokens: 256 };
    const two = await timer.time(candidate({}), shape);
    const off = await timer.time(candidate({}, SEQUENCE_FIRST_SHARERS), shape);
    expect(two.predicted).toBe(true);
    expect(two.us).toBeLessThan(off.us);
    expect(two.occupancy).toMatch(/phase1 \d+\/SM, phase2 \d+\/SM/);
    expect(off.occupancy).toMatch(/^phase2 \d+\/SM$/);
  });
});

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
