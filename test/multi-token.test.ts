// Multi-token queries over the prefix tree: extend + attend (prefill of a suffix, chunked
// prefill, speculative verification), rollback and readKV, checked against float64 attention
// with each query token's causal length, on NaN-poisoned outputs.

import { describe, expect, test } from 'vitest';
import type { DType, KernelSpec, Partition } from '../dsl/spec.ts';
import { Attention } from '../index.ts';
import {
  ArgumentError,
  CapacityError,
  ShapeError,
  UnknownSequenceError,
  UnwrittenKvError,
} from '../runtime/errors.ts';
import { fromHost, toHost } from '../runtime/half.ts';
import { relativeError, TOLERANCE } from '../runtime/reference.ts';
import { gqaSpec, tinySpec } from './specs.ts';
import { MultiTokenModel, poisoned, Rng } from './workload-model.ts';

const SEED = Number(process.env.CHUNKATTN_SEED ?? Math.floor(Math.random() * 2 ** 31));
const C = 16;

async function open(spec: KernelSpec, mode?: Partition, capacityTokens = C * 400, layers = 1) {
  return Attention.create(spec, { layers, capacityTokens, target: 'cpu', ...(mode && { mode }) });
}

function tokens(rng: Rng, n: number): number[] {
  return Array.from({ length: n }, () => rng.int(50));
}

describe(`prefill of n tokens after a prefix of 0 / partial / whole chunks (cpu, seed ${SEED})`, () => {
  const cases: [DType, 'plain' | 'softcap-window', Partition][] = [
    ['f16', 'plain', 'two-phase'],
    ['bf16', 'plain', 'two-phase'],
    ['bf16', 'softcap-window', 'two-phase'],
    ['f32', 'softcap-window', 'sequence-first'],
    ['f32', 'plain', 'chunk-first'],
  ];
  test.each(cases)('%s, %s, %s', async (dtype, variant, mode) => {
    const spec = tinySpec(dtype, variant, ['cpu']);
    const attn = await open(spec, mode);
    try {
      const model = new MultiTokenModel(attn, spec, new Rng(SEED));
      for (const prefix of [0, C + 5, 2 * C]) {
        const base = tokens(model.rng, prefix);
        for (const n of [1, 2, 17, 64, 300]) {
          // Two sequences share the prefix (a fork), one extends by n: its query rows see the
          // shared chunks through phase 1 and its own through the causal mask.
          const seq = model.insert(base);
          const [twin] = model.fork(seq, 1);
          model.extendStep([seq], [n]);
          model.release(seq);
          model.release(twin!);
        }
        // The prefill of an inserted prompt whose prefix is matched in the cache.
        const first = model.insert([...base, ...tokens(model.rng, 40)]);
        const second = model.prefill([...base, ...tokens(model.rng, 23)]);
        model.release(first);
        model.release(second);
      }
      attn.cache.validate();
      expect(model.attends).toBe(18);
    } finally {
      attn.close();
    }
  });
});

describe(`ragged batches with nested sharing (cpu, seed ${SEED})`, () => {
  const cases: [string, () => KernelSpec][] = [
    ['GQA 4, f16', () => tinySpec('f16', 'plain', ['cpu'])],
    ['GQA 1, f16', () => gqaSpec(1)],
    ['GQA 8, bf16', () => gqaSpec(8)],
    ['GQA 4, bf16, soft-cap + window', () => tinySpec('bf16', 'softcap-window', ['cpu'])],
  ];
  test.each(cases)('%s', async (_name, makeSpec) => {
    const spec = makeSpec();
    const attn = await open(spec, 'two-phase', C * 800, 2);
    try {
      const model = new MultiTokenModel(attn, spec, new Rng(SEED + 7));
      const { rng } = model;
      const base = tokens(rng, 3 * C + 4);
      const systems = [[], base.slice(0, C - 3), base.slice(0, C), base.slice(0, 2 * C + 1), base];
      for (let round = 0; round < 4; round++) {
        while (model.seqs.size < 1 + rng.int(33))
          model.insert([...rng.pick(systems), ...tokens(rng, rng.int(C + 2))]);
        const live = [...model.seqs.keys()].sort(() => rng.next() - 0.5);
        const batch = live.slice(0, 1 + rng.int(live.length));
        model.extendStep(
          batch,
          batch.map(() => 1 + rng.int(rng.next() < 0.3 ? 70 : 9)),
        );
        for (const seq of live) if (rng.next() < 0.3 && model.seqs.size > 1) model.release(seq);
      }
      attn.cache.validate();
      expect(model.attends).toBe(8);
    } finally {
      attn.close();
    }
  });
});

