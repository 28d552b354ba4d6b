// Progressive sparse attention on the cpu target: the chunk metadata, select, and the decode
// driven by the selected lists, against float64 attention over the same chunks.

import fc from 'fast-check';
import { afterAll, describe, expect, test } from 'vitest';
import { xorshift32 } from '../bench/random.ts';
import type { DType } from '../dsl/spec.ts';
import { Attention, type AttentionOptions, BusyError } from '../index.ts';
import { META_VECTORS } from '../runtime/chunk-metadata.ts';
import { fromHost, toHost } from '../runtime/half.ts';
import type { DeviceTensor } from '../runtime/native-module.ts';
import { referenceDecode, relativeError, TOLERANCE } from '../runtime/reference.ts';
import type { SparseSelection } from '../runtime/sparse-decode.ts';
import { tinySpec } from './specs.ts';

const SEED = Number(process.env.CHUNKATTN_SEED ?? Math.floor(Math.random() * 2 ** 31));
const C = 16;
const D = 64;
const HQ = 8;
const HKV = 2;
const G = HQ / HKV;
const SCALE = 1 / Math.sqrt(D);

/** xorshift32 uniforms in [-1, 1). */
function rng(seed: number): () => number {
  const next = xorshift32(seed);
  return () => next() * 2 - 1;
}

/**
 * K/V with some structure (so selections are neither empty nor everything): each chunk leans
 * toward one of a few directions; queries lean toward one of them.
 */
function makeKv(tokens: number, seed: number): { k: Float32Array; v: Float32Array } {
  const r = rng(seed);
  const dirs = Array.from({ length: 6 }, () => Float32Array.from({ length: D }, () => r() * 2.5));
  const k = new Float32Array(tokens * HKV * D);
  const v = new Float32Array(tokens * HKV * D);
  for (let t = 0; t < tokens; t++) {
    const dir = dirs[Math.floor(t / C) % dirs.length]!;
    for (let h = 0; h < HKV; h++)
      for (let i = 0; i < D; i++) {
        k[(t * HKV + h) * D + i] =
          dir[(i + h * 7) % D]! * ((Math.floor(t / C) * 7919) % 5 === 0 ? 1 : 0.2) + r();
        v[(t * HKV + h) * D + i] = r();
      }
  }
  return { k, v };
}

function makeQ(rows: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: rows * HQ * D }, () => r() * 1.5);
}

const opened: Attention[] = [];
afterAll(() => {
  for (const a of opened) a.close();
});

/** Two layers over the same K/V: layer 0 dense, layer 1 PSA with `sparse` options. */
async function twoLayers(
  dtype: DType,
  sparse: AttentionOptions['sparse'],
  capacity = 4096,
  variant: 'plain' | 'softcap-window' = 'plain',
  target: 'cpu' | 'emu' = 'cpu',
) {
  const attn = await Attention.create(tinySpec(dtype, variant, [target]), {
    layers: 2,
    capacityTokens: capacity,
    target,
    threads: 2,
    sparse: sparse === false ? false : { denseLayers: 1, denseBelowTokens: 0, ...sparse },
  });
  opened.push(attn);
  return attn;
}

/** Releases every live sequence (a failed property run may leave one behind). */
function reset(...attns: Attention[]) {
  for (const attn of attns) for (const seq of attn.cache.sequences()) attn.release(seq);
}

function write(attn: Attention, seq: number, from: number, k: Float32Array, v: Float32Array) {
  const dtype = attn.spec.dtype.kv;
  for (let layer = 0; layer < attn.layers; layer++)
    attn.writeKV(layer, seq, from, toHost(k, dtype), toHost(v, dtype));
}

/** write through device tensors (writeKV leaves their values unchecked: NaN gets in). */
function writeUnchecked(attn: Attention, seq: number, from: number, k: Float32Array, v: Float32Array) {
  const dtype = attn.spec.dtype.kv;
  const [kd, vd] = [k, v].map((x) => {
    const t = attn.allocTensor(dtype, x.length);
    attn.module.upload(t, toHost(x, dtype));
    return t;
  }) as [DeviceTensor, DeviceTensor];
  for (let layer = 0; layer < attn.layers; layer++) attn.writeKV(layer, seq, from, kd, vd);
  attn.module.freeTensor(kd);
  attn.module.freeTensor(vd);
}

