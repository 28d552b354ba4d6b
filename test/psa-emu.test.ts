// PSA on the emu target (chunkattn/chunk_meta.cuh, chunkattn/select.cuh) against the cpu target
// (chunkattn/cpu/chunk_meta.h, chunkattn/cpu/select.h), one spec built for both, over random
// prefix trees, queries and options (fast-check):
//   - emu metadata equals cpu metadata within float tolerance;
//   - the emu select list equals the cpu select list, ties aside, and both equal a float64
//     reference of the rule on the same metadata;
//   - a tied (row, KV head) still keeps its forced chunks and the [kMin, kMax] clamp.
//
// Ties, precisely. The two selects sum floats in different orders, so a decision whose float64
// margin is below rounding may go either way. A (row, KV head) is tied when, in float64 on the
// same inputs (the cpu metadata, the stored K and Q), one of its decisions has a margin below
// DELTA_LOG (log scale) or DELTA_MASS (a fraction of a head's estimated mass):
//   - a head's threshold: with the free chunks in decreasing ℓ and c_k the coverage (forced +
//     the first k free) over the total, the crossing k* (first c ≥ mass) has |c_{k*} − mass| or
//     |c_{k*−1} − mass| < DELTA_MASS, or ℓ of chunk k* and of the next one differ by < DELTA_LOG
//     (also: the forced coverage alone within DELTA_MASS of mass);
//   - a top-k (the safety net by Quest bound, the kMin / kMax clamps by best log π): the k-th
//     and (k+1)-th largest keys of the eligible chunks differ by < DELTA_LOG.
// Untied (row, KV head)s must agree exactly; the test also requires most of them to be untied,
// so it cannot pass on ties alone.

import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildModule } from '../codegen/index.ts';
import { ioRowMap, type KernelContext, packContext } from '../runtime/kernel-context.ts';
import { fromHost, type Rng, seededRng, shuffle, toHost } from '../runtime/native/fixtures/testing.ts';
import type { DeviceTensor, KvPool } from '../runtime/native-module.ts';
import { NativeModule } from '../runtime/native-module.ts';
import { PrefixTree } from '../runtime/prefix-tree.ts';
import { tinySpec } from './specs.ts';

const SEED = Number(process.env.CHUNKATTN_SEED ?? Math.floor(Math.random() * 2 ** 31));
const SPEC = tinySpec('f16', 'plain', ['cpu', 'emu']);
const C = 16;
const D = 64;
const HQ = 8;
const HKV = 2;
const G = HQ / HKV;
const SCALE = 0.125;
const SLOTS = 64;
const META = 4;
const DELTA_LOG = 2e-3;
const DELTA_MASS = 2e-4;

let cpu: NativeModule;
let emu: NativeModule;
let pools: { cpu: KvPool; emu: KvPool };
let metas: { cpu: DeviceTensor; emu: DeviceTensor };
const tally = { pairs: 0, sparse: 0, tied: 0, differing: 0 };

beforeAll(async () => {
  const [builtCpu, builtEmu] = await Promise.all([
    buildModule(SPEC, { target: 'cpu' }),
    buildModule(SPEC, { target: 'emu' }),
  ]);
  cpu = NativeModule.load(builtCpu.libraryPath);
  emu = NativeModule.load(builtEmu.libraryPath);
  pools = { cpu: cpu.allocPool(SLOTS), emu: emu.allocPool(SLOTS) };
  const elems = SLOTS * HKV * META * D;
  metas = { cpu: cpu.allocTensor('f16', elems), emu: emu.allocTensor('f16', elems) };
}, 600_000);

afterAll(() => {
  cpu?.freeTensor(metas.cpu);
  emu?.freeTensor(metas.emu);
  cpu?.free(pools.cpu);
  emu?.free(pools.emu);
});

/** K and V of a token: a function of its id and position; chunks lean toward a few directions. */
function kvOf(token: number, position: number): { k: Float32Array; v: Float32Array } {
  const r = seededRng(token * 7919 + position * 104729 + 17);
  const dir = seededRng(1000 + (Math.floor(position / C) % 5));
  const lean = Math.floor(position / C) % 3 === 0 ? 2 : 0.3;
  const k = new Float32Array(HKV * D);
  const v = new Float32Array(HKV * D);
  for (let i = 0; i < HKV * D; i++) {
    k[i] = (dir() * 2 - 1) * lean + (r() * 2 - 1);
    v[i] = r() * 2 - 1;
  }
  return { k, v };
}