describe('extend + attend equals the same tokens decoded one step at a time', () => {
  test.each([
    ['f16', 'two-phase'],
    ['bf16', 'two-phase'],
    ['bf16', 'sequence-first'],
  ] as const)('%s, %s', async (dtype, mode) => {
    const spec = tinySpec(dtype, 'softcap-window', ['cpu']);
    const multi = await open(spec, mode);
    const single = await open(spec, mode);
    try {
      const rng = new Rng(SEED + 3);
      const prompt = tokens(rng, 2 * C + 3);
      const kvElems = spec.heads.kv * spec.headDim;
      const qElems = spec.heads.q * spec.headDim;
      const random = (n: number) => Float32Array.from({ length: n }, () => rng.next() * 2 - 1);
      const promptK = toHost(random(prompt.length * kvElems), dtype);
      const promptV = toHost(random(prompt.length * kvElems), dtype);
      // Two sharers of the prompt in each instance; sequence a extends by n.
      const seqs = [multi, single].map((attn) => {
        const { seq } = attn.insert(prompt);
        attn.writeKV(0, seq, 0, promptK, promptV);
        attn.fork(seq, 1);
        return seq;
      });
      const n = 37;
      const draft = tokens(rng, n);
      const k = toHost(random(n * kvElems), dtype);
      const v = toHost(random(n * kvElems), dtype);
      const q = toHost(random(n * qElems), dtype);
      multi.extend([seqs[0]!], [draft]);
      multi.writeDecodeKV(0, k, v);
      const together = fromHost(multi.attend(0, q, poisoned(dtype, n * qElems)), dtype);
      const oneByOne = new Float32Array(n * qElems);
      for (let i = 0; i < n; i++) {
        single.appendStep([seqs[1]!], [draft[i]!]);
        single.writeDecodeKV(
          0,
          k.subarray(i * kvElems, (i + 1) * kvElems),
          v.subarray(i * kvElems, (i + 1) * kvElems),
        );
        const out = single.decode(0, q.subarray(i * qElems, (i + 1) * qElems), poisoned(dtype, qElems));
        oneByOne.set(fromHost(out, dtype), i * qElems);
      }
      expect(relativeError(together, oneByOne)).toBeLessThanOrEqual(TOLERANCE[dtype]);
    } finally {
      multi.close();
      single.close();
    }
  });
});

describe('speculative verification: extend k drafts, attend, roll back the rejected', () => {
  test('rollback truncates in place, copies a shared tail, and later steps match the reference', async () => {
    const spec = tinySpec('f32', 'plain', ['cpu']);
    const attn = await open(spec, 'two-phase');
    try {
      const model = new MultiTokenModel(attn, spec, new Rng(SEED + 11));
      const seq = model.insert(tokens(model.rng, C + 3));
      model.extendStep([seq], [5]);
      model.rollback(seq, 3); // a private partial tail: truncated in place
      expect(attn.cache.length(seq)).toBe(C + 5);
      model.extendStep([seq], [C]); // the tail fills and a new chunk opens
      const [twin] = model.fork(seq, 1);
      const before = attn.cache.chunksOf(twin!);
      // seq's cut falls inside a chunk it now shares with its twin: copy-on-write.
      const full = Math.floor(attn.cache.length(seq) / C) * C;
      const cut = attn.cache.length(seq) - (full - 2);
      model.rollback(seq, cut);
      expect(Array.from(attn.cache.chunksOf(twin!))).toEqual(Array.from(before));
      expect(attn.cache.chunksOf(seq).at(-1)).not.toBe(before[Math.floor((full - 3) / C)]);
      attn.cache.validate();
      model.extendStep([seq, twin!], [4, 1]);
      model.checkAttend(0, [seq, twin!], [3, 2], { seqs: [seq, twin!], counts: [3, 2] });
      expect(() => attn.rollback(seq, attn.cache.length(seq) + 1)).toThrow(ArgumentError);
      expect(() => attn.rollback(seq, 0)).toThrow(ArgumentError);
      expect(() => attn.rollback(12345, 1)).toThrow(UnknownSequenceError);
      model.rollback(seq, attn.cache.length(seq)); // back to empty
      expect(attn.cache.length(seq)).toBe(0);
      attn.cache.validate();
    } finally {
      attn.close();
    }
  });
});