/** The values the pool holds. */
function stored(x: Float32Array, dtype: DType): Float32Array {
  return fromHost(toHost(x, dtype), dtype);
}

function poisoned(attn: Attention, rows: number) {
  const n = rows * HQ * D;
  return attn.spec.dtype.out === 'f32'
    ? new Float32Array(n).fill(Number.NaN)
    : new Uint16Array(n).fill(0x7fc1);
}

const PREFIX = 640;
const OWN = 200;

/**
 * Three sequences sharing a PREFIX-token prefix, OWN own tokens each; token t of sequence i holds
 * row t of k/v for the prefix and row PREFIX + i·OWN + t′ for its own tokens. `offset` shifts every
 * token (another offset: the same K/V in copies, nothing shared with the first call's).
 */
function insertSharers(
  attn: Attention,
  k: Float32Array,
  v: Float32Array,
  offset = 0,
  unchecked = false,
): number[] {
  const rows = HKV * D;
  const kvOf = (x: Float32Array, i: number) => {
    const out = new Float32Array((PREFIX + OWN) * rows);
    out.set(x.subarray(0, PREFIX * rows));
    out.set(x.subarray((PREFIX + i * OWN) * rows, (PREFIX + (i + 1) * OWN) * rows), PREFIX * rows);
    return out;
  };
  const seqs: number[] = [];
  for (let i = 0; i < 3; i++) {
    const tokens = [
      ...Array.from({ length: PREFIX }, (_, t) => t),
      ...Array.from({ length: OWN }, (_, t) => 10_000 * (i + 1) + t),
    ].map((t) => t + offset * (i + 1));
    const a = attn.insert(tokens);
    expect(a.matchedTokens).toBe(offset === 0 && i > 0 ? PREFIX : 0);
    seqs.push(a.seq);
    const from = a.matchedTokens * rows;
    (unchecked ? writeUnchecked : write)(
      attn,
      a.seq,
      a.matchedTokens,
      kvOf(k, i).subarray(from),
      kvOf(v, i).subarray(from),
    );
  }
  if (offset === 0) expect(attn.cache.chunkRefs(attn.cache.chunksOf(seqs[0]!)[0]!)).toBe(3);
  return seqs;
}

/** Float64 attention of one row restricted to the chunks the selection lists for each KV head. */
function restrictedReference(
  selection: SparseSelection,
  seq: number,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  length: number,
  variant?: { scoreMod?: (s: number) => number; mask?: (pos: { q: number; kv: number }) => boolean },
): Float64Array {
  const sets = Array.from({ length: HKV }, (_, h) => new Set(selection.chunksOf(seq, h)));
  return referenceDecode(
    { qHeads: HQ, kvHeads: HKV, headDim: D, softmaxScale: SCALE },
    [{ seq, q, k, v, length }],
    {
      mask: (pos) => sets[pos.kvHead]!.has(Math.floor(pos.kv / C)) && (!variant?.mask || variant.mask(pos)),
      ...(variant?.scoreMod ? { scoreMod: (s: number) => variant.scoreMod!(s) } : {}),
    },
  )[0]!;
}

function chunkMasses(q: Float32Array, k: Float32Array, length: number, head: number): Float64Array {
  const kvh = Math.floor(head / G);
  const s = new Float64Array(length);
  let m = Number.NEGATIVE_INFINITY;
  for (let t = 0; t < length; t++) {
    let dot = 0;
    for (let i = 0; i < D; i++) dot += q[head * D + i]! * k[(t * HKV + kvh) * D + i]!;
    s[t] = dot * SCALE;
    m = Math.max(m, s[t]!);
  }
  let z = 0;
  for (let t = 0; t < length; t++) z += s[t] = Math.exp(s[t]! - m);
  const out = new Float64Array(Math.ceil(length / C));
  for (let t = 0; t < length; t++) out[Math.floor(t / C)]! += s[t]! / z;
  return out;
}

