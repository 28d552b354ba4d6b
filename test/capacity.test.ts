// The capacity plan (runtime/capacity.ts): Attention.create reserves every scratch buffer once,
// so no later call allocates module memory (CUDA-graph safe), counted by the module's own
// scratchAllocations counter (emu counts what cuda would do: the addon drives both alike). A
// call past capacity throws ReservedCapacityError and changes nothing; the bounds are upper
// bounds of what real contexts and the modules' ca_workspace_bytes need.

import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Attention, ReservedCapacityError } from '../index.ts';
import {
  type Capacity,
  contextWordsBound,
  PHASE1_MAX_SPLITS,
  PHASE2_MAX_SPLITS,
  resolveCapacity,
  scratchBounds,
  workspaceBound,
} from '../runtime/capacity.ts';
import { ioRowMap, packContext } from '../runtime/kernel-context.ts';
import { toHost } from '../runtime/native/fixtures/testing.ts';
import { type HostData, NativeModule } from '../runtime/native-module.ts';
import { PrefixTree } from '../runtime/prefix-tree.ts';
import { expandQueryRows } from '../runtime/query-rows.ts';
import { emuTrafficSpec, tinySpec } from './specs.ts';

const LAYERS = 4;
const BATCH = 32;
const spec = emuTrafficSpec(); // Hq 8, Hkv 2, D 64, bf16, C 16
const Q_ELEMS = spec.heads.q * spec.headDim;
const KV_ELEMS = spec.heads.kv * spec.headDim;

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

const allocations = (attn: Attention) => attn.stats().kernel.scratchAllocations.calls;

/** 32 sequences sharing a 40-token prompt prefix, then 1..32 private tokens, K/V written. */
function populate(attn: Attention): number[] {
  const prefix = Array.from({ length: 40 }, (_, t) => t % 97);
  const seqs: number[] = [];
  for (let i = 0; i < BATCH; i++) {
    const { seq, matchedTokens } = attn.insert([
      ...prefix,
      ...Array.from({ length: 1 + i }, (_, t) => 200 + i * 40 + t),
    ]);
    const n = attn.cache.length(seq) - matchedTokens;
    for (let layer = 0; layer < attn.layers; layer++)
      attn.writeKV(
        layer,
        seq,
        matchedTokens,
        randomBits(n * KV_ELEMS, i * 10 + layer),
        randomBits(n * KV_ELEMS, i * 10 + layer + 5),
      );
    seqs.push(seq);
  }
  return seqs;
}

function decodeStep(attn: Attention, seqs: number[], seed: number): HostData[] {
  attn.appendStep(
    seqs,
    seqs.map(() => seed % 90),
  );
  const outs: HostData[] = [];
  for (let layer = 0; layer < attn.layers; layer++) {
    attn.writeDecodeKV(
      layer,
      randomBits(seqs.length * KV_ELEMS, seed + layer),
      randomBits(seqs.length * KV_ELEMS, seed + 9 + layer),
    );
    outs.push(attn.decode(layer, randomBits(seqs.length * Q_ELEMS, seed + 20 + layer)));
  }
  return outs;
}

const opened: Attention[] = [];
afterAll(() => {
  for (const attn of opened) attn.close();
});