describe('readKV', () => {
  test.each(['f32', 'f16', 'bf16'] as const)(
    'round-trips %s K/V bit for bit and refuses unwritten ranges',
    async (dtype) => {
      const spec = tinySpec(dtype, 'plain', ['cpu']);
      const attn = await open(spec, 'two-phase', C * 40, 2);
      try {
        const rng = new Rng(SEED + 5);
        const kvElems = spec.heads.kv * spec.headDim;
        const n = 2 * C + 7;
        const random = () =>
          toHost(
            Float32Array.from({ length: n * kvElems }, () => rng.next() * 2 - 1),
            dtype,
          );
        const { seq } = attn.insert(tokens(rng, n));
        const k = random();
        const v = random();
        attn.writeKV(1, seq, 0, k, v);
        const all = attn.readKV(1, seq, 0, n);
        expect(all.k).toEqual(k);
        expect(all.v).toEqual(v);
        const part = attn.readKV(1, seq, C - 3, 2 * C + 1);
        expect(part.k).toEqual(k.subarray((C - 3) * kvElems, (2 * C + 1) * kvElems));
        expect(part.v).toEqual(v.subarray((C - 3) * kvElems, (2 * C + 1) * kvElems));
        expect(attn.readKV(1, seq, 4, 4).k.length).toBe(0);
        // Layer 0 was never written; a partial write leaves the rest unwritten.
        expect(() => attn.readKV(0, seq, 0, 1)).toThrow(UnwrittenKvError);
        attn.writeKV(0, seq, 0, k.subarray(0, (C + 2) * kvElems), v.subarray(0, (C + 2) * kvElems));
        expect(attn.readKV(0, seq, 0, C + 2).k).toEqual(k.subarray(0, (C + 2) * kvElems));
        expect(() => attn.readKV(0, seq, C, C + 3)).toThrow(UnwrittenKvError);
        expect(() => attn.readKV(1, seq, 0, n + 1)).toThrow(ArgumentError);
        expect(() => attn.readKV(1, seq, 5, 4)).toThrow(ArgumentError);
        expect(() => attn.readKV(2, seq, 0, 1)).toThrow(ArgumentError);
        expect(() => attn.readKV(1, seq + 1, 0, 1)).toThrow(UnknownSequenceError);
        // Through a fork (shared chunks, copied tail) the stored bits are the same.
        const [twin] = attn.fork(seq, 1);
        expect(attn.readKV(1, twin!, 0, n).k).toEqual(k);
      } finally {
        attn.close();
      }
    },
  );
});

describe('multi-token arguments are checked, with nothing changed', () => {
  test('extend, writeDecodeKV, attend and decode refuse bad input', async () => {
    const spec = tinySpec('f32', 'plain', ['cpu']);
    const attn = await open(spec, 'two-phase', C * 6);
    try {
      const { seq } = attn.insert([1, 2, 3]);
      const { seq: other } = attn.insert([4, 5]);
      const dump = attn.cache.dump();
      const kvElems = spec.heads.kv * spec.headDim;
      const qElems = spec.heads.q * spec.headDim;
      expect(() => attn.extend([seq, seq], [[1], [2]])).toThrow(ArgumentError);
      expect(() => attn.extend([seq], [[1, -1]])).toThrow(ArgumentError);
      expect(() => attn.extend([seq], [[]])).toThrow(ArgumentError);
      expect(() => attn.extend([seq], [[1], [2]])).toThrow(ShapeError);
      expect(() => attn.extend([99], [[1]])).toThrow(UnknownSequenceError);
      expect(() => attn.extend([seq, other], [new Array(C * 5).fill(1), [1]])).toThrow(CapacityError);
      expect(attn.cache.dump()).toBe(dump);

      attn.writeKV(0, seq, 0, new Float32Array(3 * kvElems), new Float32Array(3 * kvElems));
      attn.extend([seq], [[7, 8, 9, 10]]);
      expect(() => attn.writeDecodeKV(0, new Float32Array(kvElems), new Float32Array(kvElems))).toThrow(
        ShapeError,
      );
      // Its new tokens' K/V is not written yet.
      expect(() => attn.attend(0, new Float32Array(4 * qElems))).toThrow(UnwrittenKvError);
      attn.writeDecodeKV(0, new Float32Array(4 * kvElems), new Float32Array(4 * kvElems));
      expect(() => attn.attend(0, new Float32Array(3 * qElems))).toThrow(ShapeError);
      expect(() => attn.decode(0, new Float32Array(qElems))).toThrow(ArgumentError);
      expect(() =>
        attn.attend(0, new Float32Array(8 * qElems), undefined, { seqs: [seq], counts: [8] }),
      ).toThrow(ArgumentError);
      expect(() => attn.attend(0, new Float32Array(qElems), undefined, { seqs: [seq], counts: [0] })).toThrow(
        ArgumentError,
      );
      expect(() =>
        attn.attend(0, new Float32Array(2 * qElems), undefined, { seqs: [seq, seq], counts: [1, 1] }),
      ).toThrow(ShapeError);
      const q = Float32Array.from({ length: 4 * qElems }, (_, i) => Math.sin(i));
      const out = attn.attend(0, q, poisoned('f32', 4 * qElems));
      expect(Array.from(out).every(Number.isFinite)).toBe(true);
      // The worker-thread variant computes the same, and the Attention is busy meanwhile.
      const pending = attn.attendAsync(0, q, poisoned('f32', 4 * qElems));
      expect(() => attn.rollback(seq, 1)).toThrow(/in flight/);
      expect(Array.from(await pending)).toEqual(Array.from(out));
    } finally {
      attn.close();
    }
  });
});

