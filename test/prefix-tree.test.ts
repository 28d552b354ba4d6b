// Exact-shape tests of the prefix tree: each operation, the tree it leaves, and what it tells
// the KV store to do. The model-based test is prefix-tree.model.test.ts.

import { describe, expect, test } from 'vitest';
import {
  ArgumentError,
  CapacityError,
  InvariantError,
  ShapeError,
  UnknownSequenceError,
} from '../runtime/errors.ts';
import { LLAMA2_7B } from '../runtime/kv-stats.ts';
import { PrefixTree } from '../runtime/prefix-tree.ts';

const range = (begin: number, end: number) => Array.from({ length: end - begin }, (_, i) => begin + i);

function tree(maxCapacity = 64, chunkSize = 4): PrefixTree {
  return new PrefixTree({ chunkSize, maxCapacity, initialCapacity: Math.min(maxCapacity, 8) });
}

/** Everything observable about a tree, to prove a failed call changed nothing. */
function snapshot(t: PrefixTree): string {
  return JSON.stringify({
    dump: t.dump({ slots: true }),
    sequences: t.sequences().map((s) => [s, Array.from(t.tokensOf(s))]),
    stats: t.stats(LLAMA2_7B),
    lru: t.evictionOrder(),
    free: t.pool.freeOrder(),
    capacity: t.capacity,
    version: t.shapeVersion,
    context: t.context(),
  });
}

function expectUnchanged(t: PrefixTree, call: () => unknown, error: new (...args: never[]) => Error): void {
  const before = snapshot(t);
  expect(call).toThrow(error);
  expect(snapshot(t)).toBe(before);
  t.validate();
}