describe(`emu: after create, a workload with L = ${LAYERS}, b = ${BATCH} allocates no scratch`, () => {
  let attn: Attention;
  let seqs: number[];
  beforeAll(async () => {
    attn = await Attention.create(spec, { layers: LAYERS, capacityTokens: 8192, target: 'emu' });
    opened.push(attn);
  });

  test('create reserves every buffer once; prefill, steps, device tensors, copy-on-write, attend, async: 0 allocations', async () => {
    const reserved = allocations(attn);
    // Seven buffers per module handle a call may run on, all at create.
    expect(reserved).toBeGreaterThanOrEqual(7);
    expect(reserved % 7).toBe(0);

    seqs = populate(attn);
    // A 1,000-token prefill writeKV.
    const long = attn.insert(Array.from({ length: 1000 }, (_, t) => 5000 + t));
    for (let layer = 0; layer < LAYERS; layer++)
      attn.writeKV(
        layer,
        long.seq,
        0,
        randomBits(1000 * KV_ELEMS, layer),
        randomBits(1000 * KV_ELEMS, layer + 1),
      );
    attn.release(long.seq);

    // Full decode steps with host tensors.
    decodeStep(attn, seqs, 1);
    decodeStep(attn, seqs, 2);

    // A step through device tensors.
    attn.appendStep(
      seqs,
      seqs.map(() => 4),
    );
    const q = attn.allocTensor('bf16', BATCH * Q_ELEMS);
    const out = attn.allocTensor('bf16', BATCH * Q_ELEMS);
    const k = attn.allocTensor('bf16', BATCH * KV_ELEMS);
    const v = attn.allocTensor('bf16', BATCH * KV_ELEMS);
    for (let layer = 0; layer < LAYERS; layer++) {
      attn.module.upload(k, randomBits(BATCH * KV_ELEMS, 30 + layer));
      attn.module.upload(v, randomBits(BATCH * KV_ELEMS, 40 + layer));
      attn.module.upload(q, randomBits(BATCH * Q_ELEMS, 50 + layer));
      attn.writeDecodeKV(layer, k, v);
      attn.decode(layer, q, out);
    }
    for (const t of [q, out, k, v]) attn.module.freeTensor(t);

    // Copy-on-write: forks of a partly filled tail, then a step over all.
    const forked = attn.fork(seqs[5]!, 3);
    const all = [...seqs, ...forked];
    decodeStep(attn, all, 3);
    for (const seq of forked) attn.release(seq);

    // Multi-token attend: 3 query tokens for 4 sequences.
    const some = [seqs[1]!, seqs[8]!, seqs[20]!, seqs[31]!];
    attn.extend(
      some,
      some.map(() => [1, 2, 3]),
    );
    for (let layer = 0; layer < LAYERS; layer++) {
      attn.writeDecodeKV(layer, randomBits(12 * KV_ELEMS, 60 + layer), randomBits(12 * KV_ELEMS, 70 + layer));
      attn.attend(layer, randomBits(12 * Q_ELEMS, 80 + layer));
    }

    // Decoding a subset, and decodeAsync.
    attn.appendStep(
      seqs,
      seqs.map(() => 6),
    );
    for (let layer = 0; layer < LAYERS; layer++)
      attn.writeDecodeKV(
        layer,
        randomBits(BATCH * KV_ELEMS, 90 + layer),
        randomBits(BATCH * KV_ELEMS, 99 + layer),
      );
    attn.decode(0, randomBits(4 * Q_ELEMS, 5), undefined, some);
    await attn.decodeAsync(1, randomBits(BATCH * Q_ELEMS, 6));

    expect(allocations(attn) - reserved).toBe(0);
  });
});

describe('emu: a call past capacity throws ReservedCapacityError and changes nothing', () => {
  let attn: Attention;
  let seqs: number[];
  beforeAll(async () => {
    attn = await Attention.create(spec, {
      layers: 2,
      capacityTokens: 8192,
      target: 'emu',
      capacity: { rows: 40, writeTokens: 48 },
    });
    opened.push(attn);
    seqs = populate(attn);
    decodeStep(attn, seqs, 11);
  });

  function fails(run: () => unknown, option: string) {
    let error: unknown;
    try {
      run();
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ReservedCapacityError);
    expect((error as ReservedCapacityError).option).toBe(option);
    expect((error as Error).message).toContain(option);
  }

  test('too many tokens per step, too many live sequences: typed errors; the next call gives the same bits', () => {
    const reserved = allocations(attn);
    const q = randomBits(BATCH * Q_ELEMS, 7);
    const before = [attn.decode(0, q, undefined, seqs), attn.decode(1, q, undefined, seqs)];
    const lengths = seqs.map((s) => attn.cache.length(s));

    // A step of 2 × 32 = 64 tokens: refused before the tree changes.
    fails(
      () =>
        attn.extend(
          seqs,
          seqs.map(() => [1, 2]),
        ),
      'capacity.writeTokens',
    );
    expect(seqs.map((s) => attn.cache.length(s))).toEqual(lengths);
    // A 100-token prefill write of host K/V goes in pieces of ≤ 48 tokens: 3 launches, no error.
    const long = attn.insert(Array.from({ length: 100 }, (_, t) => 7000 + t));
    const k = randomBits(100 * KV_ELEMS, 1);
    const v = randomBits(100 * KV_ELEMS, 2);
    const launches = () => attn.module.stats().kernels['write_kv']?.launches ?? 0;
    const launched = launches();
    attn.writeKV(0, long.seq, 0, k, v);
    expect(launches() - launched).toBe(3);
    expect(attn.readKV(0, long.seq, 0, 100)).toEqual({ k, v });
    // 32 + 9 = 41 live sequences: a decode's context has more rows than capacity.rows.
    const extra = [long.seq];
    for (let i = 0; i < 8; i++) extra.push(attn.insert([9000 + i]).seq);
    fails(() => attn.decode(0, q, undefined, seqs), 'capacity.rows');
    for (const seq of extra) attn.release(seq);

    expect([attn.decode(0, q, undefined, seqs), attn.decode(1, q, undefined, seqs)]).toEqual(before);
    expect(allocations(attn) - reserved).toBe(0);
  });

  test('the addon refuses past its reservation (ERR_CA_CAPACITY) without allocating; state is unchanged', () => {
    const q = randomBits(BATCH * Q_ELEMS, 8);
    const before = attn.decode(0, q, undefined, seqs);
    const slots = attn.cache.capacity;
    // Shrink the primary's reservation under what the call needs; the TS check still passes.
    attn.module.reserve(
      scratchBounds(
        attn.module.info,
        slots,
        resolveCapacity({ rows: 4 }, { numSlots: slots, chunkSize: 16 }),
      ),
    );
    const reserved = allocations(attn);
    let error: unknown;
    try {
      attn.decode(0, q, undefined, seqs);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ReservedCapacityError);
    expect((error as { code?: string }).code).toBe('ERR_CA_CAPACITY');
    expect(allocations(attn) - reserved).toBe(0);
    attn.module.reserve(scratchBounds(attn.module.info, slots, attn.capacity));
    expect(attn.decode(0, q, undefined, seqs)).toEqual(before);
  });
});