describe(`the CUDA source on the CPU (emu): one context row per query token (seed ${SEED})`, () => {
  test.each([
    ['f16', 'plain', 'two-phase'],
    ['bf16', 'softcap-window', 'two-phase'],
    ['f16', 'plain', 'sequence-first'],
  ] as const)(
    '%s, %s, %s: prefill, ragged extend and rollback match float64 attention',
    async (dtype, variant, mode) => {
      const spec = tinySpec(dtype, variant, ['emu']);
      const attn = await Attention.create(spec, {
        layers: 1,
        capacityTokens: C * 200,
        target: 'emu',
        mode,
      });
      try {
        // Two-phase stacks every sharer's query rows in the phase-1 tensor-core kernel; sequence-first
        // streams each query row's KV on its own.
        expect(attn.mode).toBe(mode);
        attn.module.resetStats(); // the module (and its counters) is shared with earlier cases
        const model = new MultiTokenModel(attn, spec, new Rng(SEED + 13));
        const base = tokens(model.rng, 2 * C + 5);
        const a = model.insert(base);
        const b = model.prefill([...base.slice(0, 2 * C), ...tokens(model.rng, 9)]);
        const [c] = model.fork(a, 1);
        model.extendStep([b, a, c!], [17, 2, 1]);
        model.rollback(a, 2);
        model.extendStep([a], [C + 3]);
        attn.cache.validate();
        expect(model.attends).toBe(3);
        const phase1 = attn.module.stats().kernels['decode_phase1']?.launches ?? 0;
        if (mode === 'two-phase') expect(phase1).toBeGreaterThan(0);
        else expect(phase1).toBe(0);
      } finally {
        attn.close();
      }
    },
  );

  test('two-phase: the shared prompt K/V is read once for all stacked query rows (one m-tile)', async () => {
    const spec = tinySpec('f16', 'plain', ['emu']); // Hq 8 / Hkv 2 (G = 4), d = 64, c = 16
    const attn = await Attention.create(spec, { layers: 1, capacityTokens: C * 200, target: 'emu' });
    try {
      // Phase-1 K/V bytes of one extend of 5 tokens by `sharers` sequences of one 4-chunk prompt.
      const phase1KvBytes = (sharers: number, seed: number): number => {
        const model = new MultiTokenModel(attn, spec, new Rng(seed));
        const prompt = tokens(model.rng, 4 * C);
        // Each sequence diverges after the prompt, so all 4 prompt chunks are shared.
        const seqs = Array.from({ length: sharers }, () =>
          model.insert([...prompt, ...tokens(model.rng, 3)]),
        );
        attn.module.resetStats();
        // At most 4 sequences × 5 query tokens × G = 4: 80 stacked rows, one m-tile of 128.
        model.extendStep(
          seqs,
          seqs.map(() => 5),
        );
        const p1 = attn.module.stats().kernels['decode_phase1'];
        expect(p1?.launches).toBe(1);
        for (const seq of seqs) attn.release(seq);
        attn.cache.evict();
        return p1!.requestedBytes.kv;
      };
      const prompt = 4 * C * spec.heads.kv * spec.headDim * 2 * 2; // K and V, f16
      const alone = phase1KvBytes(1, SEED + 29);
      const shared = phase1KvBytes(4, SEED + 31);
      // alone = prompt + own; shared = prompt + 4 × own: the prompt is read once, whoever shares it.
      expect(alone).toBeGreaterThan(prompt);
      expect(shared).toBe(prompt + 4 * (alone - prompt));
    } finally {
      attn.close();
    }
  });
});
