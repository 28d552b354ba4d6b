// The decode data path on the emu target, by the module's own counters (the counts are the
// contract the cuda target follows: emu issues exactly what cuda would): the packed context is
// uploaded once per step, each layer then copies only q in and out back (nothing with device
// tensors), K/V writes and copy-on-write are one launch per layer, and phase 2 runs for the
// requested rows only.

import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Attention, BusyError } from '../index.ts';
import type { DeviceTensor, HostData, KernelStats } from '../runtime/native-module.ts';
import { emuTrafficSpec } from './specs.ts';

const LAYERS = 4;
const BATCH = 32;
const spec = emuTrafficSpec(); // Hq 8, Hkv 2, D 64, bf16, C 16
const Q_ELEMS = spec.heads.q * spec.headDim;
const KV_ELEMS = spec.heads.kv * spec.headDim;

let attn: Attention;
let seqs: number[];

function randomBits(length: number, seed: number): Uint16Array {
  // bf16 bits of values in [-1, 1): a fixed pseudo-random stream per seed.
  let x = seed >>> 0 || 1;
  const bits = new Uint16Array(length);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    f[0] = ((x >>> 0) / 2 ** 32) * 2 - 1;
    bits[i] = u[0]! >>> 16;
  }
  return bits;
}

/** One decode step over `seqs`: appendStep, then per layer writeDecodeKV + decode. */
function step(outs: HostData[], seed: number): void {
  attn.appendStep(
    seqs,
    seqs.map((s) => 7 + s),
  );
  for (let layer = 0; layer < LAYERS; layer++) {
    attn.writeDecodeKV(
      layer,
      randomBits(BATCH * KV_ELEMS, seed + layer),
      randomBits(BATCH * KV_ELEMS, seed + 50 + layer),
    );
    outs[layer] = attn.decode(layer, randomBits(BATCH * Q_ELEMS, seed + 100 + layer));
  }
}

// Launches and blocks by kernel name (the emu shim's memory figures are bench traffic's).
const launched = (stats: KernelStats) =>
  Object.fromEntries(
    Object.entries(stats.kernels).map(([name, k]) => [name, { launches: k.launches, blocks: k.blocks }]),
  );

// Phase 1 once over the shared prompt's run (its sharers' partials), then phase 2 for `rows`
// requested rows: one decode_phase2 launch of rows × Hkv × splits CTAs, plus one
// decode_merge_splits launch of rows × Hkv CTAs when the rows were split.
function expectPhase2(stats: KernelStats, rows: number): void {
  const { decode_phase1: phase1, ...kernels } = launched(stats);
  expect(phase1?.launches).toBe(1);
  expect(phase1!.blocks % spec.heads.kv).toBe(0);
  const phase2 = kernels['decode_phase2'];
  expect(phase2?.launches).toBe(1);
  const splits = (phase2?.blocks ?? 0) / (rows * spec.heads.kv);
  expect(Number.isInteger(splits) && splits >= 1, `${phase2?.blocks} blocks`).toBe(true);
  expect(kernels).toEqual({
    decode_phase2: { launches: 1, blocks: rows * spec.heads.kv * splits },
    ...(splits > 1 ? { decode_merge_splits: { launches: 1, blocks: rows * spec.heads.kv } } : {}),
  });
}

const copies = (stats: KernelStats) => ({
  h2d: stats.memcpy.h2d.calls,
  d2h: stats.memcpy.d2h.calls,
  d2d: stats.memcpy.d2d.calls,
});

beforeAll(async () => {
  attn = await Attention.create(spec, { layers: LAYERS, capacityTokens: 8192, target: 'emu' });
  // 32 sequences: a shared 40-token prompt prefix, then 1..31 private tokens each.
  const prefix = Array.from({ length: 40 }, (_, t) => t % 97);
  seqs = [];
  for (let i = 0; i < BATCH; i++) {
    const { seq, matchedTokens } = attn.insert([
      ...prefix,
      ...Array.from({ length: 1 + i }, (_, t) => 200 + i * 40 + t),
    ]);
    const n = attn.cache.length(seq) - matchedTokens;
    for (let layer = 0; layer < LAYERS; layer++)
      attn.writeKV(
        layer,
        seq,
        matchedTokens,
        randomBits(n * KV_ELEMS, i * 10 + layer),
        randomBits(n * KV_ELEMS, i * 10 + layer + 5),
      );
    seqs.push(seq);
  }
});

afterAll(() => attn?.close());

