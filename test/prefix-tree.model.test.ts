// Model-based test: random operation sequences against a naive model that keeps each sequence's
// token list. After every step: the tree's invariants hold; each sequence's tokens round-trip
// (through the tree, and through a fake KV store that applies the returned copies and writes);
// the kernel context covers each sequence's tokens exactly once (runs + private chunks); memory
// accounting equals a recount; failed calls change nothing.

import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import {
  ArgumentError,
  CapacityError,
  ChunkattnError,
  ShapeError,
  UnknownSequenceError,
} from '../runtime/errors.ts';
import {
  buildKernelContext,
  type KernelContext,
  type KernelContextOptions,
  RUN_FIELDS,
  RUN_KV_BEGIN,
  RUN_NUM_CHUNKS,
  RUN_PARTIAL_BEGIN,
  RUN_ROW_BEGIN,
  RUN_ROW_END,
} from '../runtime/kernel-context.ts';
import { PrefixTree } from '../runtime/prefix-tree.ts';

const SHAPE = { layers: 2, kvHeads: 1, headDim: 4, dtypeBytes: 2 };
const NUM_RUNS = Number(process.env.CHUNKATTN_MODEL_RUNS ?? 10_000);

type Op =
  | { kind: 'insert'; base: number; prefixLength: number; suffix: number[] }
  | { kind: 'append'; pick: number; token: number }
  | { kind: 'appendBatch'; picks: number[]; tokens: number[] }
  | { kind: 'fork'; pick: number; n: number }
  | { kind: 'release'; pick: number }
  | { kind: 'evict'; n: number }
  | { kind: 'bad'; variant: number; pick: number };

const token = fc.integer({ min: 0, max: 2 });
const pick = fc.nat({ max: 31 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('insert' as const),
      base: fc.nat(),
      prefixLength: fc.nat({ max: 24 }),
      suffix: fc.array(token, { maxLength: 10 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('append' as const), pick, token }) },
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('appendBatch' as const),
      picks: fc.array(pick, { minLength: 1, maxLength: 6 }),
      tokens: fc.array(token, { minLength: 6, maxLength: 6 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ kind: fc.constant('fork' as const), pick, n: fc.integer({ min: 1, max: 3 }) }),
  },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('release' as const), pick }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('evict' as const),
      n: fc.oneof(fc.integer({ min: 0, max: 4 }), fc.constant(Number.POSITIVE_INFINITY)),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('bad' as const), variant: fc.nat({ max: 8 }), pick }),
  },
);

const configArb = fc.record({
  chunkSize: fc.constantFrom(1, 2, 4, 4, 8),
  maxCapacity: fc.integer({ min: 1, max: 24 }),
  initialFraction: fc.double({ min: 0, max: 1, noNaN: true }),
  minSharers: fc.constantFrom(1, 2, 3, Number.POSITIVE_INFINITY),
  maxRunChunks: fc.constantFrom(1, 2, Number.POSITIVE_INFINITY),
});

interface Config {
  readonly chunkSize: number;
  readonly maxCapacity: number;
  readonly initialFraction: number;
  readonly minSharers: number;
  readonly maxRunChunks: number;
}

/** A KV store that only remembers which token each (slot, offset) holds. */
class FakeKvStore {
  private data = new Int32Array(0);
  constructor(private readonly chunkSize: number) {}
  private ensure(slot: number) {
    if ((slot + 1) * this.chunkSize > this.data.length) {
      const next = new Int32Array(Math.max((slot + 1) * this.chunkSize, this.data.length * 2)).fill(-1);
      next.set(this.data);
      this.data = next;
    }
  }
  copy(copies: readonly { srcSlot: number; dstSlot: number; tokens: number }[]) {
    const c = this.chunkSize;
    for (const { srcSlot, dstSlot, tokens } of copies) {
      this.ensure(Math.max(srcSlot, dstSlot));
      this.data.copyWithin(dstSlot * c, srcSlot * c, srcSlot * c + tokens);
    }
  }
  write(slots: Int32Array, offsets: Int32Array, tokens: ArrayLike<number>) {
    for (let i = 0; i < slots.length; i++) {
      this.ensure(slots[i]!);
      expect(offsets[i]).toBeGreaterThanOrEqual(0);
      expect(offsets[i]).toBeLessThan(this.chunkSize);
      this.data[slots[i]! * this.chunkSize + offsets[i]!] = tokens[i]!;
    }
  }
  /** A row's tokens read the way the kernels read them: position p in chunk ⌊p/C⌋ at p mod C. */
  readRow(ctx: KernelContext, row: number): number[] {
    const c = this.chunkSize;
    const out: number[] = [];
    const begin = ctx.rowChunkOffsets[row]!;
    for (let p = 0; p < ctx.rowLength[row]!; p++) {
      const slot = ctx.rowChunkSlots[begin + Math.floor(p / c)]!;
      this.ensure(slot);
      out.push(this.data[slot * c + (p % c)]!);
    }
    return out;
  }
}

