// The native addon against fixtures that need no codegen: load failures (missing file, a library
// that is not a module, an ABI mismatch, a missing symbol, bad ca_info), and the whole call
// surface against runtime/native/fixtures/mock_module.cpp, a module that aborts the process on any
// argument it should never have received, in cpu mode and in cuda mode (where every pointer a
// kernel gets must be module memory, so host arrays must have been staged).

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { beforeAll, describe, expect, test } from 'vitest';
import {
  ArgumentError,
  BusyError,
  ChunkattnError,
  KernelError,
  ModuleError,
  ReservedCapacityError,
  ShapeError,
} from '../runtime/errors.ts';
import { packContext } from '../runtime/kernel-context.ts';
import {
  badDecodeCases,
  compileSharedLibrary,
  decodeArgs,
  expectedOutput,
  fillPool,
  fixedTree,
  fixtureDir,
  fromHost,
  fuzz,
  mockModulePath,
  randomQ,
  randomTree,
  rawDecodeArgs,
  seededRng,
  type TestTree,
  toDecodeArgs,
  toHost,
} from '../runtime/native/fixtures/testing.ts';
import {
  type DecodeArgs,
  type HostData,
  type KvPool,
  NATIVE_ERROR_CLASSES,
  NativeModule,
  nativeAbiVersion,
  parseKernelDiagnostic,
  toTypedError,
} from '../runtime/native-module.ts';
import { relativeError, TOLERANCE } from '../runtime/reference.ts';

const CLASSES = {
  ShapeError,
  ArgumentError,
  ModuleError,
  KernelError,
  BusyError,
  ReservedCapacityError,
} as const;
type ErrorClass = (typeof CLASSES)[keyof typeof CLASSES];

function thrownBy(f: () => unknown): unknown {
  try {
    f();
  } catch (error) {
    return error;
  }
  return undefined;
}

function expectNativeError(f: () => unknown, cls: ErrorClass, code: string, message?: RegExp): void {
  const error = thrownBy(f);
  expect(error, `expected ${cls.name} ${code}`).toBeInstanceOf(cls);
  expect((error as { code?: string }).code, (error as Error).message).toBe(code);
  if (message) expect((error as Error).message).toMatch(message);
}

function maxError(
  out: HostData,
  dtype: 'f16' | 'bf16' | 'f32',
  expected: (Float64Array | null)[],
  rowElements: number,
) {
  const values = fromHost(out, dtype);
  let worst = 0;
  expected.forEach((ref, io) => {
    const got = values.subarray(io * rowElements, (io + 1) * rowElements);
    if (ref === null) {
      // Never written: still poisoned.
      for (const v of got) if (!Number.isNaN(v)) worst = Number.POSITIVE_INFINITY;
      return;
    }
    worst = Math.max(worst, relativeError(got, ref));
  });
  return worst;
}

// ----------------------------------------------------------------------------------------------

