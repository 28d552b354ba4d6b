// The list-driven PSA decode on the emu target (ca_psa_decode without selectOnly: select.cuh, then
// chunk_select_kernels.cuh and the two-phase kernels with kListed), against a float64 reference
// over exactly the chunks the emu select listed and against the cpu target's sparse decode, with
// NaN-poisoned outputs, in forward / reverse / random block order, for f16 and bf16, D 64 and
// 128, G 4 and 1:
//   - every requested row's output equals float64 attention over its listed chunks (dtype gate);
//   - where emu and cpu list the same chunks (ties aside: the selects sum floats in other
//     orders), the emu output equals the cpu output within the gate;
//   - mass 1 equals the dense decode (ca_decode) within the gate;
//   - a shared prefix gives the same lists and, within the gate, the same output as a copied one
//     (the same tree packed without shared runs);
//   - shared chunks' K/V bytes are read once per step: phase 1 reads exactly the union of the
//     sharers' selected shared chunks, phase 2 exactly each row's selected private tokens;
//   - with the guard (the progressive step), emu grows the lists as the cpu target does (ties
//     aside), and both outputs equal float64 attention over their grown lists (shared runs
//     included: the cpu guard path's phase 1 too).

import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { buildModule } from '../codegen/index.ts';
import { attention } from '../dsl/index.ts';
import type { DType, KernelSpec } from '../dsl/spec.ts';
import { ioRowMap, type KernelContext, packContext } from '../runtime/kernel-context.ts';
import { fromHost, type Rng, seededRng, shuffle, toHost } from '../runtime/native/fixtures/testing.ts';
import type { DeviceTensor, KvPool } from '../runtime/native-module.ts';
import { NativeModule } from '../runtime/native-module.ts';
import { PrefixTree } from '../runtime/prefix-tree.ts';

const SEED = Number(process.env.CHUNKATTN_SEED ?? Math.floor(Math.random() * 2 ** 31));
const META = 4;
const ORDERS = ['forward', 'reverse', 'random'] as const;
const GATE: Record<DType, number> = { f16: 2e-3, bf16: 1e-2, f32: 1e-5 };

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

function psaSpec(name: string, q: number, kv: number, headDim: 64 | 128, chunkSize: 16 | 32, dtype: DType) {
  return attention({ name, heads: { q, kv }, headDim, dtype, chunkSize, targets: ['cpu', 'emu'] });
}

interface Options {
  mass: number;
  kMin: number;
  kMax: number;
  recent: number;
  safetyNet: number;
  box: boolean;
}

function config(o: Options, maxChunks: number, guard = 0): Float64Array {
  return Float64Array.from([
    o.mass,
    o.kMin,
    o.kMax,
    o.recent,
    o.safetyNet,
    o.box ? 1 : 0,
    0,
    guard,
    maxChunks,
  ]);
}

/** One spec on cpu and emu: pools, metadata tensors, and the K/V every position holds. */
class Pair {
  readonly hq: number;
  readonly hkv: number;
  readonly g: number;
  readonly d: number;
  readonly c: number;
  readonly dtype: DType;
  readonly scale: number;
  readonly gate: number;
  cpu!: NativeModule;
  emu!: NativeModule;
  pools!: { cpu: KvPool; emu: KvPool };
  metas!: { cpu: DeviceTensor; emu: DeviceTensor };
  readonly tally = { rows: 0, sparse: 0, compared: 0, guarded: 0 };

  constructor(
    readonly spec: KernelSpec,
    readonly slots: number,
  ) {
    this.hq = spec.heads.q;
    this.hkv = spec.heads.kv;
    this.g = this.hq / this.hkv;
    this.d = spec.headDim;
    this.c = spec.chunkSize;
    this.dtype = spec.dtype.kv;
    this.scale = 1 / Math.sqrt(this.d);
    this.gate = GATE[this.dtype];
  }

