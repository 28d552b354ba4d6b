// The kernel context: exact work lists for known trees, caching/versioning, and a coverage check
// (every sequence's tokens are covered exactly once by its runs plus its private chunks).

import { describe, expect, test } from 'vitest';
import { ArgumentError, ShapeError, UnknownSequenceError } from '../runtime/errors.ts';
import {
  buildKernelContext,
  CONTEXT_HEADER_WORDS,
  CONTEXT_MAGIC,
  CONTEXT_SECTIONS,
  CONTEXT_WORD,
  ContextPlanner,
  ioRowMap,
  type KernelContext,
  packContext,
  RUN_FIELDS,
  RUN_PARTIAL_BEGIN,
  RUN_ROW_BEGIN,
  RUN_ROW_END,
} from '../runtime/kernel-context.ts';
import { PrefixTree } from '../runtime/prefix-tree.ts';

const range = (begin: number, end: number) => Array.from({ length: end - begin }, (_, i) => begin + i);

function runsOf(ctx: KernelContext): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < ctx.numRuns; i++)
    out.push(Array.from(ctx.runs.subarray(i * RUN_FIELDS, (i + 1) * RUN_FIELDS)));
  return out;
}

function csr(offsets: Int32Array, values: Int32Array): number[][] {
  const out: number[][] = [];
  for (let r = 0; r + 1 < offsets.length; r++)
    out.push(Array.from(values.subarray(offsets[r]!, offsets[r + 1]!)));
  return out;
}

/**
 * Rebuilds every row's tokens from the context the way phase 1 + phase 2 read them: the runs the
 * row's partials point at (in order, each starting where the previous ended), then the row's
 * private chunks. Throws on any inconsistency. Exported shape is duplicated in the model test.
 */
function coverage(t: PrefixTree, ctx: KernelContext): Map<number, number[]> {
  const c = ctx.chunkSize;
  const partialOwner = new Int32Array(ctx.numPartials).fill(-1);
  const out = new Map<number, number[]>();
  for (let row = 0; row < ctx.numRows; row++) {
    const tokens: number[] = [];
    const chunks = ctx.rowChunkSlots.subarray(ctx.rowChunkOffsets[row]!, ctx.rowChunkOffsets[row + 1]!);
    let shared = 0;
    for (let p = ctx.rowPartialOffsets[row]!; p < ctx.rowPartialOffsets[row + 1]!; p++) {
      const partial = ctx.rowPartials[p]!;
      if (partialOwner[partial] !== -1) throw new Error(`partial ${partial} used twice`);
      partialOwner[partial] = row;
      let run = -1;
      for (let i = 0; i < ctx.numRuns; i++) {
        const begin = ctx.runs[i * RUN_FIELDS + RUN_PARTIAL_BEGIN]!;
        const rows = ctx.runs[i * RUN_FIELDS + RUN_ROW_END]! - ctx.runs[i * RUN_FIELDS + RUN_ROW_BEGIN]!;
        if (partial >= begin && partial < begin + rows) run = i;
      }
      if (run < 0) throw new Error(`partial ${partial} belongs to no run`);
      const [chunkBegin, numChunks, kvBegin, rowBegin, rowEnd, partialBegin] = runsOf(ctx)[run]!;
      if (row < rowBegin! || row >= rowEnd! || partial !== partialBegin! + row - rowBegin!) {
        throw new Error(`row ${row}: partial ${partial} does not match run ${run}`);
      }
      if (kvBegin !== tokens.length)
        throw new Error(`row ${row}: run ${run} starts at ${kvBegin}, row has ${tokens.length}`);
      for (let k = 0; k < numChunks!; k++) {
        const slot = ctx.runSlots[chunkBegin! + k]!;
        if (slot !== chunks[shared])
          throw new Error(`row ${row}: run chunk ${slot} is not its chunk ${shared}`);
        const content = t.chunkTokens(slot);
        if (rowEnd! - rowBegin! > 1 && content.length !== c)
          throw new Error(`shared chunk ${slot} is partial`);
        tokens.push(...content);
        shared++;
      }
    }
    if (shared !== ctx.rowSharedChunks[row])
      throw new Error(`row ${row}: ${shared} run chunks, rowSharedChunks says ${ctx.rowSharedChunks[row]}`);
    for (let k = shared; k < chunks.length; k++) tokens.push(...t.chunkTokens(chunks[k]!));
    if (tokens.length !== ctx.rowLength[row])
      throw new Error(`row ${row}: ${tokens.length} tokens, length ${ctx.rowLength[row]}`);
    out.set(ctx.rowSeq[row]!, tokens);
  }
  if (partialOwner.includes(-1)) throw new Error('a partial is merged by no row');
  return out;
}