describe(`a decode step with L = ${LAYERS} layers and b = ${BATCH} sequences (emu counters)`, () => {
  test('the context is uploaded once per step; each layer copies q in and out back, once each', () => {
    attn.module.resetStats();
    const outs: HostData[] = [];
    attn.appendStep(
      seqs,
      seqs.map(() => 3),
    );
    const perLayer: KernelStats[] = [];
    for (let layer = 0; layer < LAYERS; layer++) {
      attn.writeDecodeKV(layer, randomBits(BATCH * KV_ELEMS, layer), randomBits(BATCH * KV_ELEMS, layer + 9));
      attn.module.resetStats();
      outs[layer] = attn.decode(layer, randomBits(BATCH * Q_ELEMS, layer + 20));
      perLayer.push(attn.module.stats());
    }
    expect(perLayer.map((s) => s.contextUploads)).toEqual([1, 0, 0, 0]);
    for (const [layer, stats] of perLayer.entries()) {
      // Layer 0's h2d copies are the context upload and q; later layers copy q only.
      expect(copies(stats), `layer ${layer}`).toEqual({ h2d: layer === 0 ? 2 : 1, d2h: 1, d2d: 0 });
      if (layer > 0) expect(stats.memcpy.h2d.bytes).toBe(BATCH * Q_ELEMS * 2);
      expect(stats.memcpy.d2h.bytes).toBe(BATCH * Q_ELEMS * 2);
      expectPhase2(stats, BATCH);
    }
  });

  test('with device tensors a layer makes no copy at all, and the outputs are identical', () => {
    const hostOuts: HostData[] = [];
    const deviceOuts: HostData[] = [];
    attn.appendStep(
      seqs,
      seqs.map(() => 5),
    );
    const q = attn.allocTensor('bf16', BATCH * Q_ELEMS);
    const out = attn.allocTensor('bf16', BATCH * Q_ELEMS);
    const k = attn.allocTensor('bf16', BATCH * KV_ELEMS);
    const v = attn.allocTensor('bf16', BATCH * KV_ELEMS);
    try {
      for (let layer = 0; layer < LAYERS; layer++) {
        const kHost = randomBits(BATCH * KV_ELEMS, 300 + layer);
        const vHost = randomBits(BATCH * KV_ELEMS, 400 + layer);
        const qHost = randomBits(BATCH * Q_ELEMS, 500 + layer);
        // Host path first, then the same layer again through device tensors (same K/V slots).
        attn.writeDecodeKV(layer, kHost, vHost);
        hostOuts[layer] = attn.decode(layer, qHost);
        attn.module.upload(k, kHost);
        attn.module.upload(v, vHost);
        attn.module.upload(q, qHost);
        attn.module.resetStats();
        attn.writeDecodeKV(layer, k, v);
        attn.decode(layer, q, out);
        const stats = attn.module.stats();
        // writeDecodeKV still stages its slot/offset lists (one copy); decode copies nothing.
        expect(copies(stats), `layer ${layer}`).toEqual({ h2d: 1, d2h: 0, d2d: 0 });
        expect(stats.memcpy.h2d.bytes).toBeLessThan(BATCH * KV_ELEMS);
        expect(stats.contextUploads).toBe(0);
        deviceOuts[layer] = attn.module.download(out);
      }
    } finally {
      for (const t of [q, out, k, v] as DeviceTensor[]) attn.module.freeTensor(t);
    }
    expect(deviceOuts).toEqual(hostOuts);
  });

  test('writeDecodeKV is one launch and one copy per layer; a 1,000-token prefill writeKV is one launch', async () => {
    attn.appendStep(
      seqs,
      seqs.map(() => 9),
    );
    for (let layer = 0; layer < LAYERS; layer++) {
      attn.module.resetStats();
      attn.writeDecodeKV(layer, randomBits(BATCH * KV_ELEMS, layer), randomBits(BATCH * KV_ELEMS, layer + 1));
      const stats = attn.module.stats();
      expect(launched(stats)).toEqual({ write_kv: { launches: 1, blocks: BATCH } });
      expect(stats.memcpy.h2d.calls).toBeLessThanOrEqual(2);
      expect(stats.memcpy.d2h.calls + stats.memcpy.d2d.calls).toBe(0);
    }
    const long = attn.insert(Array.from({ length: 1000 }, (_, t) => 5000 + t));
    attn.module.resetStats();
    attn.writeKV(0, long.seq, 0, randomBits(1000 * KV_ELEMS, 1), randomBits(1000 * KV_ELEMS, 2));
    const stats = attn.module.stats();
    expect(launched(stats)).toEqual({ write_kv: { launches: 1, blocks: 1000 } });
    expect(stats.memcpy.h2d.calls).toBe(1);
    attn.release(long.seq);
  });

  test('decoding 4 of 32 live sequences runs phase 2 for those 4 rows only', () => {
    attn.appendStep(
      seqs,
      seqs.map(() => 11),
    );
    for (let layer = 0; layer < LAYERS; layer++)
      attn.writeDecodeKV(layer, randomBits(BATCH * KV_ELEMS, layer), randomBits(BATCH * KV_ELEMS, layer + 2));
    const some = [seqs[3]!, seqs[17]!, seqs[0]!, seqs[30]!];
    const q = randomBits(some.length * Q_ELEMS, 77);
    attn.module.resetStats();
    const few = attn.decode(0, q, undefined, some);
    const stats = attn.module.stats();
    expectPhase2(stats, 4);
    expect(stats.contextUploads).toBe(1); // a new set of requested rows is a new plan
    expect(stats.memcpy.d2h.bytes).toBe(q.length * 2);
    // The same rows decoded within the full batch give the same bits.
    const fullQ = new Uint16Array(BATCH * Q_ELEMS);
    some.forEach((seq, i) => {
      fullQ.set(q.subarray(i * Q_ELEMS, (i + 1) * Q_ELEMS), seqs.indexOf(seq) * Q_ELEMS);
    });
    const all = attn.decode(0, fullQ);
    some.forEach((seq, i) => {
      const row = seqs.indexOf(seq);
      expect(Array.from(few.subarray(i * Q_ELEMS, (i + 1) * Q_ELEMS))).toEqual(
        Array.from(all.subarray(row * Q_ELEMS, (row + 1) * Q_ELEMS)),
      );
    });
  });

  test('copy-on-write is one copy_chunks launch per layer for all the copies of a call', () => {
    // Three forks share seqs[5]'s partly filled tail chunk: fork or the next step copies it.
    attn.module.resetStats();
    const forked = attn.fork(seqs[5]!, 3);
    const byFork = attn.module.stats().kernels['copy_chunks'];
    attn.module.resetStats();
    const all = [...seqs, ...forked];
    attn.appendStep(
      all,
      all.map(() => 1),
    );
    const byStep = attn.module.stats().kernels['copy_chunks'];
    let copies = 0;
    for (const cow of [byFork, byStep]) {
      if (!cow) continue;
      expect(cow.launches).toBe(LAYERS);
      copies += cow.blocks / LAYERS;
    }
    expect(copies).toBeGreaterThanOrEqual(3);
    // The step's K/V, so the sequences stay decodable (K/V is written in token order).
    for (let layer = 0; layer < LAYERS; layer++)
      attn.writeDecodeKV(
        layer,
        randomBits(all.length * KV_ELEMS, layer + 30),
        randomBits(all.length * KV_ELEMS, layer + 40),
      );
    for (const seq of forked) attn.release(seq);
  });

  test('a step decodes the same outputs twice in a row (the plan is reused, not stale)', () => {
    const a: HostData[] = [];
    const b: HostData[] = [];
    step(a, 1);
    step(b, 1);
    // Different steps (one more token each), so outputs differ; each is finite.
    for (const out of [...a, ...b]) expect(out.length).toBe(BATCH * Q_ELEMS);
    expect(a[0]).not.toEqual(b[0]);
  });

  test('decodeAsync runs off the event loop (a JS timer ticks meanwhile) and matches decode bit for bit', async () => {
    attn.appendStep(
      seqs,
      seqs.map(() => 13),
    );
    for (let layer = 0; layer < LAYERS; layer++)
      attn.writeDecodeKV(
        layer,
        randomBits(BATCH * KV_ELEMS, layer + 60),
        randomBits(BATCH * KV_ELEMS, layer + 70),
      );
    for (let layer = 0; layer < LAYERS; layer++) {
      const q = randomBits(BATCH * Q_ELEMS, 900 + layer);
      const sync = attn.decode(layer, q);
      let ticks = 0;
      const timer = setInterval(() => ticks++, 1);
      const started = performance.now();
      const pending = attn.decodeAsync(layer, q);
      const returnedAfterMs = performance.now() - started;
      const async = await pending;
      const totalMs = performance.now() - started;
      clearInterval(timer);
      expect(Array.from(async)).toEqual(Array.from(sync));
      if (layer === 0) {
        // The launch itself ran on a worker: the timer fired while it did.
        expect(
          ticks,
          `returned after ${returnedAfterMs.toFixed(1)} ms of ${totalMs.toFixed(1)} ms`,
        ).toBeGreaterThan(0);
      }
    }
  });

  test('a second call while a decodeAsync is in flight is a BusyError, and nothing races', async () => {
    attn.appendStep(
      seqs,
      seqs.map(() => 17),
    );
    attn.writeDecodeKV(0, randomBits(BATCH * KV_ELEMS, 1), randomBits(BATCH * KV_ELEMS, 2));
    const q = randomBits(BATCH * Q_ELEMS, 3);
    const pending = attn.decodeAsync(0, q);
    expect(() => attn.decode(0, q)).toThrow(BusyError);
    expect(() =>
      attn.writeDecodeKV(0, new Uint16Array(BATCH * KV_ELEMS), new Uint16Array(BATCH * KV_ELEMS)),
    ).toThrow(BusyError);
    await expect(attn.decodeAsync(0, q)).rejects.toBeInstanceOf(BusyError);
    expect(() => attn.close()).toThrow(BusyError);
    // The module handle refuses too (the addon's own guard), with its stable code.
    expect(() => attn.module.resetStats()).toThrow(expect.objectContaining({ code: 'ERR_CA_BUSY' }));
    const first = await pending;
    // Settled: everything works again, and the same call gives the same bits.
    expect(Array.from(attn.decode(0, q))).toEqual(Array.from(first));
  });
});