describe('loading a module', () => {
  test('a missing file is a ModuleError that names the path', () => {
    expectNativeError(
      () => NativeModule.load('/nonexistent/module.so'),
      ModuleError,
      'ERR_CA_LOAD',
      /nonexistent\/module\.so/,
    );
  });

  test('a directory, an empty path and a text file are ModuleErrors', () => {
    expectNativeError(
      () => NativeModule.load(fixtureDir()),
      ModuleError,
      'ERR_CA_LOAD',
      /not a regular file/,
    );
    expectNativeError(() => NativeModule.load(''), ModuleError, 'ERR_CA_LOAD');
    const text = join(fixtureDir(), 'not-a-library.so');
    writeFileSync(text, 'hello');
    expectNativeError(() => NativeModule.load(text), ModuleError, 'ERR_CA_LOAD', /not-a-library/);
  });

  test('a shared library that is not a chunkattn module (libm, a tiny .so) is a ModuleError', () => {
    const libm = [
      '/lib/x86_64-linux-gnu/libm.so.6',
      '/usr/lib/x86_64-linux-gnu/libm.so.6',
      '/lib64/libm.so.6',
    ].find((path) => thrownBy(() => NativeModule.load(path)) instanceof ModuleError);
    if (libm)
      expectNativeError(
        () => NativeModule.load(libm),
        ModuleError,
        'ERR_CA_SYMBOL',
        /not a chunkattn module/,
      );
    const tiny = compileSharedLibrary('extern "C" int answer() { return 42; }', {}, 'not-a-module');
    expectNativeError(() => NativeModule.load(tiny), ModuleError, 'ERR_CA_SYMBOL', /ca_abi_version/);
  });

  test('a module of another ABI version is refused before anything else is called', () => {
    const other = compileSharedLibrary(
      'extern "C" unsigned ca_abi_version(void) { return 999; }\n' +
        'extern "C" const char* ca_info(void) { __builtin_trap(); }\n',
      {},
      'abi-999',
    );
    expectNativeError(() => NativeModule.load(other), ModuleError, 'ERR_CA_ABI', /ABI 999.*ABI 2/);
  });

  test('a module missing an ABI symbol names it', () => {
    expectNativeError(
      () => NativeModule.load(mockModulePath({ MOCK_OMIT_DECODE: 1 })),
      ModuleError,
      'ERR_CA_SYMBOL',
      /ca_decode/,
    );
  });

  test('ca_info must be JSON with every field the addon relies on', () => {
    const path = mockModulePath({ MOCK_INFO_FROM_ENV: 1 });
    const good = {
      abi: 2,
      name: 'm',
      key: 'k',
      target: 'cpu',
      archs: [],
      qHeads: 4,
      kvHeads: 2,
      headDim: 8,
      chunkSize: 4,
      dtype: { q: 'f32', kv: 'f32', out: 'f32' },
      numParams: 0,
      phase1: true,
    };
    const cases: [string, ErrorClass, string, RegExp][] = [
      ['{"abi":2,', ModuleError, 'ERR_CA_INFO', /not valid JSON/],
      ['[1,2]', ModuleError, 'ERR_CA_INFO', /object/],
      [JSON.stringify({ ...good, chunkSize: undefined }), ModuleError, 'ERR_CA_INFO', /chunkSize/],
      [JSON.stringify({ ...good, kvHeads: 3 }), ModuleError, 'ERR_CA_INFO', /divide/],
      [JSON.stringify({ ...good, headDim: 0 }), ModuleError, 'ERR_CA_INFO', /headDim/],
      [JSON.stringify({ ...good, headDim: 2.5 }), ModuleError, 'ERR_CA_INFO', /headDim/],
      [
        JSON.stringify({ ...good, dtype: { q: 'fp8', kv: 'f32', out: 'f32' } }),
        ModuleError,
        'ERR_CA_INFO',
        /dtype\.q/,
      ],
      [JSON.stringify({ ...good, target: 'tpu' }), ModuleError, 'ERR_CA_INFO', /target/],
      [JSON.stringify({ ...good, phase1: 'yes' }), ModuleError, 'ERR_CA_INFO', /phase1/],
      [JSON.stringify({ ...good, abi: 3 }), ModuleError, 'ERR_CA_ABI', /abi 3/],
      [`${'['.repeat(100)}${']'.repeat(100)}`, ModuleError, 'ERR_CA_INFO', /nesting/],
    ];
    try {
      for (const [info, cls, code, message] of cases) {
        process.env['CHUNKATTN_MOCK_INFO'] = info;
        expectNativeError(() => NativeModule.load(path), cls, code, message);
      }
      process.env['CHUNKATTN_MOCK_INFO'] = JSON.stringify({
        ...good,
        specHash: 'h',
        key: undefined,
        extra: [1],
      });
      const module = NativeModule.load(path);
      expect(module.info.key).toBe('h');
      expect(module.info.raw['extra']).toEqual([1]);
    } finally {
      delete process.env['CHUNKATTN_MOCK_INFO'];
    }
  });

  test('a loaded module reports its info, path and the ABI', () => {
    const module = NativeModule.load(mockModulePath());
    expect(module.info).toMatchObject({
      abi: 2,
      name: 'mock',
      key: 'mock-key',
      target: 'cpu',
      archs: [],
      qHeads: 4,
      kvHeads: 2,
      headDim: 8,
      chunkSize: 4,
      dtype: { q: 'f32', kv: 'f32', out: 'f32' },
      numParams: 0,
      phase1: true,
    });
    expect(module.info.raw['extra']).toEqual({ note: 'café' });
    expect(module.path.startsWith('/')).toBe(true);
    expect(nativeAbiVersion()).toBe(2);
    expect(Object.isFrozen(module.info)).toBe(true);
  });
});