  async open(): Promise<void> {
    const [builtCpu, builtEmu] = await Promise.all([
      buildModule(this.spec, { target: 'cpu' }),
      buildModule(this.spec, { target: 'emu' }),
    ]);
    this.cpu = NativeModule.load(builtCpu.libraryPath);
    this.emu = NativeModule.load(builtEmu.libraryPath);
    this.pools = { cpu: this.cpu.allocPool(this.slots), emu: this.emu.allocPool(this.slots) };
    const elems = this.slots * this.hkv * META * this.d;
    this.metas = {
      cpu: this.cpu.allocTensor(this.dtype, elems),
      emu: this.emu.allocTensor(this.dtype, elems),
    };
  }

  close(): void {
    if (!this.cpu) return;
    this.cpu.freeTensor(this.metas.cpu);
    this.emu.freeTensor(this.metas.emu);
    this.cpu.free(this.pools.cpu);
    this.emu.free(this.pools.emu);
  }

  /** K and V (stored values) of a token at a position: chunks lean toward a few directions. */
  kvOf(token: number, position: number): { k: Float32Array; v: Float32Array } {
    const n = this.hkv * this.d;
    const r = seededRng(token * 7919 + position * 104729 + 17);
    const dir = seededRng(1000 + (Math.floor(position / this.c) % 5));
    const lean = Math.floor(position / this.c) % 3 === 0 ? 2.5 : 0.3;
    const k = new Float32Array(n);
    const v = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      k[i] = (dir() * 2 - 1) * lean + (r() * 2 - 1);
      v[i] = r() * 2 - 1;
    }
    return { k, v };
  }

  stored(x: Float32Array): Float64Array {
    return fromHost(toHost(x, this.dtype), this.dtype);
  }
}

const PAIRS = {
  f16g4d64: new Pair(psaSpec('psa-dec-f16-g4', 8, 2, 64, 16, 'f16'), 160),
  bf16g1d128: new Pair(psaSpec('psa-dec-bf16-g1', 2, 2, 128, 32, 'bf16'), 96),
};

beforeAll(async () => {
  await Promise.all(Object.values(PAIRS).map((p) => p.open()));
}, 900_000);
afterAll(() => {
  for (const p of Object.values(PAIRS)) p.close();
});

/** A tree over both pools: `prefix` shared tokens, then each sequence's private tokens. */
class Scene {
  readonly tree: PrefixTree;
  readonly seqs: number[] = [];
  readonly rng: Rng;
  readonly kv = new Map<number, { k: Float64Array[]; v: Float64Array[] }>();

  constructor(
    readonly p: Pair,
    seed: number,
    prefix: number,
    privates: number[],
  ) {
    const { hkv: HKV, d: D } = p;
    this.rng = seededRng(seed);
    this.tree = new PrefixTree({ chunkSize: p.c, maxCapacity: p.slots });
    const tokens = (n: number) => Array.from({ length: n }, () => Math.floor(this.rng() * 5000));
    const prompt = tokens(prefix);
    for (const extra of privates) {
      const full = [...prompt, ...tokens(extra)];
      const inserted = this.tree.insert(full);
      const { slots, offsets } = inserted.writes;
      const n = slots.length;
      const k = new Float32Array(n * HKV * D);
      const v = new Float32Array(n * HKV * D);
      for (let i = 0; i < n; i++) {
        const position = inserted.matchedTokens + i;
        const kv = p.kvOf(full[position]!, position);
        k.set(kv.k, i * HKV * D);
        v.set(kv.v, i * HKV * D);
      }
      p.cpu.writeKv(p.pools.cpu, slots, offsets, toHost(k, p.dtype), toHost(v, p.dtype));
      p.emu.writeKv(p.pools.emu, slots, offsets, toHost(k, p.dtype), toHost(v, p.dtype));
      this.seqs.push(inserted.seq);
      const kvs = full.map((t, pos) => p.kvOf(t, pos));
      this.kv.set(inserted.seq, { k: kvs.map((x) => p.stored(x.k)), v: kvs.map((x) => p.stored(x.v)) });
    }
  }