describe(`PSA decode on the cpu target (seed ${SEED})`, () => {
  test('mass 1 selects every chunk and equals dense two-phase bit for bit (fast-check)', async () => {
    for (const dtype of ['f32', 'bf16'] as const) {
      const attn = await twoLayers(dtype, { mass: 1 });
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 2, max: 600 }),
          fc.integer({ min: 0, max: 1_000_000 }),
          async (length, seed) => {
            reset(attn);
            const { seq } = attn.insert(Array.from({ length }, (_, i) => seed + i * 3));
            const { k, v } = makeKv(length, seed);
            write(attn, seq, 0, k, v);
            const q = toHost(makeQ(1, seed + 1), dtype);
            const dense = attn.decode(0, q, poisoned(attn, 1), [seq]);
            const sparse = attn.decode(1, q, poisoned(attn, 1), [seq]);
            const sel = attn.selection!;
            for (let h = 0; h < HKV; h++) expect(sel.chunksOf(seq, h).length).toBe(Math.ceil(length / C));
            expect(Buffer.from(sparse.buffer).equals(Buffer.from(dense.buffer))).toBe(true);
            attn.release(seq);
          },
        ),
        { seed: SEED, numRuns: 8 },
      );
    }
  });

  test('the sparse output is float64 attention over exactly the selected chunks (NaN-poisoned out)', async () => {
    for (const [dtype, variant] of [
      ['f32', 'plain'],
      ['bf16', 'plain'],
      ['bf16', 'softcap-window'],
    ] as const) {
      const attn = await twoLayers(dtype, { mass: 0.8, safetyNet: 0.05, recentTokens: 32 }, 4096, variant);
      for (const length of [300, 777, 1500]) {
        const { seq } = attn.insert(Array.from({ length }, (_, i) => length * 10_000 + i));
        const { k, v } = makeKv(length, SEED + length);
        write(attn, seq, 0, k, v);
        // A query aligned with the keys of one strong chunk (chunk 5): a sharp distribution.
        const q = new Float32Array(HQ * D);
        const noise = rng(SEED + length);
        for (let h = 0; h < HQ; h++)
          for (let i = 0; i < D; i++)
            q[h * D + i] = k[((5 * C + 3) * HKV + Math.floor(h / G)) * D + i]! * 0.8 + noise() * 0.3;
        const qStored = stored(q, dtype);
        const out = fromHost(attn.decode(1, toHost(qStored, dtype), poisoned(attn, 1), [seq]), dtype);
        const sel = attn.selection!;
        const chunks = Math.ceil(length / C);
        const counts = [0, 1].map((h) => sel.chunksOf(seq, h).length);
        expect(Math.min(...counts)).toBeLessThan(chunks); // really sparse
        const ref = restrictedReference(
          sel,
          seq,
          qStored,
          stored(k, dtype),
          stored(v, dtype),
          length,
          variant === 'plain'
            ? undefined
            : { scoreMod: (s) => 5 * Math.tanh(s / 5), mask: (pos) => pos.q - pos.kv < 37 },
        );
        expect(relativeError(out, ref)).toBeLessThan(TOLERANCE[dtype]);
        attn.release(seq);
      }
    }
  });

  test('forced chunks (sink, recent window, tail) are always selected, whatever kMax (fast-check)', async () => {
    const attn = await twoLayers('f32', { mass: 0.5, recentTokens: 48, kMax: 1, safetyNet: 0 });
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 100, max: 900 }),
        fc.integer({ min: 0, max: 1_000_000 }),
        async (length, seed) => {
          reset(attn);
          const { seq } = attn.insert(Array.from({ length }, (_, i) => seed * 7 + i));
          const { k, v } = makeKv(length, seed);
          write(attn, seq, 0, k, v);
          attn.decode(1, makeQ(1, seed), undefined, [seq]);
          const chunks = Math.ceil(length / C);
          const forced = new Set([0, chunks - 3, chunks - 2, chunks - 1]); // ⌈48 / 16⌉ recent chunks
          for (let h = 0; h < HKV; h++) {
            const got = attn.selection!.chunksOf(seq, h);
            expect([...forced].every((j) => got.includes(j))).toBe(true);
            expect(got.length).toBe(forced.size); // kMax 1 leaves only the forced chunks
          }
          attn.release(seq);
        },
      ),
      { seed: SEED, numRuns: 10 },
    );
  });

  test('recall is monotone in mass and selections are nested (fast-check)', async () => {
    const masses = [0.5, 0.7, 0.85, 0.95, 0.99];
    const attns = await Promise.all(masses.map((mass) => twoLayers('f32', { mass })));
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 400, max: 1500 }),
        fc.integer({ min: 0, max: 1_000_000 }),
        async (length, seed) => {
          reset(...attns);
          const { k, v } = makeKv(length, seed);
          const q = makeQ(1, seed ^ 0x5bd1e995);
          let previous: Int32Array[] | null = null;
          let previousRecall = -1;
          for (const attn of attns) {
            const { seq } = attn.insert(Array.from({ length }, (_, i) => seed + i));
            write(attn, seq, 0, k, v);
            attn.decode(1, q, undefined, [seq]);
            const lists = [0, 1].map((h) => attn.selection!.chunksOf(seq, h));
            let recall = 0;
            for (let head = 0; head < HQ; head++) {
              const masses = chunkMasses(q, k, length, head);
              for (const j of lists[Math.floor(head / G)]!) recall += masses[j]! / HQ;
            }
            expect(recall).toBeGreaterThanOrEqual(previousRecall - 1e-12);
            if (previous)
              for (let h = 0; h < HKV; h++) for (const j of previous[h]!) expect(lists[h]).toContain(j);
            previous = lists;
            previousRecall = recall;
            attn.release(seq);
            attn.cache.evict();
          }
        },
      ),
      { seed: SEED, numRuns: 6 },
    );
  });

  test.each([false, true])(
    'a shared prefix gives the same selection and output as a copied one, whatever the batch (guard: %s)',
    async (guard) => {
      const attn = await twoLayers('f32', { mass: 0.8, guard }, 16 * 400, 'plain');
      const { k, v } = makeKv(PREFIX + 3 * OWN, SEED);
      // Shared: three sequences with the same prefix tokens. Copied: the same K/V under other tokens.
      const shared = insertSharers(attn, k, v);
      const copied = insertSharers(attn, k, v, 1_000_000);
      const q = makeQ(3, SEED + 5);
      const outShared = attn.decode(1, q, poisoned(attn, 3), shared) as Float32Array;
      expect(attn.selection!.context.numRuns).toBeGreaterThan(0); // phase 1 ran over the shared prefix
      const selShared = shared.map((s) => [0, 1].map((h) => Array.from(attn.selection!.chunksOf(s, h))));
      const outCopied = attn.decode(1, q, poisoned(attn, 3), copied) as Float32Array;
      const selCopied = copied.map((s) => [0, 1].map((h) => Array.from(attn.selection!.chunksOf(s, h))));
      expect(selShared).toEqual(selCopied);
      expect(relativeError(outShared, outCopied)).toBeLessThan(1e-6);
      // One sharer alone: the same as within the batch.
      const qOne = q.slice(HQ * D, 2 * HQ * D);
      const alone = attn.decode(1, qOne, poisoned(attn, 1), [shared[1]!]) as Float32Array;
      expect([0, 1].map((h) => Array.from(attn.selection!.chunksOf(shared[1]!, h)))).toEqual(selShared[1]);
      expect(relativeError(alone, outShared.subarray(HQ * D, 2 * HQ * D))).toBeLessThan(1e-6);
    },
  );

  test('a shared chunk is attended only by the sharers that selected it (NaN in its V reaches no other)', async () => {
    const { k, v } = makeKv(PREFIX + 3 * OWN, SEED + 31);
    const q = makeQ(3, SEED + 32);
    const clean = await twoLayers('f32', { mass: 0.8 }, 16 * 400);
    const seqs = insertSharers(clean, k, v);
    const out = clean.decode(1, q, poisoned(clean, 3), seqs) as Float32Array;
    const sel = clean.selection!;
    // A shared (chunk, KV head) some sharers selected and some did not.
    let found: { chunk: number; kvh: number; took: boolean[] } | undefined;
    for (let chunk = 1; chunk < PREFIX / C && !found; chunk++)
      for (let kvh = 0; kvh < HKV && !found; kvh++) {
        const took = seqs.map((s) => sel.chunksOf(s, kvh).includes(chunk));
        if (took.includes(true) && took.includes(false)) found = { chunk, kvh, took };
      }
    expect(found, 'a chunk selected by some sharers only').toBeDefined();
    const { chunk, kvh, took } = found!;
    // The same K, with NaN in that chunk's V for that KV head.
    const bad = v.slice();
    for (let t = chunk * C; t < (chunk + 1) * C; t++)
      bad.fill(Number.NaN, (t * HKV + kvh) * D, (t * HKV + kvh + 1) * D);
    const dirty = await twoLayers('f32', { mass: 0.8 }, 16 * 400);
    const dirtySeqs = insertSharers(dirty, k, bad, 0, true);
    const got = dirty.decode(1, q, poisoned(dirty, 3), dirtySeqs) as Float32Array;
    expect(dirty.selection!.context.numRuns).toBeGreaterThan(0); // one phase-1 tile holds all three
    for (let i = 0; i < 3; i++)
      for (let h = kvh * G; h < (kvh + 1) * G; h++) {
        const at = (i * HQ + h) * D;
        const head = got.subarray(at, at + D);
        if (took[i]) expect(head.some(Number.isNaN)).toBe(true);
        else expect(Array.from(head)).toEqual(Array.from(out.subarray(at, at + D))); // never read it
      }
  });

  test("decodeAsync of a sparse layer runs off the event loop and gives decode's output and selection", async () => {
    const attn = await twoLayers('f32', { mass: 0.7 }, 16 * 1024);
    const length = 16_000;
    const { seq } = attn.insert(Array.from({ length }, (_, i) => 5_000_000 + i));
    const { k, v } = makeKv(length, SEED + 21);
    write(attn, seq, 0, k, v);
    const q = makeQ(1, SEED + 22);
    const sync = attn.decode(1, q, poisoned(attn, 1), [seq]) as Float32Array;
    const lists = [0, 1].map((h) => Array.from(attn.selection!.chunksOf(seq, h)));
    expect(Math.min(...lists.map((l) => l.length))).toBeLessThan(length / C); // really sparse
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    let viaAsync: Float32Array | undefined;
    try {
      for (let i = 0; i < 20 && ticks === 0; i++) {
        const pending = attn.decodeAsync(1, q, poisoned(attn, 1) as Float32Array, [seq]);
        // In flight: the Attention and the module handle (the addon's own guard) refuse.
        expect(() => attn.decode(1, q, undefined, [seq])).toThrow(BusyError);
        expect(() => attn.module.resetStats()).toThrow(expect.objectContaining({ code: 'ERR_CA_BUSY' }));
        viaAsync = (await pending) as Float32Array;
      }
    } finally {
      clearInterval(timer);
    }
    // The select and the decode ran on a worker thread: the timer fired meanwhile.
    expect(ticks).toBeGreaterThan(0);
    expect(Buffer.from(viaAsync!.buffer).equals(Buffer.from(sync.buffer))).toBe(true);
    expect([0, 1].map((h) => Array.from(attn.selection!.chunksOf(seq, h)))).toEqual(lists);
    attn.release(seq);
  });

  test('guard: the progressive step adds chunks when the covered mass falls short, and the output follows', async () => {
    const attn = await twoLayers('f32', { mass: 0.99, kMax: 6, recentTokens: 16, safetyNet: 0, guard: true });
    const length = 1200;
    const { seq } = attn.insert(Array.from({ length }, (_, i) => 77 + i));
    const { k, v } = makeKv(length, SEED + 9);
    write(attn, seq, 0, k, v);
    const q = makeQ(1, SEED + 10);
    const out = attn.decode(1, q, poisoned(attn, 1), [seq]) as Float32Array;
    const sel = attn.selection!;
    const added = Array.from(sel.guardAdded.subarray(0, HKV));
    expect(Math.max(...added)).toBeGreaterThan(0);
    for (let h = 0; h < HKV; h++) expect(sel.chunksOf(seq, h).length).toBe(6 + added[h]!); // kMax, then the guard's batch
    expect(relativeError(out, restrictedReference(sel, seq, q, k, v, length))).toBeLessThan(TOLERANCE.f32);
  });
});