describe('errors', () => {
  test('kernel diagnostics yield the kernel name and the first file:line:col', () => {
    expect(
      parseKernelDiagnostic(
        'phase2_kernel: block (1,0,0) thread (3,0,0): divergent __syncthreads: thread (0,0,0) waits at ' +
          'templates/include/chunkattn/phase2.cuh:88:7, thread (3,0,0) at x.cuh:9:1',
      ),
    ).toEqual({ kernel: 'phase2_kernel', location: 'templates/include/chunkattn/phase2.cuh:88:7' });
    expect(
      parseKernelDiagnostic(
        'deadlock in kernel decode_split: 2 thread(s) in __syncthreads at /tmp/k.cu:12:3',
      ),
    ).toEqual({
      kernel: 'decode_split',
      location: '/tmp/k.cu:12:3',
    });
    expect(parseKernelDiagnostic('cudaErrorIllegalAddress: an illegal memory access')).toEqual({});
  });

  test('every addon code maps to its typed class and keeps its code; other errors pass through', () => {
    for (const [code, name] of Object.entries(NATIVE_ERROR_CLASSES)) {
      const typed = toTypedError(Object.assign(new Error(`m ${code}`), { code }));
      expect(typed).toBeInstanceOf(CLASSES[name]);
      expect(typed).toBeInstanceOf(ChunkattnError);
      expect((typed as { code: string }).code).toBe(code);
      expect((typed as Error).message).toBe(`m ${code}`);
    }
    const plain = new TypeError('x');
    expect(toTypedError(plain)).toBe(plain);
    const foreign = Object.assign(new Error('y'), { code: 'ENOENT' });
    expect(toTypedError(foreign)).toBe(foreign);
  });
});

// ----------------------------------------------------------------------------------------------

