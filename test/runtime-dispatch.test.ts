// Runtime dispatch: the instance and two-phase threshold per decode call from the tuning rules,
// instances built at create only, the per-shape log, and the CHUNKATTN_TWO_PHASE=0 kill switch.
// Outputs are checked against float64 attention (NaN-poisoned) by the workload model.

import { afterEach, describe, expect, test, vi } from 'vitest';
import { currentMeta, type TuningDb, type TuningEntry, tuningKey } from '../autotune/db.ts';
import { dbDispatchRules, splitTunables } from '../autotune/dispatch.ts';
import { loadModelParams } from '../autotune/model-params.ts';
import { buildModule, findToolchain } from '../codegen/index.ts';
import type { KernelSpec } from '../dsl/spec.ts';
import { Attention } from '../index.ts';
import {
  type DispatchRules,
  type DispatchShape,
  type KernelTunables,
  sharedPrefixTokens,
  tunablesId,
  twoPhaseKilled,
} from '../runtime/dispatch.ts';
import { ContextPlanner } from '../runtime/kernel-context.ts';
import type { ModuleLoader } from '../runtime/module-loader.ts';
import { NativeModule } from '../runtime/native-module.ts';
import { PrefixTree } from '../runtime/prefix-tree.ts';
import { tinySpec } from './specs.ts';
import { Rng, runRandomWorkload, WorkloadModel } from './workload-model.ts';

const SEED = 0x5eed12;
const spec = tinySpec('f16', 'plain', ['cpu']); // Hq 8, Hkv 2, D 64, C 16

/** A loader that counts its builds (so a test sees none happen after create). */
function countingLoader() {
  const calls: KernelTunables[] = [];
  const loader: ModuleLoader = (s, target, tunables) => {
    calls.push(tunables ?? {});
    return buildModule(s, { target, ...(tunables && { tunables }) });
  };
  return { loader, calls };
}

const TUNED: KernelTunables = { cpu_tile_rows: 16, cpu_direct_below: 0, cpu_prefetch: 0, cpu_threads: 1 };

/** Rules: batches up to 2 run the tuned instance with threshold 3; the rest the defaults. */
function smallBatchRules(chosen: DispatchShape[]): DispatchRules {
  const small = (shape: DispatchShape) => shape.batch <= 2;
  return {
    instances: [TUNED, {}],
    bucket: (shape) => (small(shape) ? 'small' : 'large'),
    choose: (shape) => {
      chosen.push(shape);
      return small(shape)
        ? { kernel: TUNED, minSharers: 3, reason: 'test: small batch' }
        : { kernel: {}, minSharers: 2, reason: 'test: large batch' };
    },
  };
}

afterEach(() => {
  vi.unstubAllEnvs();
  vi.restoreAllMocks();
});

