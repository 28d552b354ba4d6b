// The native addon with real cpu modules built by codegen from `attention()` specs: pools
// (writeKv / readPool / copyChunk), decode against the float64 reference on random trees and on
// contexts of the runtime's PrefixTree, every kind of bad call as a typed error, and 1,000 random
// calls that never crash the process and never reach the module's own argument checks.

import { beforeAll, describe, expect, test } from 'vitest';
import { buildModule } from '../codegen/index.ts';
import { attention } from '../dsl/index.ts';
import { ArgumentError, BusyError, KernelError, ModuleError, ShapeError } from '../runtime/errors.ts';
import { ioRowMap, packContext } from '../runtime/kernel-context.ts';
import {
  badDecodeCases,
  decodeArgs,
  expectedOutput,
  fillPool,
  fixedTree,
  fromHost,
  fuzz,
  poisoned,
  type Rng,
  randomInt,
  randomQ,
  randomTree,
  rawDecodeArgs,
  seededRng,
  shuffle,
  toDecodeArgs,
  toHost,
} from '../runtime/native/fixtures/testing.ts';
import {
  type DecodeArgs,
  type HostData,
  type KvPool,
  NATIVE_ERROR_CLASSES,
  NativeModule,
} from '../runtime/native-module.ts';
import { PrefixTree } from '../runtime/prefix-tree.ts';
import { referenceDecode, relativeError, TOLERANCE } from '../runtime/reference.ts';

const CLASSES = { ShapeError, ArgumentError, ModuleError, KernelError, BusyError } as const;

const f32Spec = attention({
  name: 'native-test-f32',
  heads: { q: 4, kv: 2 },
  headDim: 64,
  dtype: 'f32',
  chunkSize: 16,
  targets: ['cpu'],
});

const bf16Spec = attention({
  name: 'native-test-bf16',
  heads: { q: 8, kv: 2 },
  headDim: 64,
  dtype: 'bf16',
  chunkSize: 16,
  params: { softcap: 20, window: 40 },
  scoreMod: (s, _pos, p) => p.softcap * Math.tanh(s / p.softcap),
  mask: (pos, p) => pos.q - pos.kv < p.window,
  targets: ['cpu'],
});

const emuSpec = attention({
  name: 'native-test-emu',
  heads: { q: 4, kv: 2 },
  headDim: 64,
  dtype: 'bf16',
  chunkSize: 16,
  targets: ['emu'],
});

const bf16Variant = {
  scoreMod: (s: number, _pos: unknown, p: readonly number[]) => p[0]! * Math.tanh(s / p[0]!),
  mask: (pos: { q: number; kv: number }, p: readonly number[]) => pos.q - pos.kv < p[1]!,
  params: [20, 40],
};

function thrownBy(f: () => unknown): unknown {
  try {
    f();
  } catch (error) {
    return error;
  }
  return undefined;
}

function expectNativeError(
  f: () => unknown,
  cls: (typeof CLASSES)[keyof typeof CLASSES],
  code: string,
  message?: RegExp,
) {
  const error = thrownBy(f);
  expect(error, `expected ${cls.name} ${code}`).toBeInstanceOf(cls);
  expect((error as { code?: string }).code, (error as Error).message).toBe(code);
  if (message) expect((error as Error).message).toMatch(message);
}

/** Worst relative error over io rows; io rows without a reference must still be poisoned. */
function worstError(module: NativeModule, out: HostData, expected: (Float64Array | null)[]): number {
  const rowElements = module.info.qHeads * module.info.headDim;
  const values = fromHost(out, module.info.dtype.out);
  let worst = 0;
  expected.forEach((ref, io) => {
    const got = values.subarray(io * rowElements, (io + 1) * rowElements);
    if (ref === null) {
      if (!got.every(Number.isNaN)) worst = Number.POSITIVE_INFINITY;
      return;
    }
    worst = Math.max(worst, relativeError(got, ref));
  });
  return worst;
}

let f32: NativeModule;
let bf16: NativeModule;
let emu: NativeModule;
let f32Key: string;

beforeAll(async () => {
  const [builtF32, builtBf16, builtEmu] = await Promise.all([
    buildModule(f32Spec, { target: 'cpu' }),
    buildModule(bf16Spec, { target: 'cpu' }),
    buildModule(emuSpec, { target: 'emu' }),
  ]);
  f32 = NativeModule.load(builtF32.libraryPath);
  bf16 = NativeModule.load(builtBf16.libraryPath);
  emu = NativeModule.load(builtEmu.libraryPath);
  f32Key = builtF32.manifest.key;
});