describe('mock cpu module (f32)', () => {
  let module: NativeModule;
  let pool: KvPool;
  const rng = seededRng(1);

  beforeAll(() => {
    module = NativeModule.load(mockModulePath());
    pool = module.allocPool(8);
  });

  test('pools start zeroed and round-trip writeKv / readPool', () => {
    const fresh = module.allocPool(3);
    expect(fresh.numSlots).toBe(3);
    expect(fresh.bytesPerSlot).toBe(2 * 4 * 8 * 4);
    for (let slot = 0; slot < 3; slot++) {
      const { k, v } = module.readPool(fresh, slot);
      expect(k).toBeInstanceOf(Float32Array);
      expect([...k, ...v].every((x) => x === 0)).toBe(true);
    }
    // Token (slot 1, offset 2): k[h][d] = 100h + d.
    const k = Float32Array.from({ length: 16 }, (_, i) => 100 * Math.floor(i / 8) + (i % 8));
    module.writeKv(
      fresh,
      Int32Array.of(1),
      Int32Array.of(2),
      k,
      k.map((x) => -x),
    );
    const read = module.readPool(fresh, 1);
    for (let h = 0; h < 2; h++) {
      for (let d = 0; d < 8; d++) {
        expect(read.k[(h * 4 + 2) * 8 + d]).toBe(100 * h + d);
        expect(read.v[(h * 4 + 2) * 8 + d]).toBe(-(100 * h + d));
      }
    }
    module.free(fresh);
    expect(fresh.freed).toBe(true);
  });

  test('copyChunk copies the first numTokens tokens of both pools', () => {
    const fresh = module.allocPool(2);
    fillPool(module, fresh, [0], rng);
    module.copyChunk(fresh, 0, 1, 3);
    const src = module.readPool(fresh, 0);
    const dst = module.readPool(fresh, 1);
    for (let h = 0; h < 2; h++) {
      for (let t = 0; t < 4; t++) {
        for (let d = 0; d < 8; d++) {
          const i = (h * 4 + t) * 8 + d;
          expect(dst.k[i]).toBe(t < 3 ? src.k[i] : 0);
          expect(dst.v[i]).toBe(t < 3 ? src.v[i] : 0);
        }
      }
    }
    module.free(fresh);
  });

  test('decode matches float64 attention on random trees, and leaves unmapped io rows alone', () => {
    for (let trial = 0; trial < 20; trial++) {
      const tree = randomTree(rng, {
        chunkSize: 4,
        numSlots: 64,
        phase1: rng() < 0.8,
        maxRunChunks: trial % 2 ? 1 : undefined,
      });
      const big = module.allocPool(64);
      const shadow = fillPool(module, big, tree.usedSlots, rng);
      const q = randomQ(module, tree.numIoRows, rng);
      const args = decodeArgs(module, tree, q, 0.35, { numThreads: trial % 3 });
      module.decode(big, args);
      const expected = expectedOutput(module, tree, shadow, q, 0.35);
      expect(maxError(args.out, 'f32', expected, 32)).toBeLessThan(TOLERANCE.f32);
      expect(module.workspaceBytes(big, args)).toBe(tree.context.numPartials * 4 * 9 * 4);
      module.free(big);
    }
  });

  test('a decode with no rows validates and does nothing', () => {
    const fields = {
      rowIo: new Int32Array(0),
      numIoRows: 0,
      rowSeq: new Int32Array(0),
      rowLength: new Int32Array(0),
      rowChunkOffsets: new Int32Array(1),
      rowChunkSlots: new Int32Array(0),
      rowSharedChunks: new Int32Array(0),
      rowPartialOffsets: new Int32Array(1),
      rowPartials: new Int32Array(0),
      runs: new Int32Array(0),
      runSlots: new Int32Array(0),
      numPartials: 0,
    };
    const empty = { q: new Float32Array(0), out: new Float32Array(0), softmaxScale: 1 };
    module.decode(pool, { ...empty, context: packContext(fields) });
    expectNativeError(
      () =>
        module.decode(pool, {
          ...empty,
          context: packContext({ ...fields, rowChunkOffsets: new Int32Array(0) }),
        }),
      ShapeError,
      'ERR_CA_SHAPE',
    );
  });

  test('a SharedArrayBuffer-backed context is copied, then used', () => {
    const tree = fixedTree(4);
    const shadow = fillPool(module, pool, tree.usedSlots, rng);
    const q = randomQ(module, tree.numIoRows, rng);
    const args = decodeArgs(module, tree, q, 0.5);
    const context = new Int32Array(new SharedArrayBuffer(args.context.byteLength));
    context.set(args.context);
    module.decode(pool, { ...args, context });
    expect(maxError(args.out, 'f32', expectedOutput(module, tree, shadow, q, 0.5), 32)).toBeLessThan(
      TOLERANCE.f32,
    );
  });

  test('stats and resetStats reach the module', () => {
    module.resetStats();
    const tree = fixedTree(4);
    module.decode(pool, decodeArgs(module, tree, randomQ(module, tree.numIoRows, rng), 0.5));
    const stats = module.stats();
    expect(stats.launches).toBe(2);
    expect(stats.bytesRead.q).toBe(4 * 4 * 8 * 4);
    expect(stats.bytesWritten.out).toBe(4 * 4 * 8 * 4);
    expect(Object.keys(stats.bytesRead).sort()).toEqual(['context', 'kv', 'out', 'partial', 'q']);
    module.resetStats();
    expect(module.stats().launches).toBe(0);
  });

  describe('every bad decode is a typed error, and nothing reaches the module', () => {
    const cases = badDecodeCases(NativeModule.load(mockModulePath()).info);

    test.each(cases)('$name', ({ mutate, error, code, message }) => {
      const tree = fixedTree(4);
      const args = rawDecodeArgs(module, tree, randomQ(module, tree.numIoRows, rng), 0.5);
      mutate(args);
      expectNativeError(() => module.decode(pool, toDecodeArgs(args)), CLASSES[error], code, message);
      expectNativeError(() => module.workspaceBytes(pool, toDecodeArgs(args)), CLASSES[error], code, message);
    });

    test(`${cases.length} kinds of bad calls are covered`, () => {
      expect(cases.length).toBeGreaterThanOrEqual(20);
    });

    test('bad pools: not a pool, forged, mismatched halves, foreign, freed, freed twice', () => {
      const tree = fixedTree(4);
      const args = decodeArgs(module, tree, randomQ(module, tree.numIoRows, rng), 0.5);
      const decodeWith = (p: unknown) => () => module.decode(p as KvPool, args);
      expectNativeError(decodeWith(undefined), ArgumentError, 'ERR_CA_TYPE', /KvPool/);
      expectNativeError(decodeWith({}), ArgumentError, 'ERR_CA_TYPE', /pool\.k is not a pool buffer/);
      expectNativeError(decodeWith({ k: {}, v: {}, numSlots: 8 }), ArgumentError, 'ERR_CA_TYPE');
      expectNativeError(
        decodeWith({ k: pool.k, v: pool.v, numSlots: 9 }),
        ShapeError,
        'ERR_CA_SHAPE',
        /needs/,
      );
      expectNativeError(
        decodeWith({ k: pool.k, v: pool.k, numSlots: 8 }),
        ArgumentError,
        'ERR_CA_RANGE',
        /same buffer/,
      );
      expectNativeError(decodeWith({ k: pool.k, v: pool.v, numSlots: '8' }), ArgumentError, 'ERR_CA_TYPE');
      const small = module.allocPool(2);
      expectNativeError(
        decodeWith({ k: pool.k, v: small.v, numSlots: 8 }),
        ShapeError,
        'ERR_CA_SHAPE',
        /pool\.v has/,
      );
      const other = NativeModule.load(mockModulePath());
      const foreign = other.allocPool(8);
      expectNativeError(decodeWith(foreign), ArgumentError, 'ERR_CA_FOREIGN', /another module/);
      expectNativeError(() => other.free(pool), ArgumentError, 'ERR_CA_FOREIGN');
      other.free(foreign);
      module.free(small);
      expectNativeError(decodeWith(small), ArgumentError, 'ERR_CA_FREED');
      expectNativeError(() => module.free(small), ArgumentError, 'ERR_CA_FREED', /freed/);
      expectNativeError(() => module.readPool(small, 0), ArgumentError, 'ERR_CA_FREED');
      expectNativeError(() => module.copyChunk(small, 0, 1, 1), ArgumentError, 'ERR_CA_FREED');
      // An object whose k/v come from the pool through its prototype is that pool.
      module.decode(Object.create(pool), args);
    });

    test('a module without a phase-1 kernel refuses runs', () => {
      const flat = NativeModule.load(mockModulePath({ MOCK_PHASE1: 0 }));
      const flatPool = flat.allocPool(8);
      const tree = fixedTree(4);
      const args = decodeArgs(flat, tree, randomQ(flat, tree.numIoRows, rng), 0.5);
      expectNativeError(() => flat.decode(flatPool, args), ArgumentError, 'ERR_CA_UNSUPPORTED', /phase-1/);
      // The same rows without runs (all chunks read by phase 2) are fine.
      const context = packContext({
        ...tree.context,
        rowIo: tree.rowIo,
        numIoRows: tree.numIoRows,
        rowSharedChunks: new Int32Array(4),
        rowPartialOffsets: new Int32Array(5),
        rowPartials: new Int32Array(0),
        runs: new Int32Array(0),
        runSlots: new Int32Array(0),
        numPartials: 0,
      });
      flat.decode(flatPool, { ...args, context });
      flat.free(flatPool);
    });

    test('getters run before validation: freeing or detaching there is caught, throwing passes through', () => {
      const tree = fixedTree(4);
      const base = decodeArgs(module, tree, randomQ(module, tree.numIoRows, rng), 0.5);
      const victim = module.allocPool(8);
      const freeing = { ...base };
      Object.defineProperty(freeing, 'softmaxScale', {
        get: () => {
          module.free(victim);
          return 0.5;
        },
      });
      expectNativeError(() => module.decode(victim, freeing), ArgumentError, 'ERR_CA_FREED');

      const detaching = { ...base, q: base.q.slice() };
      Object.defineProperty(detaching, 'numThreads', {
        get: () => {
          structuredClone(detaching.q.buffer, { transfer: [detaching.q.buffer] });
          return 0;
        },
      });
      expectNativeError(() => module.decode(pool, detaching), ShapeError, 'ERR_CA_SHAPE', /q has 0 elements/);

      const throwing = { ...base };
      const boom = new RangeError('boom');
      Object.defineProperty(throwing, 'context', {
        get: () => {
          throw boom;
        },
      });
      expect(thrownBy(() => module.decode(pool, throwing))).toBe(boom);
      expectNativeError(() => module.decode(pool, 42 as unknown as DecodeArgs), ArgumentError, 'ERR_CA_TYPE');
      // A proxy of the arguments is read like the object itself.
      module.decode(pool, new Proxy(base, {}));
    });

    test('module failures become KernelError (with kernel and location) or ArgumentError', () => {
      const tree = fixedTree(4);
      const q = randomQ(module, tree.numIoRows, rng);
      const kernel = thrownBy(() => module.decode(pool, decodeArgs(module, tree, q, 1234)));
      expect(kernel).toBeInstanceOf(KernelError);
      expect(kernel).toMatchObject({
        code: 'ERR_CA_KERNEL',
        status: 4,
        kernel: 'phase2_kernel',
        location: 'templates/include/chunkattn/phase2.cuh:88:7',
      });
      expect((kernel as Error).message).toMatch(/divergent __syncthreads/);
      const device = thrownBy(() => module.decode(pool, decodeArgs(module, tree, q, 2345)));
      expect(device).toBeInstanceOf(KernelError);
      expect(device).toMatchObject({ code: 'ERR_CA_DEVICE', status: 3 });
      expect((device as KernelError).kernel).toBeUndefined();
      expectNativeError(
        () => module.decode(pool, decodeArgs(module, tree, q, 3456)),
        ArgumentError,
        'ERR_CA_INVALID',
      );
    });
  });

  test('bad writeKv, copyChunk, readPool and allocPool calls are typed errors', () => {
    const kv = new Float32Array(16);
    const one = Int32Array.of(0);
    expectNativeError(
      () => module.writeKv(pool, Int32Array.of(8), one, kv, kv),
      ArgumentError,
      'ERR_CA_RANGE',
      /slots\[0\] = 8/,
    );
    expectNativeError(
      () => module.writeKv(pool, one, Int32Array.of(4), kv, kv),
      ArgumentError,
      'ERR_CA_RANGE',
      /chunkSize = 4/,
    );
    expectNativeError(
      () => module.writeKv(pool, one, Int32Array.of(0, 1), kv, kv),
      ShapeError,
      'ERR_CA_SHAPE',
    );
    expectNativeError(
      () => module.writeKv(pool, one, one, new Float32Array(15), kv),
      ShapeError,
      'ERR_CA_SHAPE',
    );
    expectNativeError(
      () => module.writeKv(pool, one, one, new Uint16Array(16), kv),
      ShapeError,
      'ERR_CA_DTYPE',
    );
    expectNativeError(
      () =>
        module.writeKv(
          pool,
          Int32Array.of(1, 1),
          Int32Array.of(2, 2),
          new Float32Array(32),
          new Float32Array(32),
        ),
      ArgumentError,
      'ERR_CA_RANGE',
      /same \(slot, offset\)/,
    );
    expectNativeError(
      () => module.writeKv(pool, [0] as unknown as Int32Array, one, kv, kv),
      ShapeError,
      'ERR_CA_DTYPE',
    );
    module.writeKv(pool, new Int32Array(0), new Int32Array(0), new Float32Array(0), new Float32Array(0));

    expectNativeError(() => module.copyChunk(pool, 0, 0, 1), ArgumentError, 'ERR_CA_RANGE', /both 0/);
    expectNativeError(() => module.copyChunk(pool, 0, 8, 1), ArgumentError, 'ERR_CA_RANGE', /dstSlot/);
    expectNativeError(() => module.copyChunk(pool, -1, 1, 1), ArgumentError, 'ERR_CA_RANGE', /srcSlot/);
    expectNativeError(() => module.copyChunk(pool, 0, 1, 5), ArgumentError, 'ERR_CA_RANGE', /numTokens/);
    expectNativeError(() => module.copyChunk(pool, 0, 1, Number.NaN), ArgumentError, 'ERR_CA_RANGE');
    module.copyChunk(pool, 0, 1, 0);

    expectNativeError(() => module.readPool(pool, 8), ArgumentError, 'ERR_CA_RANGE');
    expectNativeError(() => module.readPool(pool, '1' as unknown as number), ArgumentError, 'ERR_CA_TYPE');

    expectNativeError(() => module.allocPool(0), ArgumentError, 'ERR_CA_RANGE');
    expectNativeError(() => module.allocPool(2 ** 31), ArgumentError, 'ERR_CA_RANGE');
    expectNativeError(() => module.allocPool(2 ** 31 - 1), ArgumentError, 'ERR_CA_RANGE', /memory/);
    expectNativeError(() => module.allocPool(undefined as unknown as number), ArgumentError, 'ERR_CA_TYPE');
  });

  test('pools dropped without free() are released by the garbage collector', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const live = () => module.stats().bytesWritten.context;
    gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
    const before = live();
    for (let i = 0; i < 50; i++) module.allocPool(4);
    expect(live()).toBeGreaterThanOrEqual(before + 100);
    for (let i = 0; i < 5 && live() > before; i++) {
      gc();
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(live()).toBeLessThanOrEqual(before);
  });

  test('1,000 random, mostly invalid calls never crash and always throw typed errors', () => {
    const tree = fixedTree(4);
    const fuzzPool = module.allocPool(8);
    fillPool(module, fuzzPool, tree.usedSlots, rng);
    const other = NativeModule.load(mockModulePath());
    const report = fuzz(
      {
        module,
        pool: fuzzPool,
        foreignPool: other.allocPool(8),
        tree,
        q: randomQ(module, tree.numIoRows, rng),
        softmaxScale: 0.5,
        classes: CLASSES,
        errorClasses: NATIVE_ERROR_CLASSES,
      },
      seededRng(20240601),
      1000,
    );
    expect(report.untyped).toEqual([]);
    expect(report.leaked).toEqual([]);
    expect(report.succeeded).toBeGreaterThan(50);
    // Every code a validation can give on this module showed up (UNSUPPORTED needs a module without phase 1).
    expect(Object.keys(report.codes).sort()).toEqual([
      'ERR_CA_CONTEXT',
      'ERR_CA_DTYPE',
      'ERR_CA_FOREIGN',
      'ERR_CA_FREED',
      'ERR_CA_RANGE',
      'ERR_CA_SHAPE',
      'ERR_CA_TYPE',
    ]);
    // The pool still works after the storm.
    const shadow = fillPool(module, fuzzPool, tree.usedSlots, rng);
    const q = randomQ(module, tree.numIoRows, rng);
    const args = decodeArgs(module, tree, q, 0.5);
    module.decode(fuzzPool, args);
    expect(maxError(args.out, 'f32', expectedOutput(module, tree, shadow, q, 0.5), 32)).toBeLessThan(
      TOLERANCE.f32,
    );
  });
});