describe('dispatch on the cpu target', () => {
  test('picks the tuned instance per batch bucket, built at create only, outputs match float64', async () => {
    const { loader, calls } = countingLoader();
    const chosen: DispatchShape[] = [];
    const attn = await Attention.create(spec, {
      layers: 2,
      capacityTokens: 16 * 160,
      target: 'cpu',
      loader,
      dispatch: async () => smallBatchRules(chosen),
    });
    try {
      // The primary, then the tuned instance; the {} instance is the primary itself.
      expect(calls.map(tunablesId)).toEqual(['defaults', tunablesId(TUNED)]);
      const model = new WorkloadModel(attn, spec, new Rng(SEED));
      runRandomWorkload(model, 80);
      expect(model.decodes).toBeGreaterThan(10);
      expect(calls).toHaveLength(2); // nothing built on the hot path

      const decisions = attn.dispatcher.decisions();
      expect([...decisions.keys()].sort()).toEqual(['large', 'small']);
      const small = decisions.get('small')!;
      const large = decisions.get('large')!;
      expect(large.module).toBe(attn.module);
      expect(small.module).not.toBe(attn.module);
      expect(small.minSharers).toBe(3);
      expect(large.minSharers).toBe(2);
      // The instance's kernel header read the rendered tunables (ca_info reports Tune<Cfg>).
      expect(small.module.info.raw['tuned_cpu_tile_rows']).toBe(16);
      expect(small.module.info.raw['tuned_cpu_prefetch']).toBe(0);
      expect(attn.module.info.raw['tuned_cpu_tile_rows']).toBe(64);
      // choose ran once per bucket, however many calls.
      expect(chosen).toHaveLength(2);
    } finally {
      attn.close();
    }
  });

  test('CHUNKATTN_LOG=dispatch logs each decision once per bucket', async () => {
    vi.stubEnv('CHUNKATTN_LOG', 'dispatch');
    const lines: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      lines.push(String(chunk));
      return true;
    });
    const attn = await Attention.create(spec, {
      layers: 2,
      capacityTokens: 16 * 160,
      target: 'cpu',
      loader: countingLoader().loader,
      dispatch: async () => smallBatchRules([]),
    });
    let buckets: string[];
    try {
      const model = new WorkloadModel(attn, spec, new Rng(SEED));
      runRandomWorkload(model, 80);
      expect(model.decodes).toBeGreaterThan(10);
      buckets = [...attn.dispatcher.decisions().keys()].sort();
    } finally {
      attn.close();
      vi.restoreAllMocks();
    }
    expect(buckets).toEqual(['large', 'small']);
    // One line per bucket, although every layer of every step decoded.
    const decisions = lines.filter((l) => l.includes('chunkattn dispatch:') && l.includes('→'));
    expect(decisions).toHaveLength(2);
    expect(decisions.some((l) => l.includes(' small ') && l.includes('min_sharers=3'))).toBe(true);
    expect(decisions.some((l) => l.includes(' large ') && l.includes('min_sharers=2'))).toBe(true);
    expect(lines.some((l) => l.includes('prebuilt 1 tuned instance'))).toBe(true);
  });

  test('CHUNKATTN_TWO_PHASE=0 forces sequence-first: no phase 1, no rules consulted, same results', async () => {
    vi.stubEnv('CHUNKATTN_TWO_PHASE', '0');
    expect(twoPhaseKilled()).toBe(true);
    const { loader, calls } = countingLoader();
    let consulted = 0;
    const attn = await Attention.create(spec, {
      layers: 1,
      capacityTokens: 16 * 160,
      target: 'cpu',
      mode: 'two-phase',
      loader,
      dispatch: async () => {
        consulted++;
        return smallBatchRules([]);
      },
    });
    try {
      expect(attn.mode).toBe('sequence-first');
      expect(consulted).toBe(0);
      expect(calls).toHaveLength(1);
      attn.module.resetStats();
      const model = new WorkloadModel(attn, spec, new Rng(SEED + 2));
      runRandomWorkload(model, 60);
      expect(model.decodes).toBeGreaterThan(10);
      const kernels = attn.module.stats().kernels;
      expect(kernels['cpu_phase2']?.launches).toBeGreaterThan(0);
      expect(kernels['cpu_phase1']).toBeUndefined();
      expect(attn.context().numRuns).toBe(0);
    } finally {
      attn.close();
    }
    // Without the switch the same workload runs phase 1 (so the check above can fail).
    vi.stubEnv('CHUNKATTN_TWO_PHASE', '1');
    const control = await Attention.create(spec, {
      layers: 1,
      capacityTokens: 16 * 160,
      target: 'cpu',
      dispatch: false,
    });
    try {
      expect(control.mode).toBe('two-phase');
      control.module.resetStats();
      runRandomWorkload(new WorkloadModel(control, spec, new Rng(SEED + 2)), 60);
      expect(control.module.stats().kernels['cpu_phase1']?.launches).toBeGreaterThan(0);
    } finally {
      control.close();
    }
  });

  test("an instance decodes over the primary's pool only once linked, and only with the same layout", async () => {
    const primary = NativeModule.load((await buildModule(spec, { target: 'cpu' })).libraryPath);
    const tuned = NativeModule.load(
      (await buildModule(spec, { target: 'cpu', tunables: { cpu_tile_rows: 16 } })).libraryPath,
    );
    const other = NativeModule.load(
      (await buildModule(tinySpec('bf16', 'plain', ['cpu']), { target: 'cpu' })).libraryPath,
    );
    const pool = primary.allocPool(4);
    const tree = new PrefixTree({
      chunkSize: spec.chunkSize,
      maxCapacity: 4,
      initialCapacity: 4,
      kvLayers: 1,
    });
    const { seq } = tree.insert([1, 2, 3]);
    try {
      const args = {
        q: new Uint16Array(spec.heads.q * spec.headDim),
        out: new Uint16Array(spec.heads.q * spec.headDim),
        context: new ContextPlanner().plan(tree.context(), Int32Array.of(seq)),
        params: new Float32Array(0),
        softmaxScale: spec.softmaxScale,
      };
      const foreign = (() => tuned.decode(pool, args)) as () => void;
      expect(foreign).toThrow(/another module/);
      tuned.shareMemoryWith(primary);
      expect(foreign).not.toThrow();
      expect(() => other.shareMemoryWith(primary)).toThrow(/another target or KV layout/);
    } finally {
      primary.free(pool);
    }
  });

  test('sharedPrefixTokens counts the leading chunks shared with another sequence', async () => {
    const attn = await Attention.create(spec, {
      layers: 1,
      capacityTokens: 16 * 64,
      target: 'cpu',
      dispatch: false,
    });
    try {
      const model = new WorkloadModel(attn, spec, new Rng(SEED)); // inserts write every layer's K/V
      const prompt = Array.from({ length: 40 }, (_, i) => i); // 2 full chunks + 8 tokens
      const a = model.insert(prompt);
      expect(sharedPrefixTokens(attn.cache, [a])).toBe(0);
      const b = model.insert([...prompt.slice(0, 32), 99, 98]);
      expect(sharedPrefixTokens(attn.cache, [a])).toBe(32);
      expect(sharedPrefixTokens(attn.cache, [a, b])).toBe(32);
    } finally {
      attn.close();
    }
  });
});