interface Options {
  mass: number;
  kMin: number;
  kMax: number;
  recent: number;
  safetyNet: number;
  box: boolean;
  denseBelow: number;
}

function config(o: Options, maxChunks: number): Float64Array {
  return Float64Array.from([
    o.mass,
    o.kMin,
    o.kMax,
    o.recent,
    o.safetyNet,
    o.box ? 1 : 0,
    o.denseBelow,
    0,
    maxChunks,
  ]);
}

/** Indices of the k largest values among `eligible`, ties to the lower index; tied: a near tie at k. */
function topK(values: Float64Array, eligible: boolean[], k: number): { chosen: number[]; tied: boolean } {
  const idx = [...values.keys()].filter((j) => eligible[j]);
  if (k <= 0) return { chosen: [], tied: false };
  if (idx.length <= k) return { chosen: idx, tied: false };
  idx.sort((a, b) => values[b]! - values[a]! || a - b);
  return { chosen: idx.slice(0, k), tied: values[idx[k - 1]!]! - values[idx[k]!]! < DELTA_LOG };
}

/**
 * The select rule in float64 (PSA.md; chunkattn/cpu/select.h) for one (row, KV head): ell [G][n]
 * estimated log-mass (the tail's exact), bound [n] Quest bounds (-inf for the tail).
 */
function referenceSelect(
  ell: Float64Array[],
  bound: Float64Array,
  o: Options,
): { sel: boolean[]; tied: boolean } {
  const n = bound.length;
  const forced = Array.from({ length: n }, (_, j) => j === 0 || j >= n - o.recent || j === n - 1);
  const sel = [...forced];
  if (Math.fround(o.mass) >= 1 || n === 1) return { sel: sel.fill(true), tied: false };
  let tied = false;
  const best = new Float64Array(n).fill(Number.NEGATIVE_INFINITY);
  const add = new Array<boolean>(n).fill(false);
  const mass = Math.fround(o.mass);
  for (const e of ell) {
    const mx = Math.max(...e);
    const w = e.map((x) => Math.exp(x - mx));
    const total = w.reduce((s, x) => s + x, 0);
    const logTotal = mx + Math.log(total);
    for (let j = 0; j < n; j++) best[j] = Math.max(best[j]!, e[j]! - logTotal);
    let cum = 0;
    for (let j = 0; j < n; j++) if (forced[j]) cum += w[j]!;
    if (Math.abs(cum / total - mass) < DELTA_MASS) tied = true;
    if (cum / total >= mass) continue;
    const free = [...e.keys()].filter((j) => !forced[j]).sort((a, b) => e[b]! - e[a]! || a - b);
    let k = 0;
    for (; k < free.length; k++) {
      const before = cum;
      cum += w[free[k]!]!;
      if (cum / total >= mass) {
        if (cum / total - mass < DELTA_MASS || mass - before / total < DELTA_MASS) tied = true;
        if (k + 1 < free.length && e[free[k]!]! - e[free[k + 1]!]! < DELTA_LOG) tied = true;
        break;
      }
    }
    if (k === free.length && mass - cum / total < DELTA_MASS) tied = true;
    for (let i = 0; i <= k && i < free.length; i++) add[free[i]!] = true;
  }
  for (let j = 0; j < n; j++) sel[j] = sel[j]! || add[j]!;
  const freeCount = forced.filter((f) => !f).length;
  const net =
    o.box && o.safetyNet > 0 && freeCount > 0
      ? Math.ceil(Math.fround(Math.fround(o.safetyNet) * freeCount))
      : 0;
  if (net > 0) {
    const t = topK(
      bound,
      forced.map((f) => !f),
      net,
    );
    tied ||= t.tied;
    for (const j of t.chosen) sel[j] = true;
  }
  const count = sel.filter(Boolean).length;
  const numForced = forced.filter(Boolean).length;
  if (count < o.kMin) {
    const t = topK(
      best,
      sel.map((s) => !s),
      o.kMin - count,
    );
    tied ||= t.tied;
    for (const j of t.chosen) sel[j] = true;
  } else if (count > o.kMax) {
    const t = topK(
      best,
      sel.map((s, j) => s && !forced[j]),
      Math.max(0, o.kMax - numForced),
    );
    tied ||= t.tied;
    const keep = new Set(t.chosen);
    for (let j = 0; j < n; j++) sel[j] = forced[j]! || keep.has(j);
  }
  return { sel, tied };
}