describe('real cpu modules', () => {
  test('info describes the spec', () => {
    expect(f32.info).toMatchObject({
      abi: 2,
      name: 'native-test-f32',
      key: f32Key,
      target: 'cpu',
      qHeads: 4,
      kvHeads: 2,
      headDim: 64,
      chunkSize: 16,
      dtype: { q: 'f32', kv: 'f32', out: 'f32' },
      numParams: 0,
    });
    expect(bf16.info).toMatchObject({
      dtype: { q: 'bf16', kv: 'bf16', out: 'bf16' },
      numParams: 2,
      qHeads: 8,
    });
    expect(typeof f32.info.phase1).toBe('boolean');
  });

  test('pools start zeroed; writeKv / readPool round-trip f32 exactly and bf16 bits exactly', () => {
    const rng = seededRng(11);
    const pool = f32.allocPool(4);
    expect(f32.readPool(pool, 3).k.every((x) => x === 0)).toBe(true);
    const tokens = 5;
    const slots = Int32Array.of(0, 0, 2, 3, 3);
    const offsets = Int32Array.of(0, 15, 7, 1, 2);
    const k = Float32Array.from({ length: tokens * 2 * 64 }, () => rng() - 0.5);
    const v = Float32Array.from({ length: tokens * 2 * 64 }, () => rng() - 0.5);
    f32.writeKv(pool, slots, offsets, k, v);
    for (let i = 0; i < tokens; i++) {
      const read = f32.readPool(pool, slots[i]!);
      for (let h = 0; h < 2; h++) {
        const at = (h * 16 + offsets[i]!) * 64;
        expect(Array.from(read.k.subarray(at, at + 64))).toEqual(
          Array.from(k.subarray((i * 2 + h) * 64, (i * 2 + h + 1) * 64)),
        );
        expect(Array.from(read.v.subarray(at, at + 64))).toEqual(
          Array.from(v.subarray((i * 2 + h) * 64, (i * 2 + h + 1) * 64)),
        );
      }
    }
    f32.free(pool);

    const pool16 = bf16.allocPool(2);
    const values = Float32Array.from({ length: 2 * 64 }, () => rng() * 4 - 2);
    const bits = toHost(values, 'bf16') as Uint16Array;
    bf16.writeKv(pool16, Int32Array.of(1), Int32Array.of(4), bits, bits);
    bf16.writeKv(pool16, Int32Array.of(0), Int32Array.of(4), values, values);
    const asBits = bf16.readPool(pool16, 1);
    const converted = bf16.readPool(pool16, 0);
    expect(asBits.k).toBeInstanceOf(Uint16Array);
    for (let h = 0; h < 2; h++) {
      const at = (h * 16 + 4) * 64;
      expect(Array.from(asBits.k.subarray(at, at + 64))).toEqual(
        Array.from(bits.subarray(h * 64, (h + 1) * 64)),
      );
      // f32 sources are rounded to bf16 by the module: within half a bf16 ulp of the bits we round to.
      const got = fromHost(converted.k.subarray(at, at + 64) as Uint16Array, 'bf16');
      for (let d = 0; d < 64; d++)
        expect(Math.abs(got[d]! - values[h * 64 + d]!)).toBeLessThanOrEqual(
          Math.abs(values[h * 64 + d]!) / 256,
        );
    }
    bf16.free(pool16);
  });

  test('copyChunk copies the first numTokens tokens of K and V', () => {
    const rng = seededRng(12);
    const pool = f32.allocPool(3);
    fillPool(f32, pool, [1], rng);
    f32.copyChunk(pool, 1, 2, 9);
    const src = f32.readPool(pool, 1);
    const dst = f32.readPool(pool, 2);
    for (let h = 0; h < 2; h++) {
      for (let t = 0; t < 16; t++) {
        const at = (h * 16 + t) * 64;
        const expected = t < 9 ? Array.from(src.v.subarray(at, at + 64)) : new Array(64).fill(0);
        expect(Array.from(dst.v.subarray(at, at + 64))).toEqual(expected);
      }
    }
    f32.free(pool);
  });

  test('decode matches float64 attention on random trees (runs, no runs, one-chunk runs; 1 and all threads)', () => {
    const rng = seededRng(13);
    const pool = f32.allocPool(96);
    for (let trial = 0; trial < 24; trial++) {
      const tree = randomTree(rng, {
        chunkSize: 16,
        numSlots: 96,
        phase1: f32.info.phase1 && trial % 3 !== 0,
        maxRunChunks: trial % 3 === 2 ? 1 : undefined,
      });
      const shadow = fillPool(f32, pool, tree.usedSlots, rng);
      const q = randomQ(f32, tree.numIoRows, rng);
      const args = decodeArgs(f32, tree, q, 0.125, { numThreads: trial % 2 });
      f32.decode(pool, args);
      expect(worstError(f32, args.out, expectedOutput(f32, tree, shadow, q, 0.125))).toBeLessThan(
        TOLERANCE.f32,
      );
    }
    f32.free(pool);
  });

  test('bf16 decode with a soft cap and a window (params) matches the reference', () => {
    const rng = seededRng(14);
    const pool = bf16.allocPool(96);
    for (let trial = 0; trial < 12; trial++) {
      const tree = randomTree(rng, {
        chunkSize: 16,
        numSlots: 96,
        phase1: bf16.info.phase1 && trial % 4 !== 0,
      });
      const shadow = fillPool(bf16, pool, tree.usedSlots, rng, trial % 2 === 0);
      const q = randomQ(bf16, tree.numIoRows, rng);
      const args = decodeArgs(bf16, tree, q, 0.2, { params: Float32Array.of(20, 40) });
      bf16.decode(pool, args);
      expect(
        worstError(bf16, args.out, expectedOutput(bf16, tree, shadow, q, 0.2, bf16Variant)),
      ).toBeLessThan(TOLERANCE.bf16);
    }
    bf16.free(pool);
  });

  test('decode over PrefixTree contexts (insert, fork, append; minSharers 2, 1, Infinity) matches the reference', () => {
    const rng = seededRng(15);
    const { kvHeads, headDim, chunkSize } = f32.info;
    const tree = new PrefixTree({ chunkSize, maxCapacity: 256 });
    const pool = f32.allocPool(256);
    // K/V of a token depend only on its id and position, as in a model.
    const kvOf = (token: number, position: number, which: number) => {
      const local = seededRng(token * 7919 + position * 104729 + which * 1299709);
      return Float32Array.from({ length: kvHeads * headDim }, () => local() * 2 - 1);
    };
    const write = (
      slots: Int32Array,
      offsets: Int32Array,
      tokens: ArrayLike<number>,
      positions: ArrayLike<number>,
    ) => {
      const n = slots.length;
      const k = new Float32Array(n * kvHeads * headDim);
      const v = new Float32Array(n * kvHeads * headDim);
      for (let i = 0; i < n; i++) {
        k.set(kvOf(tokens[i]!, positions[i]!, 0), i * kvHeads * headDim);
        v.set(kvOf(tokens[i]!, positions[i]!, 1), i * kvHeads * headDim);
      }
      f32.writeKv(pool, slots, offsets, k, v);
    };
    const insert = (prompt: number[]) => {
      const result = tree.insert(prompt);
      const positions = prompt.map((_, i) => i).slice(result.matchedTokens);
      write(result.writes.slots, result.writes.offsets, prompt.slice(result.matchedTokens), positions);
      return result.seq;
    };
    const randomTokens = (n: number, r: Rng) => Array.from({ length: n }, () => randomInt(r, 0, 1000));
    const system = randomTokens(40, rng);
    const seqs = [
      insert([...system, ...randomTokens(5, rng)]),
      insert([...system, ...randomTokens(20, rng)]),
      insert([...system.slice(0, 32), ...randomTokens(3, rng)]),
      insert(randomTokens(17, rng)),
      insert([...system]),
    ];
    const forked = tree.fork(seqs[0]!, 2);
    for (const copy of forked.copies) f32.copyChunk(pool, copy.srcSlot, copy.dstSlot, copy.tokens);
    seqs.push(...forked.seqs);

    const check = (minSharers: number) => {
      const ctx = tree.context({ minSharers });
      const live = tree.sequences();
      const ioSeqs = shuffle(rng, [...live, -1]);
      const rowIo = ioRowMap(ctx, ioSeqs);
      const q = randomQ(f32, ioSeqs.length, rng);
      const out = poisoned(q.length, 'f32');
      const args: DecodeArgs = {
        q,
        out,
        context: packContext({ ...ctx, rowIo, numIoRows: ioSeqs.length }),
        softmaxScale: 0.125,
      };
      if (!f32.info.phase1 && ctx.runs.length > 0) {
        expectNativeError(() => f32.decode(pool, args), ArgumentError, 'ERR_CA_UNSUPPORTED');
        return;
      }
      f32.decode(pool, args);
      const qValues = fromHost(q, 'f32');
      ioSeqs.forEach((seq, io) => {
        const got = fromHost(out, 'f32').subarray(io * 256, (io + 1) * 256);
        if (seq === -1) {
          expect(got.every(Number.isNaN)).toBe(true);
          return;
        }
        const tokens = tree.tokensOf(seq);
        const k = new Float64Array(tokens.length * kvHeads * headDim);
        const v = new Float64Array(tokens.length * kvHeads * headDim);
        tokens.forEach((token, t) => {
          k.set(kvOf(token, t, 0), t * kvHeads * headDim);
          v.set(kvOf(token, t, 1), t * kvHeads * headDim);
        });
        const [ref] = referenceDecode({ qHeads: 4, kvHeads, headDim, softmaxScale: 0.125 }, [
          { seq, q: qValues.subarray(io * 256, (io + 1) * 256), k, v, length: tokens.length },
        ]);
        expect(relativeError(got, ref!)).toBeLessThan(TOLERANCE.f32);
      });
    };

    for (let step = 0; step < 20; step++) {
      const live = tree.sequences();
      const next = live.map(() => randomInt(rng, 0, 1000));
      const positions = live.map((seq) => tree.length(seq));
      const appended = tree.appendBatch(live, next);
      for (const copy of appended.copies) f32.copyChunk(pool, copy.srcSlot, copy.dstSlot, copy.tokens);
      write(appended.slots, appended.offsets, next, positions);
      if (step % 5 === 4) for (const minSharers of [2, 1, Number.POSITIVE_INFINITY]) check(minSharers);
    }
    f32.free(pool);
  });

  test('emu module: decode matches the reference, counts traffic, and refuses runs it has no kernel for', () => {
    const rng = seededRng(21);
    expect(emu.info.target).toBe('emu');
    const pool = emu.allocPool(64);
    emu.resetStats();
    for (let trial = 0; trial < 4; trial++) {
      const tree = randomTree(rng, { chunkSize: 16, numSlots: 64, phase1: emu.info.phase1 });
      const shadow = fillPool(emu, pool, tree.usedSlots, rng, true);
      const q = randomQ(emu, tree.numIoRows, rng);
      const args = decodeArgs(emu, tree, q, 0.125);
      emu.decode(pool, args);
      expect(worstError(emu, args.out, expectedOutput(emu, tree, shadow, q, 0.125))).toBeLessThan(
        TOLERANCE.bf16,
      );
    }
    const stats = emu.stats();
    expect(stats.launches).toBeGreaterThan(0);
    expect(stats.bytesRead.kv).toBeGreaterThan(0);
    if (!emu.info.phase1) {
      const tree = fixedTree(16);
      const args = decodeArgs(emu, tree, randomQ(emu, tree.numIoRows, rng), 0.125);
      expectNativeError(() => emu.decode(pool, args), ArgumentError, 'ERR_CA_UNSUPPORTED');
    }
    emu.free(pool);
  });

  test('stats and resetStats answer', () => {
    f32.resetStats();
    const stats = f32.stats();
    expect(Object.keys(stats.bytesRead).sort()).toEqual(['context', 'kv', 'out', 'partial', 'q']);
    expect(typeof stats.launches).toBe('number');
  });
});