/** A: [1..4][5..8][9]  B: [1..4][5..8][10]  C: [1..4][11..14][15]  D: [20]. */
function nestedTree(): PrefixTree {
  const t = new PrefixTree({ chunkSize: 4, maxCapacity: 32 });
  t.insert([...range(1, 9), 9]);
  t.insert([...range(1, 9), 10]);
  t.insert([1, 2, 3, 4, ...range(11, 16)]);
  t.insert([20]);
  return t;
}

describe('kernel context shapes', () => {
  test('two-phase: runs for chunks shared by ≥ 2, with contiguous DFS row ranges', () => {
    const t = nestedTree();
    const ctx = t.context();
    expect(ctx.numRows).toBe(4);
    expect(Array.from(ctx.rowSeq)).toEqual([0, 1, 2, 3]);
    expect(Array.from(ctx.rowLength)).toEqual([9, 9, 9, 1]);
    expect(csr(ctx.rowChunkOffsets, ctx.rowChunkSlots)).toEqual([[0, 1, 2], [0, 1, 3], [0, 4, 5], [6]]);
    expect(Array.from(ctx.rowSharedChunks)).toEqual([2, 2, 1, 0]);
    // chunkBegin, numChunks, kvBegin, rowBegin, rowEnd, partialBegin
    expect(runsOf(ctx)).toEqual([
      [0, 1, 0, 0, 3, 0],
      [1, 1, 4, 0, 2, 3],
    ]);
    expect(Array.from(ctx.runSlots)).toEqual([0, 1]);
    expect(ctx.numPartials).toBe(5);
    expect(csr(ctx.rowPartialOffsets, ctx.rowPartials)).toEqual([[0, 3], [1, 4], [2], []]);
    coverage(t, ctx);
  });

  test('chunk-first (minSharers = 1): every chunk is in a run, private chains included', () => {
    const t = nestedTree();
    const ctx = t.context({ minSharers: 1 });
    expect(runsOf(ctx)).toEqual([
      [0, 1, 0, 0, 3, 0],
      [1, 1, 4, 0, 2, 3],
      [2, 1, 8, 0, 1, 5],
      [3, 1, 8, 1, 2, 6],
      [4, 2, 4, 2, 3, 7],
      [6, 1, 0, 3, 4, 8],
    ]);
    expect(Array.from(ctx.runSlots)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(Array.from(ctx.rowSharedChunks)).toEqual([3, 3, 3, 1]);
    expect(csr(ctx.rowPartialOffsets, ctx.rowPartials)).toEqual([[0, 3, 5], [1, 4, 6], [2, 7], [8]]);
    coverage(t, ctx);
  });

  test('sequence-first (minSharers = Infinity): no runs, no partials', () => {
    const t = nestedTree();
    const ctx = t.context({ minSharers: Number.POSITIVE_INFINITY });
    expect(ctx.numRuns).toBe(0);
    expect(ctx.numPartials).toBe(0);
    expect(Array.from(ctx.rowSharedChunks)).toEqual([0, 0, 0, 0]);
    expect(Array.from(ctx.rowPartialOffsets)).toEqual([0, 0, 0, 0, 0]);
    expect(csr(ctx.rowChunkOffsets, ctx.rowChunkSlots)).toEqual([[0, 1, 2], [0, 1, 3], [0, 4, 5], [6]]);
    coverage(t, ctx);
  });

  test('a chain of chunks with one sharer set is one run; maxRunChunks cuts it', () => {
    const t = new PrefixTree({ chunkSize: 4, maxCapacity: 32 });
    for (const tail of [100, 101, 102]) t.insert([...range(1, 13), tail]);
    const whole = t.context();
    expect(runsOf(whole)).toEqual([[0, 3, 0, 0, 3, 0]]);
    expect(csr(whole.rowPartialOffsets, whole.rowPartials)).toEqual([[0], [1], [2]]);
    const cut = t.context({ maxRunChunks: 2 });
    expect(runsOf(cut)).toEqual([
      [0, 2, 0, 0, 3, 0],
      [2, 1, 8, 0, 3, 3],
    ]);
    expect(csr(cut.rowPartialOffsets, cut.rowPartials)).toEqual([
      [0, 3],
      [1, 4],
      [2, 5],
    ]);
    expect(Array.from(cut.rowSharedChunks)).toEqual([3, 3, 3]);
    coverage(t, whole);
    coverage(t, cut);
  });

  test('a higher threshold drops the less-shared runs', () => {
    const t = nestedTree();
    const ctx = t.context({ minSharers: 3 });
    expect(runsOf(ctx)).toEqual([[0, 1, 0, 0, 3, 0]]);
    expect(Array.from(ctx.rowSharedChunks)).toEqual([1, 1, 1, 0]);
    coverage(t, ctx);
  });

  test('sequences ending on a shared full chunk (after fork) and empty sequences get rows', () => {
    const t = new PrefixTree({ chunkSize: 4, maxCapacity: 32 });
    const a = t.insert(range(1, 9)).seq; // [1..4][5..8], full tail
    t.fork(a, 1);
    t.insert([1, 2, 3, 4, 5, 6, 7, 8, 9]); // matches both chunks, adds [9]
    const empty = t.insert([]).seq;
    const ctx = t.context();
    expect(ctx.rowOf(empty)).toBe(0);
    expect(ctx.rowLength[0]).toBe(0);
    expect(csr(ctx.rowChunkOffsets, ctx.rowChunkSlots)[0]).toEqual([]);
    const rows = [ctx.rowOf(0), ctx.rowOf(1)].sort();
    expect(rows[1]! - rows[0]!).toBe(1); // the two forks are adjacent rows
    expect(runsOf(ctx)).toEqual([[0, 2, 0, 1, 4, 0]]); // [1..4][5..8] shared by rows 1..3
    coverage(t, ctx);
  });

  test('an empty tree has an empty context', () => {
    const t = new PrefixTree({ chunkSize: 4, maxCapacity: 4 });
    const ctx = t.context();
    expect(ctx.numRows).toBe(0);
    expect(Array.from(ctx.rowChunkOffsets)).toEqual([0]);
    expect(ctx.numRuns).toBe(0);
  });

  test('bad options are ArgumentErrors', () => {
    const t = nestedTree();
    expect(() => t.context({ minSharers: 0 })).toThrow(ArgumentError);
    expect(() => t.context({ minSharers: 1.5 })).toThrow(ArgumentError);
    expect(() => t.context({ maxRunChunks: 0 })).toThrow(ArgumentError);
  });
});

describe('kernel context caching', () => {
  test('appends inside a chunk refresh lengths in place; a new chunk rebuilds with a new version', () => {
    const t = new PrefixTree({ chunkSize: 4, maxCapacity: 32 });
    const a = t.insert([1, 2, 3, 4, 5]).seq;
    const b = t.insert([1, 2, 3, 4, 6]).seq;
    const first = t.context();
    t.appendBatch([a, b], [7, 8]);
    const same = t.context();
    expect(same).toBe(first);
    expect(Array.from(same.rowLength)).toEqual([6, 6]);
    t.appendBatch([a, b], [7, 8]);
    t.appendBatch([a], [9]);
    expect(t.context()).toBe(first);
    t.appendBatch([a], [9]); // a's tail was full: new chunk
    const rebuilt = t.context();
    expect(rebuilt).not.toBe(first);
    expect(rebuilt.version).not.toBe(first.version);
    expect(Array.from(first.rowLength)).toEqual([8, 7]); // the old context is left alone
    expect(Array.from(rebuilt.rowLength)).toEqual([9, 7]);
    coverage(t, rebuilt);
  });

  test('each option set has its own cached context; eviction does not change the shape', () => {
    const t = nestedTree();
    const twoPhase = t.context();
    const chunkFirst = t.context({ minSharers: 1 });
    expect(t.context()).toBe(twoPhase);
    expect(t.context({ minSharers: 1 })).toBe(chunkFirst);
    // Same shape, different work lists: versions differ, so a version identifies the arrays.
    expect(chunkFirst.version).not.toBe(twoPhase.version);
    expect(chunkFirst.shapeVersion).toBe(twoPhase.shapeVersion);
    const x = t.insert([50, 51, 52, 53, 54]).seq;
    t.release(x);
    const after = t.context();
    expect(after).not.toBe(twoPhase);
    t.evict();
    expect(t.context()).toBe(after);
  });

  test('buildKernelContext builds unconditionally, the same arrays as the cached one', () => {
    const t = nestedTree();
    const built = buildKernelContext(t.contextSource());
    const cached = t.context();
    expect(built).not.toBe(cached);
    expect(built.runs).toEqual(cached.runs);
    expect(built.rowChunkSlots).toEqual(cached.rowChunkSlots);
  });
});

describe('row map', () => {
  test('ioRowMap maps DFS rows to the caller order, with padding rows', () => {
    const t = nestedTree(); // rows 0..3 = seqs 0..3
    const rowIo = ioRowMap(t.context(), [3, -1, 1, 0, 2]);
    expect(Array.from(rowIo)).toEqual([3, 2, 4, 0]);
  });

  test('ioRowMap rejects unknown and duplicated sequences; rows not asked for get -1', () => {
    const ctx = nestedTree().context();
    expect(() => ioRowMap(ctx, [0, 1, 2, 3, 9])).toThrow(UnknownSequenceError);
    expect(() => ioRowMap(ctx, [0, 1, 2, 3, 3])).toThrow(ShapeError);
    expect(Array.from(ioRowMap(ctx, [2, 0]))).toEqual([1, -1, 0, -1]);
  });
});

describe('the packed context (chunkattn/context.h layout)', () => {
  const section = (packed: Int32Array, name: (typeof CONTEXT_SECTIONS)[number]) => {
    const s = CONTEXT_SECTIONS.indexOf(name);
    const offset = packed[CONTEXT_WORD.sections + 2 * s]!;
    return Array.from(packed.subarray(offset, offset + packed[CONTEXT_WORD.sections + 2 * s + 1]!));
  };

  test('a header of counts and section offsets, then every array in layout order', () => {
    const ctx = nestedTree().context();
    const rowIo = ioRowMap(ctx, [3, -1, 1]);
    const packed = packContext({ ...ctx, rowIo, numIoRows: 3 });
    expect(packed[CONTEXT_WORD.magic]).toBe(CONTEXT_MAGIC);
    expect(packed[CONTEXT_WORD.totalWords]).toBe(packed.length);
    expect(packed[CONTEXT_WORD.numRows]).toBe(ctx.numRows);
    expect(packed[CONTEXT_WORD.numRuns]).toBe(ctx.numRuns);
    expect(packed[CONTEXT_WORD.numPartials]).toBe(ctx.numPartials);
    expect(packed[CONTEXT_WORD.numIoRows]).toBe(3);
    expect(packed[CONTEXT_WORD.numRequests]).toBe(2);
    expect(packed[CONTEXT_WORD.sections]).toBe(CONTEXT_HEADER_WORDS);
    for (const name of CONTEXT_SECTIONS.filter(
      (n) => n !== 'rowIo' && n !== 'requestRow' && n !== 'seqRowOffsets',
    ))
      expect(section(packed, name), name).toEqual(Array.from(ctx[name]));
    // One row per sequence (decode): no query-row groups.
    expect(section(packed, 'seqRowOffsets')).toEqual([]);
    expect(section(packed, 'rowIo')).toEqual(Array.from(rowIo));
    // Requested rows in DFS order: the rows of seqs 1 and 3.
    expect(section(packed, 'requestRow')).toEqual([ctx.rowOf(1), ctx.rowOf(3)].sort((a, b) => a - b));
  });

  test('the planner repacks only when the shape, a length or the io rows change', () => {
    const t = nestedTree();
    const planner = new ContextPlanner();
    const io = Int32Array.of(0, 1, 2, 3);
    const first = planner.plan(t.context(), io);
    expect(planner.plan(t.context(), io)).toBe(first);
    expect(planner.plan(t.context(), Int32Array.of(1, 0, 2, 3))).not.toBe(first);
    const again = planner.plan(t.context(), io);
    t.appendBatch([0], [99]);
    const grown = planner.plan(t.context(), io);
    expect(grown).not.toBe(again);
    expect(section(grown, 'rowLength')).toEqual(Array.from(t.context().rowLength));
  });
});

describe('kernel context at scale', () => {
  test('256 sequences × 4096 tokens at c = 64: coverage holds, and a rebuild stays fast', () => {
    const t = new PrefixTree({ chunkSize: 64, maxCapacity: 256 * 64 + 64 });
    const shared = range(0, 2048);
    for (let i = 0; i < 256; i++)
      t.insert([...shared, ...range(100000 + i * 4096, 100000 + i * 4096 + 2048)]);
    const ctx = t.context();
    expect(ctx.rowChunkSlots.length).toBe(256 * 64);
    expect(runsOf(ctx)).toEqual([[0, 32, 0, 0, 256, 0]]);
    coverage(t, ctx);
    const source = t.contextSource();
    for (let i = 0; i < 5; i++) buildKernelContext(source);
    const times: number[] = [];
    for (let i = 0; i < 21; i++) {
      const start = performance.now();
      buildKernelContext(source);
      times.push(performance.now() - start);
    }
    times.sort((x, y) => x - y);
    // The goal is < 2 ms (bench memory reports it); a loose bound keeps this test stable on busy machines.
    expect(times[10]).toBeLessThan(20);
  });
});