describe('mock modules with 16-bit dtypes and params', () => {
  test('bf16 q/kv/out with a param: Uint16Array and Float32Array sources, decode matches the reference', () => {
    const rng = seededRng(2);
    const module = NativeModule.load(
      mockModulePath({
        MOCK_DT_Q: 1,
        MOCK_DT_KV: 1,
        MOCK_DT_OUT: 1,
        MOCK_NUM_PARAMS: 1,
        MOCK_HQ: 8,
        MOCK_HKV: 2,
      }),
    );
    expect(module.info.dtype).toEqual({ q: 'bf16', kv: 'bf16', out: 'bf16' });
    const pool = module.allocPool(64);
    expect(module.readPool(pool, 0).k).toBeInstanceOf(Uint16Array);
    const bias = 0.125;
    const variant = { scoreMod: (s: number, pos: { q: number; kv: number }) => s + bias * (pos.kv - pos.q) };
    for (let trial = 0; trial < 10; trial++) {
      const tree = randomTree(rng, { chunkSize: 4, numSlots: 64, phase1: true });
      const shadow = fillPool(module, pool, tree.usedSlots, rng, trial % 2 === 0);
      const q = randomQ(module, tree.numIoRows, rng);
      const args = decodeArgs(module, tree, q, 0.3, { params: Float32Array.of(bias) });
      module.decode(pool, args);
      expect(
        maxError(args.out, 'bf16', expectedOutput(module, tree, shadow, q, 0.3, variant), 64),
      ).toBeLessThan(TOLERANCE.bf16);
    }
    const tree = fixedTree(4);
    const args = decodeArgs(module, tree, randomQ(module, tree.numIoRows, rng), 0.3);
    expectNativeError(
      () => module.decode(pool, { ...args, params: undefined }),
      ShapeError,
      'ERR_CA_DTYPE',
      /params/,
    );
    expectNativeError(
      () => module.decode(pool, { ...args, params: new Float32Array(2) }),
      ShapeError,
      'ERR_CA_SHAPE',
    );
    expectNativeError(
      () => module.decode(pool, { ...args, q: new Float32Array(args.q.length) }),
      ShapeError,
      'ERR_CA_DTYPE',
      /Uint16Array of bf16/,
    );
    expectNativeError(
      () =>
        module.writeKv(pool, Int32Array.of(0), Int32Array.of(0), new Float32Array(16), new Uint16Array(16)),
      ShapeError,
      'ERR_CA_DTYPE',
      /same dtype/,
    );
    module.free(pool);
  });
});