/** Each row's tokens rebuilt from runs (via partials) then private chunks; throws if inconsistent. */
function coverage(t: PrefixTree, ctx: KernelContext): Map<number, number[]> {
  const c = ctx.chunkSize;
  const runOfPartial = new Int32Array(ctx.numPartials).fill(-1);
  for (let run = 0; run < ctx.numRuns; run++) {
    const f = run * RUN_FIELDS;
    for (let r = ctx.runs[f + RUN_ROW_BEGIN]!; r < ctx.runs[f + RUN_ROW_END]!; r++) {
      const partial = ctx.runs[f + RUN_PARTIAL_BEGIN]! + r - ctx.runs[f + RUN_ROW_BEGIN]!;
      if (runOfPartial[partial] !== -1) throw new Error(`partial ${partial} in two runs`);
      runOfPartial[partial] = run;
    }
  }
  if (runOfPartial.includes(-1)) throw new Error('a partial belongs to no run');
  const usedPartial = new Uint8Array(ctx.numPartials);
  const out = new Map<number, number[]>();
  for (let row = 0; row < ctx.numRows; row++) {
    const tokens: number[] = [];
    const chunks = ctx.rowChunkSlots.subarray(ctx.rowChunkOffsets[row]!, ctx.rowChunkOffsets[row + 1]!);
    let covered = 0;
    for (let p = ctx.rowPartialOffsets[row]!; p < ctx.rowPartialOffsets[row + 1]!; p++) {
      const partial = ctx.rowPartials[p]!;
      if (usedPartial[partial]) throw new Error(`partial ${partial} merged twice`);
      usedPartial[partial] = 1;
      const f = runOfPartial[partial]! * RUN_FIELDS;
      if (partial - ctx.runs[f + RUN_PARTIAL_BEGIN]! !== row - ctx.runs[f + RUN_ROW_BEGIN]!) {
        throw new Error(`row ${row} merges partial ${partial} of another row`);
      }
      if (ctx.runs[f + RUN_KV_BEGIN] !== tokens.length)
        throw new Error(`row ${row}: run does not continue the row`);
      const sharers = ctx.runs[f + RUN_ROW_END]! - ctx.runs[f + RUN_ROW_BEGIN]!;
      if (sharers < ctx.minSharers) throw new Error(`run with ${sharers} sharers below threshold`);
      const numChunks = ctx.runs[f + RUN_NUM_CHUNKS]!;
      if (numChunks < 1 || numChunks > ctx.maxRunChunks) throw new Error(`run of ${numChunks} chunks`);
      for (let k = 0; k < numChunks; k++) {
        const slot = ctx.runSlots[ctx.runs[f]! + k]!;
        if (slot !== chunks[covered])
          throw new Error(`row ${row}: run chunk ${slot} is not its chunk ${covered}`);
        const content = t.chunkTokens(slot);
        if (sharers > 1 && content.length !== c) throw new Error(`multi-row run holds partial chunk ${slot}`);
        tokens.push(...content);
        covered++;
      }
    }
    if (covered !== ctx.rowSharedChunks[row]) throw new Error(`row ${row}: rowSharedChunks mismatch`);
    for (let k = covered; k < chunks.length; k++) {
      const slot = chunks[k]!;
      // A chunk with ≥ minSharers sharers must have been in a run.
      if (t.chunkRefs(slot) >= ctx.minSharers)
        throw new Error(`row ${row}: shared chunk ${slot} left to phase 2`);
      tokens.push(...t.chunkTokens(slot));
    }
    if (tokens.length !== ctx.rowLength[row])
      throw new Error(`row ${row}: covers ${tokens.length} of ${ctx.rowLength[row]}`);
    out.set(ctx.rowSeq[row]!, tokens);
  }
  if (usedPartial.includes(0)) throw new Error('a partial is merged by no row');
  return out;
}

function snapshot(t: PrefixTree): string {
  return JSON.stringify({
    dump: t.dump({ slots: true }),
    lengths: t.sequences().map((s) => [s, t.length(s)]),
    stats: t.stats(SHAPE),
    lru: t.evictionOrder(),
    free: t.pool.freeOrder(),
    capacity: t.capacity,
    version: t.shapeVersion,
  });
}