  /** Metadata of every full chunk on both targets; emu gets the cpu's (the selects then differ only in float order). */
  meta(ctx: KernelContext): number {
    const { p } = this;
    const full = new Set<number>();
    let maxChunks = 1;
    for (let r = 0; r < ctx.numRows; r++) {
      const begin = ctx.rowChunkOffsets[r]!;
      maxChunks = Math.max(maxChunks, ctx.rowChunkOffsets[r + 1]! - begin);
      for (let j = 0; j < Math.floor(ctx.rowLength[r]! / p.c); j++) full.add(ctx.rowChunkSlots[begin + j]!);
    }
    const slots = Int32Array.from(full);
    p.cpu.psaMeta(p.pools.cpu, p.metas.cpu, slots);
    p.emu.psaMeta(p.pools.emu, p.metas.emu, slots);
    p.emu.upload(p.metas.emu, p.cpu.download(p.metas.cpu));
    return maxChunks;
  }

  release(): void {
    for (const s of this.seqs) this.tree.release(s);
  }
}

interface Decoded {
  out: Float64Array;
  lists: Int32Array;
  counts: Int32Array;
  guardAdded: Int32Array;
}

/** One ca_psa_decode (or, dense, ca_decode) on `name` with a NaN-poisoned out. */
function decode(
  p: Pair,
  name: 'cpu' | 'emu',
  ctx: KernelContext,
  ioSeqs: number[],
  q: Uint16Array | Float32Array,
  cfg: Float64Array | null,
  maxChunks: number,
): Decoded {
  const m = p[name];
  const out = toHost(new Float32Array(ioSeqs.length * p.hq * p.d).fill(Number.NaN), p.dtype);
  const args = {
    q,
    out,
    context: packContext({ ...ctx, rowIo: ioRowMap(ctx, ioSeqs), numIoRows: ioSeqs.length }),
    softmaxScale: p.scale,
    ...(name === 'cpu' ? { numThreads: 1 } : {}),
  };
  const lists = new Int32Array(ctx.numRows * p.hkv * maxChunks).fill(-7);
  const counts = new Int32Array(ctx.numRows * p.hkv).fill(-7);
  const guardAdded = new Int32Array(ctx.numRows * p.hkv).fill(-7);
  if (cfg) m.psaDecode(p.pools[name], args, p.metas[name], cfg, lists, counts, guardAdded);
  else m.decode(p.pools[name], args);
  return { out: fromHost(out, p.dtype), lists, counts, guardAdded };
}

/** The chunks row r / KV head h listed, ascending (the cpu guard appends its batch unsorted). */
function listOf(p: Pair, d: Decoded, r: number, h: number, maxChunks: number): number[] {
  const at = r * p.hkv + h;
  return [...d.lists.subarray(at * maxChunks, at * maxChunks + Math.max(0, d.counts[at]!))].sort(
    (a, b) => a - b,
  );
}

/** Float64 attention of io row `io` (sequence seq, length len), query head qh, over `chunks`. */
function reference(
  s: Scene,
  qStored: Float64Array,
  io: number,
  seq: number,
  len: number,
  qh: number,
  chunks: number[],
): Float64Array {
  const { p } = s;
  const { d: D, c: C, hq: HQ } = p;
  const h = Math.floor(qh / p.g);
  const kv = s.kv.get(seq)!;
  const scores: number[] = [];
  const positions: number[] = [];
  for (const j of chunks)
    for (let t = j * C; t < Math.min(len, (j + 1) * C); t++) {
      let dot = 0;
      for (let x = 0; x < D; x++) dot += qStored[(io * HQ + qh) * D + x]! * kv.k[t]![h * D + x]!;
      scores.push(dot * Math.fround(p.scale));
      positions.push(t);
    }
  const mx = Math.max(...scores);
  const w = scores.map((x) => Math.exp(x - mx));
  const sum = w.reduce((a, b) => a + b, 0);
  const o = new Float64Array(D);
  positions.forEach((t, i) => {
    for (let x = 0; x < D; x++) o[x]! += (w[i]! / sum) * kv.v[t]![h * D + x]!;
  });
  return o;
}