describe('mock module in cuda mode (host arrays must be staged into module memory)', () => {
  let module: NativeModule;
  let pool: KvPool;
  const rng = seededRng(3);

  beforeAll(() => {
    module = NativeModule.load(
      mockModulePath({
        MOCK_TARGET: '"cuda"',
        MOCK_DT_Q: 1,
        MOCK_DT_KV: 1,
        MOCK_DT_OUT: 0,
        MOCK_NUM_PARAMS: 1,
      }),
    );
    pool = module.allocPool(64);
  });

  test('reports the cuda target', () => {
    expect(module.info.target).toBe('cuda');
    expect(module.info.archs).toEqual(['sm_80']);
  });

  test('decode stages q, out, context and params, and matches the reference', () => {
    const variant = { scoreMod: (s: number, pos: { q: number; kv: number }) => s + 0.25 * (pos.kv - pos.q) };
    for (let trial = 0; trial < 10; trial++) {
      const tree = randomTree(rng, { chunkSize: 4, numSlots: 64, phase1: true, padIoRows: trial % 3 });
      const shadow = fillPool(module, pool, tree.usedSlots, rng, trial % 2 === 1);
      const q = randomQ(module, tree.numIoRows, rng);
      const args = decodeArgs(module, tree, q, 0.4, { params: Float32Array.of(0.25) });
      module.decode(pool, args);
      expect(
        maxError(args.out, 'f16', expectedOutput(module, tree, shadow, q, 0.4, variant), 32),
      ).toBeLessThan(TOLERANCE.f16);
    }
  });

  test('the context and params are uploaded again exactly when their bytes change', () => {
    const tree = fixedTree(4);
    const shadow = fillPool(module, pool, tree.usedSlots, rng);
    const q = randomQ(module, tree.numIoRows, rng);
    const params = Float32Array.of(0);
    module.resetStats();
    const first = decodeArgs(module, tree, q, 0.5, { params });
    module.decode(pool, first);
    module.decode(pool, { ...first, context: first.context.slice() });
    expect(module.stats().contextUploads).toBe(1);
    // Same version, lengths moved (as between tree rebuilds), and the same arrays mutated in place.
    const lengths = tree.context.rowLength;
    lengths[1] = 9;
    lengths[2] = 14;
    const moved: TestTree = {
      ...tree,
      rows: tree.rows.map((row, r) => ({ ...row, length: lengths[r]! })),
    };
    const second = decodeArgs(module, moved, q, 0.5, { params });
    module.decode(pool, second);
    expect(module.stats().contextUploads).toBe(2);
    expect(maxError(second.out, 'f16', expectedOutput(module, moved, shadow, q, 0.5), 32)).toBeLessThan(
      TOLERANCE.f16,
    );
    params[0] = 0.5;
    const third = decodeArgs(module, moved, q, 0.5, { params });
    module.decode(pool, third);
    const variant = { scoreMod: (s: number, pos: { q: number; kv: number }) => s + 0.5 * (pos.kv - pos.q) };
    expect(
      maxError(third.out, 'f16', expectedOutput(module, moved, shadow, q, 0.5, variant), 32),
    ).toBeLessThan(TOLERANCE.f16);
  });

  test('writeKv, copyChunk and readPool work on module memory', () => {
    const k = toHost(
      Float32Array.from({ length: 16 }, (_, i) => i / 4),
      'bf16',
    );
    module.writeKv(pool, Int32Array.of(3), Int32Array.of(1), k, k);
    module.copyChunk(pool, 3, 4, 2);
    const read = module.readPool(pool, 4);
    expect(fromHost(read.k, 'bf16')[8 + 3]).toBe(3 / 4);
  });

  test('fuzz: 300 random calls never crash', () => {
    const tree = fixedTree(4);
    const other = NativeModule.load(
      mockModulePath({
        MOCK_TARGET: '"cuda"',
        MOCK_DT_Q: 1,
        MOCK_DT_KV: 1,
        MOCK_DT_OUT: 0,
        MOCK_NUM_PARAMS: 1,
      }),
    );
    const report = fuzz(
      {
        module,
        pool,
        foreignPool: other.allocPool(8),
        tree,
        q: randomQ(module, tree.numIoRows, rng),
        softmaxScale: 0.5,
        classes: CLASSES,
        errorClasses: NATIVE_ERROR_CLASSES,
      },
      seededRng(99),
      300,
    );
    expect(report.untyped).toEqual([]);
    expect(report.leaked).toEqual([]);
  });
});