interface Case {
  seed: number;
  prefix: number;
  privates: number[];
  minSharers: number;
  options: Options;
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  seed: fc.integer({ min: 1, max: 2 ** 30 }),
  prefix: fc.integer({ min: 0, max: 160 }),
  privates: fc.array(fc.integer({ min: 1, max: 120 }), { minLength: 1, maxLength: 3 }),
  minSharers: fc.constantFrom(2, Number.POSITIVE_INFINITY),
  options: fc.record({
    mass: fc.oneof(fc.double({ min: 0.3, max: 0.99, noNaN: true }), fc.constant(1)),
    kMin: fc.integer({ min: 0, max: 6 }),
    kMax: fc.integer({ min: 1, max: 24 }),
    recent: fc.integer({ min: 0, max: 3 }),
    safetyNet: fc.constantFrom(0, 0.05, 0.3),
    box: fc.boolean(),
    denseBelow: fc.constantFrom(0, 0, 0, 48),
  }),
});

/** One case; beforeEmuSelect runs just before the emu select. */
function runCase(c: Case, beforeEmuSelect?: () => void): void {
  const rng: Rng = seededRng(c.seed);
  const tree = new PrefixTree({ chunkSize: C, maxCapacity: SLOTS });
  const tokens = (n: number) => Array.from({ length: n }, () => Math.floor(rng() * 5000));
  const prompt = tokens(c.prefix);
  for (const extra of c.privates) {
    const full = [...prompt, ...tokens(extra)];
    const inserted = tree.insert(full);
    const { slots, offsets } = inserted.writes;
    const n = slots.length;
    const k = new Float32Array(n * HKV * D);
    const v = new Float32Array(n * HKV * D);
    for (let i = 0; i < n; i++) {
      const position = inserted.matchedTokens + i;
      const kv = kvOf(full[position]!, position);
      k.set(kv.k, i * HKV * D);
      v.set(kv.v, i * HKV * D);
    }
    for (const m of [cpu, emu])
      m.writeKv(m === cpu ? pools.cpu : pools.emu, slots, offsets, toHost(k, 'f16'), toHost(v, 'f16'));
  }
  const ctx: KernelContext = tree.context({ minSharers: c.minSharers });
  // Full chunks of every row: summarized on both targets, compared.
  const full = new Set<number>();
  let maxChunks = 1;
  for (let r = 0; r < ctx.numRows; r++) {
    const begin = ctx.rowChunkOffsets[r]!;
    maxChunks = Math.max(maxChunks, ctx.rowChunkOffsets[r + 1]! - begin);
    for (let j = 0; j < Math.floor(ctx.rowLength[r]! / C); j++) full.add(ctx.rowChunkSlots[begin + j]!);
  }
  const slots = Int32Array.from(full);
  cpu.psaMeta(pools.cpu, metas.cpu, slots);
  emu.psaMeta(pools.emu, metas.emu, slots);
  const metaCpu = fromHost(cpu.download(metas.cpu), 'f16');
  const metaEmu = fromHost(emu.download(metas.emu), 'f16');
  for (const slot of slots)
    for (let i = slot * HKV * META * D; i < (slot + 1) * HKV * META * D; i++) {
      const a = metaEmu[i]!;
      const b = metaCpu[i]!;
      if (Math.abs(a - b) > 1e-3 + 2e-3 * Math.abs(b))
        expect.fail(`meta[${i}] (slot ${slot}): emu ${a}, cpu ${b}`);
    }
  // Select on the same metadata (the cpu's): only the selects differ below.
  emu.upload(metas.emu, cpu.download(metas.cpu));

  const seqs = tree.sequences();
  const ioSeqs = shuffle(rng, [...seqs]);
  const rowIo = ioRowMap(ctx, ioSeqs);
  const qValues = Float32Array.from({ length: ioSeqs.length * HQ * D }, () => (rng() * 2 - 1) * 1.5);
  const q = toHost(qValues, 'f16');
  const qStored = fromHost(q, 'f16');
  const args = (m: NativeModule) => ({
    q,
    out: toHost(new Float32Array(ioSeqs.length * HQ * D), 'f16'),
    context: packContext({ ...ctx, rowIo, numIoRows: ioSeqs.length }),
    softmaxScale: SCALE,
    ...(m === cpu ? { numThreads: 1 } : {}),
  });
  const cfg = config(c.options, maxChunks);
  const got = {
    cpu: { lists: new Int32Array(0), counts: new Int32Array(0) },
    emu: { lists: new Int32Array(0), counts: new Int32Array(0) },
  };
  for (const [name, m] of [
    ['cpu', cpu],
    ['emu', emu],
  ] as const) {
    const lists = new Int32Array(ctx.numRows * HKV * maxChunks).fill(-7);
    const counts = new Int32Array(ctx.numRows * HKV).fill(-7);
    if (name === 'emu') beforeEmuSelect?.();
    m.psaDecode(
      name === 'cpu' ? pools.cpu : pools.emu,
      args(m),
      name === 'cpu' ? metas.cpu : metas.emu,
      cfg,
      lists,
      counts,
      undefined,
      true,
    );
    got[name] = { lists, counts };
  }
  expect(got.emu.counts).toEqual(got.cpu.counts);

  for (let r = 0; r < ctx.numRows; r++) {
    const io = rowIo[r]!;
    const len = ctx.rowLength[r]!;
    const n = Math.min(Math.ceil(len / C), ctx.rowChunkOffsets[r + 1]! - ctx.rowChunkOffsets[r]!);
    const rowSlots = ctx.rowChunkSlots.subarray(ctx.rowChunkOffsets[r]!, ctx.rowChunkOffsets[r]! + n);
    const seqTokens = tree.tokensOf(ctx.rowSeq[r]!);
    for (let h = 0; h < HKV; h++) {
      const at = r * HKV + h;
      const listOf = (x: { lists: Int32Array; counts: Int32Array }) => [
        ...x.lists.subarray(at * maxChunks, at * maxChunks + Math.max(0, x.counts[at]!)),
      ];
      if (io < 0) {
        expect(got.cpu.counts[at]).toBe(-1);
        continue;
      }
      tally.pairs++;
      const cpuList = listOf(got.cpu);
      const emuList = listOf(got.emu);
      // Float64 scores from the cpu metadata and the stored K and Q.
      const qs = Array.from({ length: G }, (_, g) =>
        Float64Array.from({ length: D }, (_, d) =>
          Math.fround(qStored[(io * HQ + h * G + g) * D + d]! * SCALE),
        ),
      );
      const ell = qs.map(() => new Float64Array(n));
      const bound = new Float64Array(n).fill(Number.NEGATIVE_INFINITY);
      for (let j = 0; j < n - 1; j++) {
        const base = (rowSlots[j]! * HKV + h) * META * D;
        for (let g = 0; g < G; g++) {
          let dot = 0;
          let quad = 0;
          let box = 0;
          for (let d = 0; d < D; d++) {
            const x = qs[g]![d]!;
            dot += x * metaCpu[base + d]!;
            quad += 0.5 * x * x * metaCpu[base + D + d]!;
            box += Math.max(x * metaCpu[base + 2 * D + d]!, x * metaCpu[base + 3 * D + d]!);
          }
          const cap = Math.log(C) + box;
          const e = Math.log(C) + dot + quad;
          ell[g]![j] = c.options.box ? Math.min(e, cap) : e;
          if (c.options.box) bound[j] = Math.max(bound[j]!, cap);
        }
      }
      const tailFrom = (n - 1) * C;
      for (let g = 0; g < G; g++) {
        const s: number[] = [];
        for (let t = tailFrom; t < len; t++) {
          const k = fromHost(toHost(kvOf(seqTokens[t]!, t).k, 'f16'), 'f16');
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qs[g]![d]! * k[h * D + d]!;
          s.push(dot);
        }
        const mx = Math.max(...s);
        ell[g]![n - 1] = mx + Math.log(s.reduce((acc, x) => acc + Math.exp(x - mx), 0));
      }
      const dense = len <= c.options.denseBelow;
      const ref = dense
        ? { sel: new Array<boolean>(n).fill(true), tied: false }
        : referenceSelect(ell, bound, c.options);
      const refList = ref.sel.flatMap((s, j) => (s ? [j] : []));
      if (cpuList.length < n) tally.sparse++;
      const what = `row ${r} head ${h} (len ${len}, ${JSON.stringify(c.options)})`;
      if (!ref.tied) {
        expect(emuList, what).toEqual(cpuList);
        expect(cpuList, what).toEqual(refList);
        continue;
      }
      tally.tied++;
      if (emuList.join() !== cpuList.join()) tally.differing++;
      // Ties: both keep the forced chunks, ascending, and respect the clamp.
      for (const list of [cpuList, emuList]) {
        expect(new Set(list).size, what).toBe(list.length);
        expect(
          [...list].sort((a, b) => a - b),
          what,
        ).toEqual(list);
        for (let j = 0; j < n; j++)
          if (j === 0 || j >= n - c.options.recent || j === n - 1) expect(list, what).toContain(j);
      }
    }
  }
  for (const seq of seqs) tree.release(seq);
}