describe('NativeModule without reserve grows scratch on demand; with it, never', () => {
  test('the counter sees growth; after reserve a write within it allocates nothing, one past it is refused', async () => {
    const attn = await Attention.create(spec, { layers: 1, capacityTokens: 256, target: 'emu' });
    opened.push(attn);
    const module = NativeModule.load(attn.module.path); // a fresh handle: nothing reserved
    const pool = module.allocPool(16);
    try {
      const write = (n: number, seed: number) =>
        module.writeKv(
          pool,
          Int32Array.from({ length: n }, (_, i) => 3 + Math.floor(i / 16)),
          Int32Array.from({ length: n }, (_, i) => i % 16),
          randomBits(n * KV_ELEMS, seed),
          randomBits(n * KV_ELEMS, seed + 1),
        );
      module.resetStats();
      write(4, 1);
      write(16, 2);
      expect(module.stats().scratchAllocations.calls).toBeGreaterThanOrEqual(2); // grew twice
      module.reserve(
        scratchBounds(
          module.info,
          16,
          resolveCapacity({ rows: 4, writeTokens: 8 }, { numSlots: 16, chunkSize: 16 }),
        ),
      );
      module.resetStats();
      write(8, 3);
      const slot = module.readPool(pool, 3);
      // 32 bf16 tokens need more staging than 8 tokens of f32 (the bound's worst case).
      expect(() => write(32, 4)).toThrow(ReservedCapacityError);
      expect(module.readPool(pool, 3)).toEqual(slot);
      write(8, 3);
      expect(module.stats().scratchAllocations).toEqual({ calls: 0, bytes: 0 });
    } finally {
      module.free(pool);
    }
  });
});

describe('a PSA sparse decode allocates no scratch after create', () => {
  test.each(['cpu', 'emu'] as const)(
    '%s: dense and sparse layers of a step: 0 allocations',
    async (target) => {
      const cpuSpec = tinySpec(target === 'cpu' ? 'f32' : 'f16', 'plain', [target]);
      const attn = await Attention.create(cpuSpec, {
        layers: 2,
        capacityTokens: 4096,
        target,
        threads: 2,
        sparse: { denseLayers: 1, denseBelowTokens: 0, recentTokens: 16, mass: 0.5 },
      });
      opened.push(attn);
      expect(attn.sparse).toBeDefined();
      const reserved = allocations(attn);
      const kvElems = cpuSpec.heads.kv * cpuSpec.headDim;
      const qElems = cpuSpec.heads.q * cpuSpec.headDim;
      const f32 = (n: number, seed: number) =>
        Float32Array.from(
          randomBits(n, seed),
          (b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]!,
        );
      const seqs: number[] = [];
      for (let i = 0; i < 6; i++) {
        const { seq } = attn.insert(Array.from({ length: 120 + 7 * i }, (_, t) => (t * 31 + i) % 500));
        const n = attn.cache.length(seq);
        for (let layer = 0; layer < 2; layer++)
          attn.writeKV(layer, seq, 0, f32(n * kvElems, i + layer), f32(n * kvElems, i + layer + 3));
        seqs.push(seq);
      }
      attn.appendStep(
        seqs,
        seqs.map(() => 1),
      );
      for (let layer = 0; layer < 2; layer++) {
        attn.writeDecodeKV(layer, f32(6 * kvElems, 40 + layer), f32(6 * kvElems, 50 + layer));
        const q = f32(6 * qElems, 60 + layer);
        attn.decode(layer, target === 'cpu' ? q : toHost(q, 'f16'));
      }
      expect(attn.selection).toBeDefined();
      // Sparse on this target: some (row, KV head) attended fewer chunks than it holds.
      const sel = attn.selection!;
      let sparse = 0;
      for (const seq of seqs)
        for (let h = 0; h < sel.kvHeads; h++)
          sparse += sel.chunksOf(seq, h).length < Math.ceil(attn.cache.length(seq) / 16) ? 1 : 0;
      expect(sparse).toBeGreaterThan(0);
      expect(allocations(attn) - reserved).toBe(0);
    },
  );
});