function maxDiff(a: Float64Array, b: Float64Array, from: number, n: number): number {
  let worst = 0;
  for (let i = from; i < from + n; i++) {
    const e = Math.abs(a[i]! - b[i]!);
    worst = Number.isNaN(e) ? Number.POSITIVE_INFINITY : Math.max(worst, e);
  }
  return worst;
}

function queries(p: Pair, rng: Rng, rows: number): { q: Uint16Array | Float32Array; qStored: Float64Array } {
  const q = toHost(
    Float32Array.from({ length: rows * p.hq * p.d }, () => (rng() * 2 - 1) * 1.5),
    p.dtype,
  );
  return { q, qStored: fromHost(q, p.dtype) };
}

interface Case {
  seed: number;
  prefix: number;
  privates: number[];
  /** 1: chunk-first (every chunk in phase 1); Infinity: sequence-first; 2: two-phase. */
  minSharers: number;
  /** Cuts long runs (rows then merge several partials). */
  maxRunChunks?: number;
  options: Options;
}

const optionsArb: fc.Arbitrary<Options> = fc.record({
  mass: fc.oneof(
    { arbitrary: fc.double({ min: 0.3, max: 0.95, noNaN: true }), weight: 5 },
    { arbitrary: fc.constant(1), weight: 1 },
  ),
  kMin: fc.integer({ min: 0, max: 4 }),
  kMax: fc.integer({ min: 2, max: 24 }),
  recent: fc.integer({ min: 0, max: 2 }),
  safetyNet: fc.constantFrom(0, 0.05, 0.3),
  box: fc.boolean(),
});

/**
 * Emu sparse against float64 over its own lists, and against the cpu where the lists agree; with
 * the guard, the cpu output against float64 over its lists too.
 */
function runCase(p: Pair, c: Case, order: string, guard = 0): void {
  const s = new Scene(p, c.seed, c.prefix, c.privates);
  const ctx = s.tree.context({
    minSharers: c.minSharers,
    maxRunChunks: c.maxRunChunks ?? Number.POSITIVE_INFINITY,
  });
  const maxChunks = s.meta(ctx);
  const ioSeqs = shuffle(s.rng, [...s.seqs]).slice(0, 1 + Math.floor(s.rng() * s.seqs.length));
  const { q, qStored } = queries(p, s.rng, ioSeqs.length);
  const cfg = config(c.options, maxChunks, guard);
  const cpu = decode(p, 'cpu', ctx, ioSeqs, q, cfg, maxChunks);
  const emu = withOrder(order, () => decode(p, 'emu', ctx, ioSeqs, q, cfg, maxChunks));
  const { d: D, g: G } = p;
  ioSeqs.forEach((seq, io) => {
    const r = ctx.rowOf(seq);
    const len = ctx.rowLength[r]!;
    const n = Math.ceil(len / p.c);
    let same = true;
    for (let h = 0; h < p.hkv; h++) {
      const list = listOf(p, emu, r, h, maxChunks);
      p.tally.rows++;
      if (list.length < n) p.tally.sparse++;
      expect(list.length, `row ${r} head ${h}`).toBeGreaterThan(0);
      expect(list).toContain(n - 1); // the tail
      const cpuList = listOf(p, cpu, r, h, maxChunks);
      same &&= list.join() === cpuList.join();
      const at = r * p.hkv + h;
      p.tally.guarded += emu.guardAdded[at]! > 0 ? 1 : 0;
      if (list.join() === cpuList.join()) expect(emu.guardAdded[at]).toBe(cpu.guardAdded[at]);
      for (let g = 0; g < G; g++) {
        const qh = h * G + g;
        const ref = reference(s, qStored, io, seq, len, qh, list);
        const got = emu.out.subarray((io * p.hq + qh) * D, (io * p.hq + qh + 1) * D);
        const err = maxDiff(got, ref, 0, D);
        expect(err, `emu row ${r} head ${qh} (${JSON.stringify(c.options)})`).toBeLessThanOrEqual(p.gate);
        if (!guard) continue;
        const refCpu = reference(s, qStored, io, seq, len, qh, cpuList);
        const errCpu = maxDiff(cpu.out.subarray((io * p.hq + qh) * D), refCpu, 0, D);
        expect(errCpu, `cpu row ${r} head ${qh} (guard)`).toBeLessThanOrEqual(p.gate);
      }
    }
    if (same) {
      p.tally.compared++;
      const err = maxDiff(emu.out, cpu.out, io * p.hq * D, p.hq * D);
      expect(err, `emu vs cpu, row ${r}`).toBeLessThanOrEqual(p.gate);
    }
  });
  s.release();
}