describe('bad calls on a real module are typed errors', () => {
  let pool: KvPool;
  beforeAll(() => {
    pool = f32.allocPool(8);
    fillPool(f32, pool, fixedTree(16).usedSlots, seededRng(16));
  });

  test('the fixed context itself decodes', () => {
    const tree = fixedTree(16);
    const args = decodeArgs(f32, tree, randomQ(f32, tree.numIoRows, seededRng(17)), 0.125);
    f32.decode(pool, args);
  });

  test('at least 20 kinds of bad decode calls', () => {
    const cases = badDecodeCases(f32.info);
    expect(cases.length).toBeGreaterThanOrEqual(20);
    const tree = fixedTree(16);
    const q = randomQ(f32, tree.numIoRows, seededRng(18));
    for (const { name, mutate, error, code, message } of cases) {
      const args = rawDecodeArgs(f32, tree, q, 0.125);
      mutate(args);
      const thrown = thrownBy(() => f32.decode(pool, toDecodeArgs(args)));
      expect(thrown, name).toBeInstanceOf(CLASSES[error]);
      expect((thrown as { code?: string }).code, `${name}: ${(thrown as Error).message}`).toBe(code);
      if (message) expect((thrown as Error).message, name).toMatch(message);
    }
  });

  test('bf16 module: wrong representations and params', () => {
    const pool16 = bf16.allocPool(8);
    const tree = fixedTree(16);
    const args = decodeArgs(bf16, tree, randomQ(bf16, tree.numIoRows, seededRng(19)), 0.2, {
      params: Float32Array.of(20, 40),
    });
    bf16.decode(pool16, args);
    expectNativeError(
      () => bf16.decode(pool16, { ...args, params: undefined }),
      ShapeError,
      'ERR_CA_DTYPE',
      /params/,
    );
    expectNativeError(
      () => bf16.decode(pool16, { ...args, params: Float32Array.of(20) }),
      ShapeError,
      'ERR_CA_SHAPE',
      /2 parameter/,
    );
    expectNativeError(
      () => bf16.decode(pool16, { ...args, q: new Float32Array(args.q.length) }),
      ShapeError,
      'ERR_CA_DTYPE',
      /bf16/,
    );
    expectNativeError(() => bf16.decode(pool, args), ArgumentError, 'ERR_CA_FOREIGN');
    expectNativeError(() => f32.decode(pool16, args), ArgumentError, 'ERR_CA_FOREIGN');
    bf16.free(pool16);
    expectNativeError(() => bf16.free(pool16), ArgumentError, 'ERR_CA_FREED');
    expectNativeError(() => bf16.decode(pool16, args), ArgumentError, 'ERR_CA_FREED');
  });

  test('pools, writes, copies and reads out of range', () => {
    const kv = new Float32Array(2 * 64);
    const one = Int32Array.of(0);
    expectNativeError(() => f32.writeKv(pool, Int32Array.of(8), one, kv, kv), ArgumentError, 'ERR_CA_RANGE');
    expectNativeError(() => f32.writeKv(pool, one, Int32Array.of(16), kv, kv), ArgumentError, 'ERR_CA_RANGE');
    expectNativeError(() => f32.writeKv(pool, one, one, kv.subarray(1), kv), ShapeError, 'ERR_CA_SHAPE');
    expectNativeError(
      () => f32.writeKv(pool, one, one, new Uint16Array(128), kv),
      ShapeError,
      'ERR_CA_DTYPE',
    );
    expectNativeError(() => f32.copyChunk(pool, 0, 8, 1), ArgumentError, 'ERR_CA_RANGE');
    expectNativeError(() => f32.copyChunk(pool, 0, 1, 17), ArgumentError, 'ERR_CA_RANGE');
    expectNativeError(() => f32.readPool(pool, -1), ArgumentError, 'ERR_CA_RANGE');
    expectNativeError(() => f32.allocPool(0), ArgumentError, 'ERR_CA_RANGE');
    expectNativeError(() => f32.allocPool(2 ** 31 - 1), ArgumentError, 'ERR_CA_RANGE', /memory/);
    expectNativeError(
      () => f32.decode({ k: pool.k, v: pool.v, numSlots: 7 } as KvPool, {} as DecodeArgs),
      ShapeError,
      'ERR_CA_SHAPE',
    );
  });

  test('1,000 random, mostly invalid calls never crash, and the module never sees a bad argument', () => {
    const rng = seededRng(20);
    const tree = fixedTree(16);
    const other = NativeModule.load(f32.path);
    const fuzzPool = f32.allocPool(8);
    fillPool(f32, fuzzPool, tree.usedSlots, rng);
    const report = fuzz(
      {
        module: f32,
        pool: fuzzPool,
        foreignPool: other.allocPool(8),
        tree,
        q: randomQ(f32, tree.numIoRows, rng),
        softmaxScale: 0.125,
        classes: CLASSES,
        errorClasses: NATIVE_ERROR_CLASSES,
      },
      seededRng(31337),
      1000,
    );
    expect(report.untyped).toEqual([]);
    expect(report.leaked).toEqual([]);
    expect(report.succeeded).toBeGreaterThan(50);
    // Still correct afterwards.
    const shadow = fillPool(f32, fuzzPool, tree.usedSlots, rng);
    const q = randomQ(f32, tree.numIoRows, rng);
    const args = decodeArgs(f32, tree, q, 0.125);
    f32.decode(fuzzPool, args);
    expect(worstError(f32, args.out, expectedOutput(f32, tree, shadow, q, 0.125))).toBeLessThan(
      TOLERANCE.f32,
    );
  });
});