describe('insert', () => {
  test('a prompt in an empty tree gets fresh chunks; every token is written', () => {
    const t = tree();
    const r = t.insert(range(1, 11));
    expect(r.seq).toBe(0);
    expect(r.matchedTokens).toBe(0);
    expect(r.newChunks).toBe(3);
    expect(Array.from(r.writes.slots)).toEqual([0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
    expect(Array.from(r.writes.offsets)).toEqual([0, 1, 2, 3, 0, 1, 2, 3, 0, 1]);
    expect(t.dump({ slots: true })).toBe(
      ['[1 2 3 4] #0 refs=1', '  [5 6 7 8] #1 refs=1', '    [9 10] #2 refs=1 seqs=0'].join('\n'),
    );
    t.validate();
  });

  test('a shared prefix is matched chunk by chunk and costs no prefill', () => {
    const t = tree();
    t.insert([...range(1, 9), 9, 10]);
    const r = t.insert([...range(1, 9), 11, 12, 13]);
    expect(r.matchedTokens).toBe(8);
    expect(r.newChunks).toBe(1);
    expect(Array.from(r.writes.slots)).toEqual([3, 3, 3]);
    expect(Array.from(r.writes.offsets)).toEqual([0, 1, 2]);
    expect(t.dump()).toBe(
      [
        '[1 2 3 4] refs=2',
        '  [5 6 7 8] refs=2',
        '    [9 10] refs=1 seqs=0',
        '    [11 12 13] refs=1 seqs=1',
      ].join('\n'),
    );
    t.validate();
  });

  test('the chunk holding the last prompt token is never matched (the tail stays private)', () => {
    const t = tree();
    t.insert(range(1, 10)); // [1..4][5..8][9]
    const r = t.insert(range(1, 9)); // [1..4][5..8]: the second chunk holds the last token
    expect(r.matchedTokens).toBe(4);
    expect(r.newChunks).toBe(1);
    expect(t.dump()).toBe(
      ['[1 2 3 4] refs=2', '  [5 6 7 8] refs=1', '    [9] refs=1 seqs=0', '  [5 6 7 8] refs=1 seqs=1'].join(
        '\n',
      ),
    );
    // A longer prompt may then match either copy of [5..8]; it prefers a live one.
    const longer = t.insert(range(1, 13));
    expect(longer.matchedTokens).toBe(8);
    t.validate();
  });

  test('a prompt shorter than a chunk, and an empty prompt, match nothing', () => {
    const t = tree();
    t.insert([1, 2, 3]);
    const r = t.insert([1, 2, 3]);
    expect(r.matchedTokens).toBe(0);
    const empty = t.insert([]);
    expect(empty).toMatchObject({ matchedTokens: 0, newChunks: 0 });
    expect(empty.writes.slots.length).toBe(0);
    expect(t.length(empty.seq)).toBe(0);
    expect(t.dump()).toBe(['(root) seqs=2', '[1 2 3] refs=1 seqs=0', '[1 2 3] refs=1 seqs=1'].join('\n'));
    t.validate();
  });

  test('released full chunks stay cached and a later prompt reuses them', () => {
    const t = tree();
    const a = t.insert(range(1, 11));
    expect(t.release(a.seq)).toEqual({ freedChunks: 1, evictableChunks: 2 });
    expect(t.dump({ slots: true })).toBe(['[1 2 3 4] #0 cached', '  [5 6 7 8] #1 cached'].join('\n'));
    const b = t.insert([...range(1, 9), 42]);
    expect(b.matchedTokens).toBe(8);
    expect(b.newChunks).toBe(1);
    expect(t.dump({ slots: true })).toBe(
      ['[1 2 3 4] #0 refs=1', '  [5 6 7 8] #1 refs=1', '    [42] #2 refs=1 seqs=1'].join('\n'),
    );
    expect(t.stats(LLAMA2_7B)).toMatchObject({ chunksInUse: 3, chunksEvictable: 0, storedTokens: 9 });
    t.validate();
  });

  test('bad tokens are ArgumentErrors and leave the tree unchanged', () => {
    const t = tree();
    t.insert(range(1, 6));
    expectUnchanged(t, () => t.insert([1, 2, -1]), ArgumentError);
    expectUnchanged(t, () => t.insert([1, 2.5]), ArgumentError);
    expectUnchanged(t, () => t.insert([1, Number.NaN]), ArgumentError);
    expectUnchanged(t, () => t.insert([2 ** 31]), ArgumentError);
    expectUnchanged(t, () => t.insert(['7' as unknown as number]), ArgumentError);
    expect(t.insert([9]).seq).toBe(1); // failed calls consume no handle
  });

  test('accepts an Int32Array prompt', () => {
    const t = tree();
    t.insert(Int32Array.from(range(1, 10)));
    expect(t.insert(Int32Array.from(range(1, 10))).matchedTokens).toBe(8);
  });
});

describe('append', () => {
  test('appends fill the tail in place; a full tail gets a new private chunk', () => {
    const t = tree();
    const { seq } = t.insert([1, 2, 3]);
    const version = t.shapeVersion;
    expect(t.append(seq, 4)).toEqual({ slots: Int32Array.of(0), offsets: Int32Array.of(3), copies: [] });
    expect(t.shapeVersion).toBe(version); // inside a chunk: only the length moves
    const r = t.append(seq, 5);
    expect(Array.from(r.slots)).toEqual([1]);
    expect(Array.from(r.offsets)).toEqual([0]);
    expect(t.shapeVersion).toBe(version + 1);
    expect(t.dump({ slots: true })).toBe(['[1 2 3 4] #0 refs=1', '  [5] #1 refs=1 seqs=0'].join('\n'));
    t.validate();
  });

  test('an empty sequence gets its first chunk on the first append', () => {
    const t = tree();
    const { seq } = t.insert([]);
    t.append(seq, 7);
    expect(t.dump()).toBe('[7] refs=1 seqs=0');
    expect(Array.from(t.tokensOf(seq))).toEqual([7]);
    t.validate();
  });

  test('appendBatch returns entry i for seqs[i], whatever the order', () => {
    const t = tree();
    const a = t.insert([1, 2, 3, 4]).seq;
    const b = t.insert([5, 6]).seq;
    const r = t.appendBatch([b, a], [7, 8]);
    expect(Array.from(r.slots)).toEqual([1, 2]);
    expect(Array.from(r.offsets)).toEqual([2, 0]);
    expect(Array.from(t.tokensOf(a))).toEqual([1, 2, 3, 4, 8]);
    expect(Array.from(t.tokensOf(b))).toEqual([5, 6, 7]);
    t.validate();
  });

  test('a chunk filled by appends becomes matchable', () => {
    const t = tree();
    const { seq } = t.insert([1, 2]);
    t.appendBatch([seq], [3]);
    t.appendBatch([seq], [4]);
    expect(t.insert([1, 2, 3, 4, 5]).matchedTokens).toBe(4);
    t.validate();
  });

  test('bad batches throw typed errors and leave the tree unchanged', () => {
    const t = tree(4);
    const a = t.insert([1, 2, 3, 4]).seq;
    const b = t.insert([5, 6, 7, 8]).seq;
    expectUnchanged(t, () => t.appendBatch([a, b], [1]), ShapeError);
    expectUnchanged(t, () => t.appendBatch([a, 99], [1, 2]), UnknownSequenceError);
    expectUnchanged(t, () => t.appendBatch([a, a], [1, 2]), ArgumentError);
    expectUnchanged(t, () => t.appendBatch([a, b], [1, -2]), ArgumentError);
    expectUnchanged(t, () => t.append(b, 0.5), ArgumentError);
    // Both tails are full: the batch needs 2 chunks, the pool has 2 free. A third sequence
    // makes it need 3 of 2: the whole batch fails, nobody appends.
    const c = t.insert([9, 9]).seq;
    t.append(c, 9);
    t.append(c, 9);
    expectUnchanged(t, () => t.appendBatch([a, b, c], [1, 2, 3]), CapacityError);
  });
});

describe('fork', () => {
  test('a partial tail is copied on write: one new chunk and one copy per fork', () => {
    const t = tree();
    const { seq } = t.insert(range(1, 7)); // [1..4][5 6]
    const r = t.fork(seq, 2);
    expect(r.seqs).toEqual([1, 2]);
    expect(r.copies).toEqual([
      { srcSlot: 1, dstSlot: 2, tokens: 2 },
      { srcSlot: 1, dstSlot: 3, tokens: 2 },
    ]);
    expect(t.dump({ slots: true })).toBe(
      [
        '[1 2 3 4] #0 refs=3',
        '  [5 6] #1 refs=1 seqs=0',
        '  [5 6] #2 refs=1 seqs=1',
        '  [5 6] #3 refs=1 seqs=2',
      ].join('\n'),
    );
    t.appendBatch([0, 1, 2], [10, 11, 12]);
    expect(Array.from(t.tokensOf(1))).toEqual([1, 2, 3, 4, 5, 6, 11]);
    t.validate();
  });

  test('a full tail is shared by the forks; each one branches on its next append', () => {
    const t = tree();
    const { seq } = t.insert(range(1, 9));
    const r = t.fork(seq, 2);
    expect(r.copies).toEqual([]);
    expect(t.dump()).toBe(['[1 2 3 4] refs=3', '  [5 6 7 8] refs=3 seqs=0,1,2'].join('\n'));
    t.validate();
    const w = t.appendBatch([seq, ...r.seqs], [20, 21, 22]);
    expect(new Set(w.slots).size).toBe(3);
    expect(t.dump()).toBe(
      [
        '[1 2 3 4] refs=3',
        '  [5 6 7 8] refs=3',
        '    [20] refs=1 seqs=0',
        '    [21] refs=1 seqs=1',
        '    [22] refs=1 seqs=2',
      ].join('\n'),
    );
    t.validate();
  });

  test('fork errors leave the tree unchanged', () => {
    const t = tree(3);
    const { seq } = t.insert([1, 2, 3, 4, 5]); // 2 chunks, 1 free
    expectUnchanged(t, () => t.fork(seq, 0), ArgumentError);
    expectUnchanged(t, () => t.fork(seq, 1.5), ArgumentError);
    expectUnchanged(t, () => t.fork(77, 1), UnknownSequenceError);
    expectUnchanged(t, () => t.fork(seq, 2), CapacityError);
    expect(t.fork(seq, 1).seqs).toEqual([1]);
  });
});

describe('release and evict', () => {
  test('release frees the partial tail, caches full chunks, and keeps shared ones', () => {
    const t = tree();
    const a = t.insert(range(1, 14)).seq; // [1..4][5..8][9..12][13]
    const b = t.insert([...range(1, 9), 50]).seq;
    expect(t.release(a)).toEqual({ freedChunks: 1, evictableChunks: 1 });
    expect(t.dump({ slots: true })).toBe(
      [
        '[1 2 3 4] #0 refs=1',
        '  [5 6 7 8] #1 refs=1',
        '    [9 10 11 12] #2 cached',
        '    [50] #4 refs=1 seqs=1',
      ].join('\n'),
    );
    expect(() => t.release(a)).toThrow(UnknownSequenceError);
    t.release(b);
    expect(t.evictionOrder()).toEqual([2, 1, 0]);
    t.validate();
  });

  test('evict frees least recently used leaves first', () => {
    const t = tree();
    const a = t.insert([...range(1, 9), 100]).seq; // [1..4][5..8][100]
    const b = t.insert([...range(1, 5), ...range(20, 24), 101]).seq; // [1..4][20..23][101]
    t.release(b);
    t.release(a);
    // b's private chunk went first, then a's, then the shared root chunk.
    expect(t.evictionOrder()).toEqual([3, 1, 0]);
    expect(t.evict(1)).toBe(1);
    expect(t.dump({ slots: true })).toBe(['[1 2 3 4] #0 cached', '  [5 6 7 8] #1 cached'].join('\n'));
    expect(t.evict()).toBe(2);
    expect(t.dump()).toBe('');
    expect(t.evict(5)).toBe(0);
    expect(() => t.evict(-1)).toThrow(ArgumentError);
    t.validate();
  });

  test('reusing a cached chunk makes it most recently used', () => {
    const t = tree();
    const a = t.insert([1, 2, 3, 4, 9]).seq;
    const b = t.insert([5, 6, 7, 8, 9]).seq;
    t.release(a);
    t.release(b);
    expect(t.evictionOrder()).toEqual([0, 2]);
    const c = t.insert([1, 2, 3, 4, 10]).seq;
    t.release(c);
    expect(t.evictionOrder()).toEqual([2, 0]);
    t.validate();
  });

  test('allocation evicts automatically when the pool is full', () => {
    const t = tree(4);
    const a = t.insert([1, 2, 3, 4, 5, 6, 7, 8, 9]).seq; // 3 chunks
    t.release(a); // [1..4] and [5..8] cached, [9] freed
    const b = t.insert([20, 21, 22, 23, 24, 25, 26]); // needs 2: 2 free
    expect(b.newChunks).toBe(2);
    const c = t.insert([30, 31, 32]); // needs 1: evicts the LRU leaf [5..8]
    expect(t.dump()).toBe(
      [
        '[1 2 3 4] cached',
        '[20 21 22 23] refs=1',
        '  [24 25 26] refs=1 seqs=1',
        '[30 31 32] refs=1 seqs=2',
      ].join('\n'),
    );
    expect(Array.from(c.writes.slots)).toEqual([1, 1, 1]); // the evicted slot, reused
    t.validate();
  });

  test('CapacityError only when nothing can be evicted, and then nothing changes', () => {
    const t = tree(3);
    t.insert([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expectUnchanged(t, () => t.insert([7]), CapacityError);
    try {
      t.insert([7]);
    } catch (error) {
      expect(error).toBeInstanceOf(CapacityError);
      expect((error as CapacityError).neededChunks).toBe(1);
      expect((error as CapacityError).freeChunks).toBe(0);
    }
  });

  test('chunks an insert revives from the cache cannot also be evicted for its own new chunks', () => {
    const t = tree(3);
    const a = t.insert([1, 2, 3, 4, 5, 6, 7, 8, 9]).seq;
    t.release(a); // 2 cached, 1 free
    // Matches both cached chunks and needs 2 new ones: only 1 slot can be had.
    expectUnchanged(t, () => t.insert([...range(1, 9), 9, 10, 11, 12, 13]), CapacityError);
    // Needing 1 new chunk fits.
    expect(t.insert([...range(1, 9), 9]).matchedTokens).toBe(8);
    t.validate();
  });
});

describe('handles, stats and validation', () => {
  test('handles are stable and never reused; rows follow through the row map', () => {
    const t = tree();
    const a = t.insert([1, 2, 3, 4, 5]).seq;
    const b = t.insert([1, 2, 3, 4, 6]).seq;
    const c = t.insert([9]).seq;
    t.release(b);
    const d = t.insert([1, 2, 3, 4, 7]).seq;
    expect([a, b, c, d]).toEqual([0, 1, 2, 3]);
    expect(t.sequences()).toEqual([0, 2, 3]);
    const ctx = t.context();
    for (const seq of t.sequences()) expect(ctx.rowSeq[ctx.rowOf(seq)]).toBe(seq);
    expect(ctx.rowOf(b)).toBe(-1);
  });

  test('stats: a shared prefix costs one copy of its KV, whatever the batch', () => {
    const t = new PrefixTree({ chunkSize: 64, maxCapacity: 1024 });
    const shared = Array(1024).fill(42);
    for (let i = 0; i < 32; i++) t.insert([...shared, 1000 + i]);
    const s = t.stats(LLAMA2_7B);
    expect(s).toMatchObject({
      chunksInUse: 16 + 32,
      chunksEvictable: 0,
      liveSequences: 32,
      logicalTokens: 32 * 1025,
      storedTokens: 1024 + 32,
      bytesPerToken: 512 * 1024,
      bytesPerChunk: 64 * 512 * 1024,
    });
    expect(s.bytesStored).toBe(48 * 64 * 512 * 1024);
    expect(s.bytesLogical).toBe(32 * 1025 * 512 * 1024);
    expect(s.savedPercent).toBeCloseTo(100 * (1 - (48 * 64) / (32 * 1025)), 10);
    expect(s.chunksFree + s.chunksEvictable + s.chunksInUse).toBe(s.capacityChunks);
    expect(() => t.stats({ ...LLAMA2_7B, headDim: 0 })).toThrow(ArgumentError);
  });

  test('peak chunks in use survives releases', () => {
    const t = tree();
    const a = t.insert(range(1, 12)).seq;
    t.release(a);
    expect(t.stats(LLAMA2_7B)).toMatchObject({ chunksInUse: 0, peakChunksInUse: 3 });
    t.resetPeak();
    expect(t.stats(LLAMA2_7B).peakChunksInUse).toBe(0);
  });

  test('validate reports a corrupted refcount', () => {
    const t = tree();
    t.insert(range(1, 10));
    t.validate();
    (t as unknown as { refs: Int32Array }).refs[1]! += 1;
    expect(() => t.validate()).toThrow(InvariantError);
  });

  test('validate checks the caller model: live set and tokens', () => {
    const t = tree();
    const a = t.insert([1, 2, 3]).seq;
    t.validate(new Map([[a, [1, 2, 3]]]));
    expect(() => t.validate(new Map([[a, [1, 2, 4]]]))).toThrow(InvariantError);
    expect(() => t.validate(new Map())).toThrow(InvariantError);
  });

  test('the pool grows on demand and reports it before the writes are due', () => {
    const grown: number[] = [];
    const t = new PrefixTree({
      chunkSize: 4,
      initialCapacity: 2,
      maxCapacity: 100,
      onPoolGrow: (c) => grown.push(c),
    });
    const r = t.insert(range(0, 40));
    expect(grown).toEqual([18]);
    expect(Math.max(...r.writes.slots)).toBeLessThan(t.capacity);
    t.validate();
  });
});