describe('PSA on emu against cpu', () => {
  test('emu metadata equals cpu metadata; emu select equals cpu select (ties aside) and the float64 rule', () => {
    fc.assert(
      fc.property(caseArb, (c) => runCase(c)),
      { seed: SEED, numRuns: 40 },
    );
    // Most (row, KV head)s are decided with a margin: the property cannot pass on ties alone.
    expect(tally.pairs).toBeGreaterThan(40);
    expect(tally.sparse).toBeGreaterThan(tally.pairs * 0.2);
    expect(tally.tied).toBeLessThan(tally.pairs * 0.25);
  }, 600_000);

  test('the emu select launches with fixed shapes: one fill, one select block per (request, KV head)', () => {
    // Launch counters are process-wide across loaded modules: reset right before the emu select.
    runCase(
      {
        seed: 5,
        prefix: 64,
        privates: [40, 70],
        minSharers: 2,
        options: { mass: 0.8, kMin: 2, kMax: 12, recent: 1, safetyNet: 0.05, box: true, denseBelow: 0 },
      },
      () => emu.resetStats(),
    );
    const kernels = emu.stats().kernels;
    expect(kernels['psa_select']).toMatchObject({ launches: 1, blocks: 2 * HKV });
    expect(kernels['psa_fill_counts']?.launches).toBe(1);
  });

  test('emu decode through ca_psa_decode without selectOnly is unsupported; hasPsa stays cpu-only', () => {
    const ctx = new PrefixTree({ chunkSize: C, maxCapacity: SLOTS });
    const seq = ctx.insert(Array.from({ length: 40 }, (_, i) => i)).seq;
    const context = ctx.context();
    const args = {
      q: toHost(new Float32Array(HQ * D), 'f16'),
      out: toHost(new Float32Array(HQ * D), 'f16'),
      context: packContext({ ...context, rowIo: ioRowMap(context, [seq]), numIoRows: 1 }),
      softmaxScale: SCALE,
    };
    const lists = new Int32Array(HKV * 8);
    const counts = new Int32Array(HKV);
    const cfg = config({ mass: 0.9, kMin: 1, kMax: 8, recent: 0, safetyNet: 0, box: true, denseBelow: 0 }, 8);
    expect(() => emu.psaDecode(pools.emu, args, metas.emu, cfg, lists, counts)).toThrow(/cpu target only/);
    expect(emu.hasPsaKernels).toBe(true);
    expect(emu.hasPsa).toBe(false);
    expect(cpu.hasPsa).toBe(true);
  });
});