describe(`PSA decode through Attention on the emu target (seed ${SEED})`, () => {
  test.each([
    ['bf16', 'plain', false],
    ['f16', 'softcap-window', false],
    ['bf16', 'plain', true],
  ] as const)(
    '%s %s (guard %s): float64 attention over exactly the selected chunks, shared prefix included',
    async (dtype, variant, guard) => {
      const options = guard
        ? { mass: 0.99, kMax: 6, recentTokens: 16, safetyNet: 0, guard: true }
        : { mass: 0.8, safetyNet: 0.05, recentTokens: 32 };
      const attn = await twoLayers(dtype, options, 4096, variant, 'emu');
      expect(attn.sparse).toBeDefined();
      // Two sequences over one 640-token prefix (phase 1 over a shared run), one alone.
      const prefix = 640;
      const lengths = [prefix + 137, prefix + 60, 500];
      const seqs: number[] = [];
      const kvs: { k: Float32Array; v: Float32Array }[] = [];
      const shared = makeKv(prefix, SEED + 1);
      lengths.forEach((length, i) => {
        const tokens = Array.from({ length }, (_, t) => (i < 2 && t < prefix ? t : 1_000_000 * (i + 1) + t));
        const { k, v } = makeKv(length, SEED + 10 + i);
        if (i < 2) {
          k.set(shared.k);
          v.set(shared.v);
        }
        const a = attn.insert(tokens);
        write(
          attn,
          a.seq,
          a.matchedTokens,
          k.subarray(a.matchedTokens * HKV * D),
          v.subarray(a.matchedTokens * HKV * D),
        );
        seqs.push(a.seq);
        kvs.push({ k, v });
      });
      const q = stored(makeQ(seqs.length, SEED + 3), dtype);
      const out = fromHost(attn.decode(1, toHost(q, dtype), poisoned(attn, seqs.length), seqs), dtype);
      const sel = attn.selection!;
      expect(sel.context.numRuns).toBeGreaterThan(0);
      let sparse = 0;
      seqs.forEach((seq, i) => {
        for (let h = 0; h < HKV; h++)
          sparse += sel.chunksOf(seq, h).length < Math.ceil(lengths[i]! / C) ? 1 : 0;
        const ref = restrictedReference(
          sel,
          seq,
          q.subarray(i * HQ * D, (i + 1) * HQ * D),
          stored(kvs[i]!.k, dtype),
          stored(kvs[i]!.v, dtype),
          lengths[i]!,
          variant === 'plain'
            ? undefined
            : { scoreMod: (s) => 5 * Math.tanh(s / 5), mask: (pos) => pos.q - pos.kv < 37 },
        );
        expect(relativeError(out.subarray(i * HQ * D, (i + 1) * HQ * D), ref), `seq ${i}`).toBeLessThan(
          TOLERANCE[dtype],
        );
      });
      expect(sparse).toBeGreaterThan(0);
      if (guard) expect(Math.max(...sel.guardAdded)).toBeGreaterThan(0);
      reset(attn);
    },
    300_000,
  );
});