describe(`list-driven PSA decode on emu (seed ${SEED})`, () => {
  test.each(Object.keys(PAIRS).flatMap((name, i) => ORDERS.map((order, j) => ({ name, order, i, j }))))(
    '$name, CUCPU_ORDER=$order: emu sparse equals float64 over its lists and the cpu sparse decode',
    ({ name, order, i, j }) => {
      const p = PAIRS[name as keyof typeof PAIRS];
      const arb = fc.record({
        seed: fc.integer({ min: 1, max: 2 ** 30 }),
        prefix: fc.integer({ min: 0, max: 8 * p.c }),
        privates: fc.array(fc.integer({ min: 1, max: 6 * p.c }), { minLength: 1, maxLength: 4 }),
        minSharers: fc.constantFrom(1, 2, 2, Number.POSITIVE_INFINITY),
        maxRunChunks: fc.constantFrom(Number.POSITIVE_INFINITY, 3),
        options: optionsArb,
      });
      fc.assert(
        fc.property(arb, (c) => runCase(p, c, order)),
        { seed: SEED + 101 * i + j, numRuns: 6 },
      );
    },
    600_000,
  );

  test.each(Object.keys(PAIRS).map((name, i) => ({ name, i, order: ORDERS[(i + 1) % 3]! })))(
    '$name, CUCPU_ORDER=$order, guard: emu grows the lists as the cpu does; both equal float64 over them',
    ({ name, i, order }) => {
      const p = PAIRS[name as keyof typeof PAIRS];
      const arb = fc.record({
        seed: fc.integer({ min: 1, max: 2 ** 30 }),
        prefix: fc.integer({ min: 2 * p.c, max: 8 * p.c }),
        privates: fc.array(fc.integer({ min: 1, max: 6 * p.c }), { minLength: 1, maxLength: 4 }),
        minSharers: fc.constantFrom(2, Number.POSITIVE_INFINITY),
        options: fc.record({
          mass: fc.double({ min: 0.9, max: 0.995, noNaN: true }),
          kMin: fc.integer({ min: 0, max: 5 }),
          kMax: fc.integer({ min: 2, max: 5 }),
          recent: fc.integer({ min: 0, max: 1 }),
          safetyNet: fc.constant(0),
          box: fc.boolean(),
        }),
      });
      const before = p.tally.guarded;
      fc.assert(
        fc.property(arb, (c) => runCase(p, c, order, 1)),
        { seed: SEED + 307 * i, numRuns: 8 },
      );
      expect(p.tally.guarded - before).toBeGreaterThan(0);
    },
    600_000,
  );

  test('the properties were exercised: lists sparse, rows compared with the cpu', () => {
    for (const p of Object.values(PAIRS)) {
      expect(p.tally.rows).toBeGreaterThan(20);
      expect(p.tally.sparse).toBeGreaterThan(p.tally.rows * 0.15);
      expect(p.tally.compared).toBeGreaterThan(p.tally.rows / p.hkv / 4);
    }
  });

  test.each(Object.keys(PAIRS))('%s: mass 1 equals the dense decode within the gate', (name) => {
    const p = PAIRS[name as keyof typeof PAIRS];
    const s = new Scene(p, SEED + 3, 5 * p.c + 3, [2 * p.c + 1, 3, 4 * p.c]);
    const ctx = s.tree.context({ minSharers: 2 });
    const maxChunks = s.meta(ctx);
    const { q } = queries(p, s.rng, s.seqs.length);
    const all: Options = { mass: 1, kMin: 0, kMax: 1 << 20, recent: 0, safetyNet: 0, box: true };
    const sparse = decode(p, 'emu', ctx, s.seqs, q, config(all, maxChunks), maxChunks);
    const dense = decode(p, 'emu', ctx, s.seqs, q, null, maxChunks);
    expect(maxDiff(sparse.out, dense.out, 0, dense.out.length)).toBeLessThanOrEqual(p.gate);
    s.release();
  });

  test.each(Object.keys(PAIRS))(
    '%s: a shared prefix gives the lists and (within the gate) the output of a copied one',
    (name) => {
      const p = PAIRS[name as keyof typeof PAIRS];
      const s = new Scene(p, SEED + 5, 9 * p.c + 2, [3 * p.c, p.c + 5, 7, 2 * p.c - 1]);
      const shared = s.tree.context({ minSharers: 2 });
      const copied = s.tree.context({ minSharers: Number.POSITIVE_INFINITY });
      expect(shared.numRuns).toBeGreaterThan(0);
      expect(copied.numRuns).toBe(0);
      const maxChunks = s.meta(shared);
      const { q } = queries(p, s.rng, s.seqs.length);
      const o: Options = { mass: 0.6, kMin: 1, kMax: 64, recent: 0, safetyNet: 0, box: true };
      const a = decode(p, 'emu', shared, s.seqs, q, config(o, maxChunks), maxChunks);
      const b = decode(p, 'emu', copied, s.seqs, q, config(o, maxChunks), maxChunks);
      let sparse = 0;
      for (const seq of s.seqs)
        for (let h = 0; h < p.hkv; h++) {
          const la = listOf(p, a, shared.rowOf(seq), h, maxChunks);
          expect(la).toEqual(listOf(p, b, copied.rowOf(seq), h, maxChunks));
          if (la.length < Math.ceil(shared.rowLength[shared.rowOf(seq)]! / p.c)) sparse++;
        }
      expect(sparse).toBeGreaterThan(0);
      expect(maxDiff(a.out, b.out, 0, a.out.length)).toBeLessThanOrEqual(p.gate);
      s.release();
    },
  );

  test.each(Object.keys(PAIRS))(
    '%s: shared chunks are read once per step (the union of the sharers’ selections), private chunks only when selected',
    (name) => {
      const p = PAIRS[name as keyof typeof PAIRS];
      const { c: C, d: D, hkv: HKV } = p;
      // A prefix long enough for phase 1 to split its chunks over several CTAs.
      const s = new Scene(p, SEED + 9, 40 * C, [2 * C + 3, C + 1, 3 * C, 5]);
      const ctx = s.tree.context({ minSharers: 2 });
      expect(ctx.numRuns).toBe(1);
      const maxChunks = s.meta(ctx);
      const { q } = queries(p, s.rng, s.seqs.length);
      const o: Options = { mass: 0.3, kMin: 1, kMax: 4, recent: 0, safetyNet: 0, box: true };
      p.emu.resetStats();
      const got = decode(p, 'emu', ctx, s.seqs, q, config(o, maxChunks), maxChunks);
      const kernels = p.emu.stats().kernels;
      expect(kernels['decode_phase1']!.blocks).toBeGreaterThan(HKV); // split
      const bytes = 2 * D * 2; // K and V of one token
      let sharedTokens = 0;
      let privateTokens = 0;
      let denseShared = 0;
      for (let h = 0; h < HKV; h++) {
        const union = new Set<number>();
        for (const seq of s.seqs) {
          const r = ctx.rowOf(seq);
          const sh = ctx.rowSharedChunks[r]!;
          const len = ctx.rowLength[r]!;
          denseShared = sh;
          for (const j of listOf(p, got, r, h, maxChunks)) {
            if (j < sh) union.add(j);
            else privateTokens += Math.min(C, len - j * C);
          }
        }
        sharedTokens += union.size * C;
      }
      expect(sharedTokens).toBeLessThan(denseShared * C * HKV); // something was skipped
      expect(kernels['decode_phase1']?.requestedBytes.kv).toBe(sharedTokens * bytes);
      expect(kernels['decode_phase2']?.requestedBytes.kv).toBe(privateTokens * bytes);
      s.release();
    },
  );
});