describe('DB-backed rules (autotune/dispatch.ts)', () => {
  async function fixture() {
    const toolchain = await findToolchain();
    const meta = currentMeta('cpu', toolchain, loadModelParams().modelVersion);
    const entry = (
      batch: number,
      sharedTokens: number,
      source: 'model' | 'measured',
      tunables: Record<string, number>,
      s: KernelSpec = spec,
    ): TuningEntry => ({
      key: tuningKey({
        gpu: 'cpu',
        headDim: s.headDim,
        dtype: s.dtype,
        heads: s.heads,
        chunkSize: s.chunkSize,
        batch,
        sharedTokens,
      }),
      source,
      tunables,
      predictedUs: null,
      measuredUs: source === 'measured' ? 10 : null,
      meta,
      at: '2026-01-01T00:00:00.000Z',
    });
    return { toolchain, meta, entry };
  }

  test('measured beats model, user beats shipped, nearest bucket fills the gaps, stale and foreign entries are ignored', async () => {
    const { toolchain, meta, entry } = await fixture();
    const shipped: TuningDb = {
      format: 1,
      gpu: 'cpu',
      entries: [
        entry(32, 1024, 'model', { cpu_tile_rows: 32, min_sharers: 4 }),
        entry(32, 1024, 'measured', { cpu_tile_rows: 128 }),
        entry(1, 0, 'measured', { cpu_threads: 1 }),
        // another head dim: not this kernel
        entry(4, 0, 'measured', { cpu_tile_rows: 16 }, { ...spec, headDim: 128 }),
        // a value the tunable does not have: made for another version, ignored
        entry(4, 0, 'measured', { cpu_tile_rows: 7 }),
        // stale: another chunkattn version
        { ...entry(8, 0, 'measured', { cpu_tile_rows: 16 }), meta: { ...meta, chunkattn: '0.0.1' } },
      ],
    };
    const user: TuningDb = { format: 1, gpu: 'cpu', entries: [entry(1, 0, 'measured', { cpu_threads: 2 })] };
    const rules = await dbDispatchRules(spec, 'cpu', { toolchain, dbs: { shipped, user } });
    expect(rules).not.toBeNull();
    const r = rules!;
    expect(r.choose({ batch: 20, sharedTokens: 600 })).toMatchObject({
      kernel: { cpu_tile_rows: 128 },
      minSharers: 2,
    });
    expect(r.choose({ batch: 1, sharedTokens: 0 })).toMatchObject({ kernel: { cpu_threads: 2 } });
    expect(r.choose({ batch: 1, sharedTokens: 0 }).reason).toMatch(/measured \(user DB/);
    // b8 s0 has only a stale entry: the nearest tuned bucket is b1 s0 (3 steps) before b32 s1024.
    expect(r.choose({ batch: 8, sharedTokens: 0 })).toMatchObject({ kernel: { cpu_threads: 2 } });
    expect(r.choose({ batch: 8, sharedTokens: 0 }).reason).toMatch(/^nearest tuned bucket/);
    expect(r.bucket({ batch: 20, sharedTokens: 600 })).toBe('b32 s1024');
    expect(r.instances.map(tunablesId).sort()).toEqual(['cpu_threads=2', 'cpu_tile_rows=128']);
    // Model entries carry the threshold through.
    const modelOnly = await dbDispatchRules(spec, 'cpu', {
      toolchain,
      dbs: { shipped: { ...shipped, entries: [shipped.entries[0]!] } },
    });
    expect(modelOnly!.choose({ batch: 32, sharedTokens: 1024 })).toMatchObject({
      kernel: { cpu_tile_rows: 32 },
      minSharers: 4,
    });
  });

  test('no fresh entry for the kernel, the emu target, or cuda without a GPU name: no rules', async () => {
    const { toolchain } = await fixture();
    expect(await dbDispatchRules(spec, 'cpu', { toolchain, dbs: {} })).toBeNull();
    expect(await dbDispatchRules(spec, 'emu', { toolchain, dbs: {} })).toBeNull();
    vi.stubEnv('CHUNKATTN_GPU', '');
    expect(await dbDispatchRules(spec, 'cuda', { toolchain, dbs: {} })).toBeNull();
  });

  test('splitTunables keeps kernel tunables that differ from their defaults and the threshold', () => {
    expect(splitTunables(spec, 'cpu', { cpu_tile_rows: 64, cpu_prefetch: 1, min_sharers: 8 })).toEqual({
      kernel: { cpu_prefetch: 1 },
      minSharers: 8,
    });
    expect(splitTunables(spec, 'cpu', { no_such_tunable: 1 })).toBeNull();
    expect(splitTunables(spec, 'cpu', { min_sharers: 0 })).toBeNull();
  });
});