describe('the bounds are upper bounds', () => {
  test('the split caps match the kernels (decode_phase1.cuh / decode_phase2.cuh kMaxSplits)', () => {
    const phase1 = readFileSync('templates/include/chunkattn/decode_phase1.cuh', 'utf8');
    const phase2 = readFileSync('templates/include/chunkattn/decode_phase2.cuh', 'utf8');
    expect(phase1).toContain(`static constexpr int kMaxSplits = ${PHASE1_MAX_SPLITS};`);
    expect(phase2).toContain(`static constexpr int kMaxSplits = ${PHASE2_MAX_SPLITS};`);
  });

  // Random trees: prompts over a tiny alphabet (so prefixes are shared), forks, decode steps.
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      kind: fc.constant('insert' as const),
      tokens: fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 1, maxLength: 70 }),
    }),
    fc.record({ kind: fc.constant('fork' as const), pick: fc.nat(), n: fc.integer({ min: 1, max: 3 }) }),
    fc.record({ kind: fc.constant('step' as const), tokens: fc.integer({ min: 1, max: 3 }) }),
  );

  type Op =
    | { kind: 'insert'; tokens: number[] }
    | { kind: 'fork'; pick: number; n: number }
    | { kind: 'step'; tokens: number };

  // Long shared prompts (a few bases cut anywhere, then a private tail): long runs and rows, so
  // the kernels' split heuristics (phase 1 and phase 2) come into play.
  const BASES = [0, 1, 2].map((b) => Array.from({ length: 600 }, (_, t) => (t * (b + 3) + b) % 50));
  const longOp: fc.Arbitrary<Op> = fc.oneof(
    fc
      .record({
        base: fc.integer({ min: 0, max: 2 }),
        cut: fc.integer({ min: 0, max: 600 }),
        tail: fc.array(fc.integer({ min: 60, max: 62 }), { minLength: 1, maxLength: 40 }),
      })
      .map(({ base, cut, tail }) => ({
        kind: 'insert' as const,
        tokens: [...BASES[base]!.slice(0, cut), ...tail],
      })),
    fc.record({ kind: fc.constant('fork' as const), pick: fc.nat(), n: fc.integer({ min: 1, max: 3 }) }),
    fc.record({ kind: fc.constant('step' as const), tokens: fc.integer({ min: 1, max: 3 }) }),
  );

  /** Runs `ops` on a tree of `slots` slots; operations that do not fit are skipped. */
  function grow(chunkSize: number, slots: number, ops: readonly Op[]): PrefixTree {
    const tree = new PrefixTree({ chunkSize, maxCapacity: slots, initialCapacity: slots });
    for (const o of ops) {
      const live = tree.sequences();
      try {
        if (o.kind === 'insert') tree.insert(o.tokens);
        else if (o.kind === 'fork' && live.length > 0) tree.fork(live[o.pick % live.length]!, o.n);
        else if (o.kind === 'step' && live.length > 0)
          tree.extendBatch(
            live,
            live.map(() => Array.from({ length: o.tokens }, (_, t) => t % 3)),
          );
      } catch {
        // CapacityError: the pool is full; the tree is unchanged
      }
    }
    return tree;
  }

  /** The capacity a state needs: its rows, partials and longest sequence. */
  function needed(rows: number, partials: number, longest: number): Capacity {
    return {
      rows: Math.max(rows, 1),
      partials: Math.max(partials, 1),
      writeTokens: 1,
      sequenceTokens: Math.max(longest, 1),
    };
  }

  test('packed context words ≤ contextWordsBound (decode and multi-token contexts, every mode)', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(4, 8, 16),
        fc.integer({ min: 4, max: 64 }),
        fc.array(op, { minLength: 1, maxLength: 30 }),
        fc.nat(),
        (chunkSize, slots, ops, seed) => {
          const tree = grow(chunkSize, slots, ops);
          const live = tree.sequences();
          if (live.length === 0) return;
          const longest = Math.max(...live.map((s) => tree.length(s)));
          for (const minSharers of [1, 2, Number.POSITIVE_INFINITY]) {
            for (const maxRunChunks of [1, Number.POSITIVE_INFINITY]) {
              const context = tree.context({ minSharers, maxRunChunks });
              const ioSeqs = Int32Array.from(live.filter((_, i) => (seed >> (i % 30)) & 1 || i === 0));
              const packed = packContext({
                ...context,
                rowIo: ioRowMap(context, ioSeqs),
                numIoRows: ioSeqs.length,
              });
              const capacity = needed(context.numRows, context.numPartials, longest);
              expect(packed.length).toBeLessThanOrEqual(contextWordsBound(capacity, slots, chunkSize));
            }
          }
          // Multi-token: up to 3 query tokens for some sequences (≤ their lengths).
          const seqs = live.filter((_, i) => i % 2 === 0);
          const counts = seqs.map((s, i) => Math.min(tree.length(s), 1 + ((seed + i) % 3)) || 1);
          if (seqs.some((s) => tree.length(s) === 0)) return;
          const base = tree.context({ minSharers: 1 });
          for (const minRows of [1, 2]) {
            const fields = expandQueryRows(
              base,
              { seqs: Int32Array.from(seqs), counts: Int32Array.from(counts) },
              minRows,
            );
            const packed = packContext(fields);
            const capacity = needed(fields.rowLength.length, fields.numPartials, longest);
            expect(packed.length).toBeLessThanOrEqual(contextWordsBound(capacity, slots, chunkSize));
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  test('ca_workspace_bytes of the emu and cpu modules ≤ workspaceBound over random trees', async () => {
    const SLOTS = 160;
    const emu = await Attention.create(spec, { layers: 1, capacityTokens: 16 * SLOTS, target: 'emu' });
    const cpu = await Attention.create(tinySpec('bf16', 'plain', ['cpu']), {
      layers: 1,
      capacityTokens: 16 * SLOTS,
      target: 'cpu',
    });
    opened.push(emu, cpu);
    const modules = [NativeModule.load(emu.module.path), NativeModule.load(cpu.module.path)];
    const pools = modules.map((m) => m.allocPool(SLOTS));
    let split = 0;
    try {
      fc.assert(
        fc.property(
          fc.array(longOp, { minLength: 1, maxLength: 12 }),
          fc.constantFrom(1, 2),
          (ops, minSharers) => {
            const tree = grow(16, SLOTS, ops);
            const live = tree.sequences();
            if (live.length === 0) return;
            const context = tree.context({ minSharers });
            const ioSeqs = Int32Array.from(live);
            const packed = packContext({
              ...context,
              rowIo: ioRowMap(context, ioSeqs),
              numIoRows: ioSeqs.length,
            });
            const longest = Math.max(...live.map((s) => tree.length(s)));
            const capacity = needed(context.numRows, context.numPartials, longest);
            modules.forEach((module, i) => {
              const { q: qType, out: outType } = module.info.dtype;
              const io = ioSeqs.length * module.info.qHeads * module.info.headDim;
              const make = (t: string) => (t === 'f32' ? new Float32Array(io) : new Uint16Array(io));
              const bytes = module.workspaceBytes(pools[i]!, {
                q: make(qType),
                out: make(outType),
                context: packed,
                softmaxScale: 0.125,
              });
              expect(bytes).toBeLessThanOrEqual(workspaceBound(module.info, capacity));
              // Unsplit, emu needs the partials only (o and lse, f32); more means some split > 1.
              const { qHeads, headDim } = module.info;
              if (module.info.target === 'emu' && bytes > context.numPartials * qHeads * (headDim + 1) * 4)
                split++;
            });
          },
        ),
        { numRuns: 60 },
      );
      expect(split).toBeGreaterThan(0);
    } finally {
      modules.forEach((m, i) => {
        m.free(pools[i]!);
      });
    }
  });
});