function sameArrays(a: KernelContext, b: KernelContext): boolean {
  const keys = [
    'rowSeq',
    'rowLength',
    'rowChunkOffsets',
    'rowChunkSlots',
    'rowSharedChunks',
    'rowPartialOffsets',
    'rowPartials',
    'runs',
    'runSlots',
  ] as const;
  return keys.every((k) => a[k].length === b[k].length && a[k].every((v, i) => v === b[k][i]));
}

function commonFullChunks(a: readonly number[], b: readonly number[], c: number): number {
  let k = 0;
  const limit = Math.floor(Math.min(a.length, b.length) / c);
  while (k < limit) {
    for (let i = k * c; i < (k + 1) * c; i++) if (a[i] !== b[i]) return k;
    k++;
  }
  return k;
}

function runScenario(config: Config, ops: Op[]): void {
  const c = config.chunkSize;
  const initialCapacity = Math.floor(config.initialFraction * config.maxCapacity);
  let grownTo = initialCapacity;
  const t = new PrefixTree({
    chunkSize: c,
    maxCapacity: config.maxCapacity,
    initialCapacity,
    onPoolGrow: (capacity) => {
      grownTo = capacity;
    },
  });
  const options: KernelContextOptions = { minSharers: config.minSharers, maxRunChunks: config.maxRunChunks };
  const kv = new FakeKvStore(c);
  const model = new Map<number, number[]>();
  const history: number[][] = [];
  let nextHandle = 0;
  let lastContext = t.context(options);
  let lastVersion = t.shapeVersion;

  const live = () => [...model.keys()];
  const pickLive = (p: number) => {
    const handles = live();
    return handles.length === 0 ? -1 : handles[p % handles.length]!;
  };

  for (const op of ops) {
    const before = snapshot(t);
    const stats = t.stats(SHAPE);
    const obtainable = stats.chunksFree + stats.chunksEvictable + (config.maxCapacity - stats.capacityChunks);
    let expectedError: (new (...args: never[]) => Error) | undefined;
    try {
      switch (op.kind) {
        case 'insert': {
          const base = history.length > 0 ? history[op.base % history.length]! : [];
          const prompt = [...base.slice(0, op.prefixLength), ...op.suffix];
          const maxMatch = prompt.length > 0 ? Math.floor((prompt.length - 1) / c) : 0;
          const r = t.insert(prompt);
          expect(r.seq).toBe(nextHandle++);
          expect(r.matchedTokens % c).toBe(0);
          expect(r.matchedTokens).toBeLessThanOrEqual(maxMatch * c);
          // Matching finds at least as much as any live sequence offers.
          let best = 0;
          for (const tokens of model.values())
            best = Math.max(best, Math.min(maxMatch, commonFullChunks(tokens, prompt, c)));
          expect(r.matchedTokens).toBeGreaterThanOrEqual(best * c);
          expect(r.newChunks).toBe(Math.ceil((prompt.length - r.matchedTokens) / c));
          expect(r.writes.slots.length).toBe(prompt.length - r.matchedTokens);
          kv.write(r.writes.slots, r.writes.offsets, prompt.slice(r.matchedTokens));
          model.set(r.seq, prompt);
          history.push(prompt);
          break;
        }
        case 'append':
        case 'appendBatch': {
          const picks = op.kind === 'append' ? [op.pick] : op.picks;
          const seqs = [...new Set(picks.map(pickLive))];
          if (seqs[0] === -1) break;
          const tokens = op.kind === 'append' ? [op.token] : op.tokens.slice(0, seqs.length);
          const need = seqs.filter((s) => model.get(s)!.length % c === 0).length;
          if (need > obtainable) expectedError = CapacityError;
          const r = op.kind === 'append' ? t.append(seqs[0]!, tokens[0]!) : t.appendBatch(seqs, tokens);
          expect(expectedError).toBeUndefined();
          expect(r.copies).toEqual([]);
          kv.copy(r.copies);
          kv.write(r.slots, r.offsets, tokens);
          for (const [i, s] of seqs.entries()) model.get(s)!.push(tokens[i]!);
          break;
        }
        case 'fork': {
          const seq = pickLive(op.pick);
          if (seq === -1) break;
          const tokens = model.get(seq)!;
          const partial = tokens.length % c !== 0;
          if (partial && op.n > obtainable) expectedError = CapacityError;
          const r = t.fork(seq, op.n);
          expect(expectedError).toBeUndefined();
          expect(r.seqs).toEqual(Array.from({ length: op.n }, (_, i) => nextHandle + i));
          nextHandle += op.n;
          expect(r.copies.length).toBe(partial ? op.n : 0);
          for (const copy of r.copies) expect(copy.tokens).toBe(tokens.length % c);
          kv.copy(r.copies);
          for (const s of r.seqs) model.set(s, [...tokens]);
          break;
        }
        case 'release': {
          const seq = pickLive(op.pick);
          if (seq === -1) break;
          t.release(seq);
          history.push(model.get(seq)!);
          model.delete(seq);
          break;
        }
        case 'evict': {
          const evictable = t.stats(SHAPE).chunksEvictable;
          expect(t.evict(op.n)).toBe(Math.min(op.n, evictable));
          break;
        }
        case 'bad': {
          const seq = pickLive(op.pick);
          const unknown = nextHandle + 5;
          const calls: [() => unknown, new (...args: never[]) => Error][] = [
            [() => t.append(unknown, 0), UnknownSequenceError],
            [() => t.release(unknown), UnknownSequenceError],
            [() => t.fork(unknown, 1), UnknownSequenceError],
            [() => t.insert([0, 1, -3]), ArgumentError],
            [() => t.insert([0, 0.5]), ArgumentError],
            [() => t.evict(-2), ArgumentError],
            ...(seq === -1
              ? []
              : ([
                  [() => t.appendBatch([seq], [0, 1]), ShapeError],
                  [() => t.appendBatch([seq, seq], [0, 1]), ArgumentError],
                  [() => t.fork(seq, 0), ArgumentError],
                  [() => t.appendBatch([seq, unknown], [1, 1]), UnknownSequenceError],
                  [() => t.append(seq, Number.NaN), ArgumentError],
                ] as [() => unknown, new (...args: never[]) => Error][])),
          ];
          const [call, error] = calls[op.variant % calls.length]!;
          expect(call).toThrow(error);
          expect(snapshot(t)).toBe(before);
          break;
        }
      }
    } catch (error) {
      if (!(error instanceof ChunkattnError)) throw error;
      // Only capacity may fail a well-formed call, only when it must, and then nothing changes.
      expect(error).toBeInstanceOf(CapacityError);
      const capacityError = error as CapacityError;
      expect(capacityError.neededChunks).toBeGreaterThan(capacityError.freeChunks);
      expect(capacityError.freeChunks).toBeLessThanOrEqual(obtainable);
      expect(snapshot(t)).toBe(before);
    }

    // ---- after every step ----
    t.validate(model);
    expect(t.capacity).toBe(grownTo);
    const s = t.stats(SHAPE);
    expect(s.liveSequences).toBe(model.size);
    expect(s.logicalTokens).toBe([...model.values()].reduce((sum, tokens) => sum + tokens.length, 0));
    expect(s.chunksInUse + s.chunksEvictable + s.chunksFree).toBe(s.capacityChunks);
    expect(s.capacityChunks).toBeLessThanOrEqual(config.maxCapacity);

    for (const opts of [{}, options]) {
      const ctx = t.context(opts);
      const covered = coverage(t, ctx);
      expect(covered.size).toBe(model.size);
      for (const [seq, tokens] of model) expect(covered.get(seq)).toEqual(tokens);
      for (let row = 0; row < ctx.numRows; row++) {
        expect(ctx.rowOf(ctx.rowSeq[row]!)).toBe(row);
        expect(kv.readRow(ctx, row)).toEqual(model.get(ctx.rowSeq[row]!));
      }
      // A cached context equals a fresh build.
      expect(sameArrays(ctx, buildKernelContext(t.contextSource(), opts))).toBe(true);
    }

    // Recount memory from the context: distinct slots and their tokens.
    const ctx = t.context(options);
    const distinct = new Set(ctx.rowChunkSlots);
    expect(s.chunksInUse).toBe(distinct.size);
    let storedTokens = 0;
    for (const slot of distinct) storedTokens += t.chunkTokens(slot).length;
    expect(s.storedTokens).toBe(storedTokens);

    // Version: unchanged exactly when the context is the cached object.
    if (t.shapeVersion === lastVersion) expect(ctx).toBe(lastContext);
    else expect(ctx.version).not.toBe(lastContext.version);
    lastContext = ctx;
    lastVersion = t.shapeVersion;
  }
}

describe('prefix tree against a naive model', () => {
  test(`invariants, round trips, context coverage and accounting hold over ${NUM_RUNS} random operation sequences`, () => {
    fc.assert(
      fc.property(configArb, fc.array(opArb, { minLength: 1, maxLength: 40 }), (config, ops) => {
        runScenario(config, ops);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  test('a long run under heavy capacity pressure (one scenario, 3000 steps)', () => {
    const ops = fc.sample(opArb, { numRuns: 3000, seed: 42 });
    runScenario(
      {
        chunkSize: 4,
        maxCapacity: 12,
        initialFraction: 0.25,
        minSharers: 2,
        maxRunChunks: Number.POSITIVE_INFINITY,
      },
      ops,
    );
  });
});