describe('chunk metadata', () => {
  function summary(k: Float32Array, chunk: number, head: number): Float64Array {
    const out = new Float64Array(META_VECTORS * D);
    for (let i = 0; i < D; i++) {
      const xs = Array.from({ length: C }, (_, t) => k[((chunk * C + t) * HKV + head) * D + i]!);
      const mean = xs.reduce((a, b) => a + b, 0) / C;
      out[i] = mean;
      out[D + i] = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / C;
      out[2 * D + i] = Math.min(...xs);
      out[3 * D + i] = Math.max(...xs);
    }
    return out;
  }

  test('is computed when a chunk fills (prefill and decode writes), shared by sharers, and counted in stats()', async () => {
    const attn = await twoLayers('f32', { mass: 0.9 }, 16 * 64);
    const meta = attn.chunkMetadata!;
    const length = 3 * C + 5;
    const { seq } = attn.insert(Array.from({ length }, (_, i) => i));
    const { k, v } = makeKv(length + C, SEED + 3);
    write(attn, seq, 0, k.subarray(0, length * HKV * D), v.subarray(0, length * HKV * D));
    const slots = attn.cache.chunksOf(seq);
    for (let layer = 0; layer < 2; layer++) {
      for (let j = 0; j < 3; j++) expect(meta.has(layer, slots[j]!)).toBe(true);
      expect(meta.has(layer, slots[3]!)).toBe(false); // the partial tail
    }
    for (let j = 0; j < 3; j++) {
      const got = meta.read(1, slots[j]!);
      for (let h = 0; h < HKV; h++)
        expect(
          relativeError(got.subarray(h * META_VECTORS * D, (h + 1) * META_VECTORS * D), summary(k, j, h)),
        ).toBeLessThan(1e-6);
    }
    // Decode steps fill the tail: its metadata appears with the write of its last token.
    for (let t = length; t < 4 * C; t++) {
      attn.appendStep([seq], [t]);
      for (let layer = 0; layer < 2; layer++)
        attn.writeDecodeKV(
          layer,
          k.subarray(t * HKV * D, (t + 1) * HKV * D),
          v.subarray(t * HKV * D, (t + 1) * HKV * D),
        );
      expect(meta.has(1, slots[3]!)).toBe(t === 4 * C - 1);
    }
    const got = meta.read(1, slots[3]!);
    expect(relativeError(got.subarray(0, META_VECTORS * D), summary(k, 3, 0))).toBeLessThan(1e-6);
    // A second sequence sharing the prefix shares its chunks, hence its metadata.
    const other = attn.insert([...Array.from({ length: 4 * C }, (_, i) => i), 999]);
    expect(other.matchedTokens).toBe(4 * C);
    const stats = attn.stats().sparseMetadata!;
    expect(stats.entries).toBe(2 * 4); // 4 full chunks × 2 layers, nothing duplicated
    expect(stats.bytesInUse).toBe(8 * HKV * META_VECTORS * D * 4);
    expect(stats.bytes).toBe(2 * 64 * HKV * META_VECTORS * D * 4);
    expect(stats.late).toBe(0);
  });

  test('is freed and reused with its slot: no stale metadata after reuse (fast-check)', async () => {
    const attn = await twoLayers('bf16', { mass: 0.9 }, 6 * C); // 6 slots: new prompts reuse them
    const meta = attn.chunkMetadata!;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 1_000_000 }),
        fc.integer({ min: 1, max: 4 }),
        async (seed, chunks) => {
          reset(attn);
          attn.cache.evict();
          const length = chunks * C;
          const { seq } = attn.insert(
            Array.from({ length }, (_, i) => (seed * 31 + i * 1_000_003) % 2 ** 31),
          );
          const slots = attn.cache.chunksOf(seq);
          for (const slot of slots)
            for (let layer = 0; layer < 2; layer++) expect(meta.has(layer, slot)).toBe(false);
          const { k, v } = makeKv(length, seed);
          // Half a chunk first: still no metadata for the slot being filled.
          const half = (chunks - 1) * C + C / 2;
          write(attn, seq, 0, k.subarray(0, half * HKV * D), v.subarray(0, half * HKV * D));
          expect(meta.has(1, slots[chunks - 1]!)).toBe(false);
          write(attn, seq, half, k.subarray(half * HKV * D), v.subarray(half * HKV * D));
          const kb = stored(k, 'bf16');
          for (let j = 0; j < chunks; j++) {
            const got = fromHost(meta.read(1, slots[j]!), 'bf16');
            expect(relativeError(got.subarray(0, META_VECTORS * D), summary(kb, j, 0))).toBeLessThan(
              TOLERANCE.bf16,
            );
          }
          attn.release(seq);
          attn.cache.evict();
        },
      ),
      { seed: SEED, numRuns: 10 },
    );
  });

  test('rollback into a full chunk drops its summary; extend refills it (multi-token queries)', async () => {
    const attn = await twoLayers('bf16', { mass: 0.9 }, 8 * C);
    const meta = attn.chunkMetadata!;
    reset(attn);
    const length = 2 * C;
    const { seq } = attn.insert(Array.from({ length }, (_, i) => 7 + i));
    const { k, v } = makeKv(length + 3, 99);
    write(attn, seq, 0, k.subarray(0, length * HKV * D), v.subarray(0, length * HKV * D));
    const tail = attn.cache.chunksOf(seq)[1]!;
    expect(meta.has(1, tail)).toBe(true);
    // Three rejected drafts cut the full tail chunk short: its summary no longer describes it.
    attn.rollback(seq, 3);
    expect(attn.cache.chunksOf(seq)[1]).toBe(tail); // truncated in place (sole owner)
    expect(meta.has(1, tail)).toBe(false);
    // Re-extending to a full chunk writes a summary again, of the new keys.
    attn.extend([seq], [[1, 2, 3]]);
    const redo = k.subarray((length - 3) * HKV * D, length * HKV * D);
    const dtype = attn.spec.dtype.kv;
    for (let layer = 0; layer < attn.layers; layer++)
      attn.writeDecodeKV(layer, toHost(redo, dtype), toHost(v.subarray(0, 3 * HKV * D), dtype));
    expect(meta.has(1, tail)).toBe(true);
    // A multi-token attend runs dense (PSA selects for one-token rows), over every token.
    const q = makeQ(3, 5);
    const out = fromHost(
      attn.attend(1, toHost(q, attn.spec.dtype.q), poisoned(attn, 3)),
      attn.spec.dtype.out,
    );
    expect(attn.selection).toBeUndefined();
    expect(Array.from(out).every(Number.isFinite)).toBe(true);
    attn.release(seq);
  });
});
