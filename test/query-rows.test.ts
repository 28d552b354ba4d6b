// The multi-token context (runtime/query-rows.ts): one row per query token with its causal
// length, runs counting query rows, and the validator's rules for row groups (context.h).

import { describe, expect, test } from 'vitest';
import { Attention } from '../index.ts';
import { ArgumentError, ShapeError, UnknownSequenceError } from '../runtime/errors.ts';
import {
  type ContextFields,
  packContext,
  RUN_FIELDS,
  RUN_ROW_BEGIN,
  RUN_ROW_END,
} from '../runtime/kernel-context.ts';
import { PrefixTree } from '../runtime/prefix-tree.ts';
import { expandQueryRows } from '../runtime/query-rows.ts';
import { tinySpec } from './specs.ts';

const range = (begin: number, end: number) => Array.from({ length: end - begin }, (_, i) => begin + i);

function csr(offsets: Int32Array, values: Int32Array): number[][] {
  const out: number[][] = [];
  for (let r = 0; r + 1 < offsets.length; r++)
    out.push(Array.from(values.subarray(offsets[r]!, offsets[r + 1]!)));
  return out;
}

/** seq 0 and 1 share chunks 0–1, seq 2 shares chunk 0, seq 3 is alone (C = 4). */
function nestedTree(): PrefixTree {
  const t = new PrefixTree({ chunkSize: 4, maxCapacity: 32 });
  t.insert([...range(1, 9), 9]);
  t.insert([...range(1, 9), 10]);
  t.insert([1, 2, 3, 4, ...range(11, 16)]);
  t.insert([20]);
  return t;
}

function runRows(fields: ContextFields): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < fields.runs.length / RUN_FIELDS; i++)
    out.push([fields.runs[i * RUN_FIELDS + RUN_ROW_BEGIN]!, fields.runs[i * RUN_FIELDS + RUN_ROW_END]!]);
  return out;
}

describe('expandQueryRows', () => {
  test('one row per query token, causal lengths, caller order, runs counting query rows', () => {
    const t = nestedTree();
    const ctx = t.context({ minSharers: 1 });
    const rows = { seqs: Int32Array.from([1, 0]), counts: Int32Array.from([2, 3]) };
    const fields = expandQueryRows(ctx, rows, 2);
    // DFS order: seq 0's three query rows, then seq 1's two; seqs 2 and 3 ask nothing and drop out.
    expect(Array.from(fields.rowSeq)).toEqual([0, 0, 0, 1, 1]);
    expect(Array.from(fields.rowLength)).toEqual([7, 8, 9, 8, 9]);
    expect(Array.from(fields.rowIo)).toEqual([2, 3, 4, 0, 1]);
    expect(Array.from(fields.seqRowOffsets!)).toEqual([0, 3, 5]);
    expect(fields.numIoRows).toBe(5);
    expect(csr(fields.rowChunkOffsets, fields.rowChunkSlots)).toEqual([
      [0, 1, 2],
      [0, 1, 2],
      [0, 1, 2],
      [0, 1, 3],
      [0, 1, 3],
    ]);
    // Shared chunk 0 (seqs 0–2) and chunk 1 (seqs 0–1): 5 query rows each; the private tails
    // of seq 0 (3 rows) and seq 1 (2 rows) are runs too, since they stack ≥ 2 query rows.
    expect(runRows(fields)).toEqual([
      [0, 5],
      [0, 5],
      [0, 3],
      [3, 5],
    ]);
    expect(Array.from(fields.rowSharedChunks)).toEqual([3, 3, 3, 3, 3]);
    expect(fields.numPartials).toBe(15);
    expect(csr(fields.rowPartialOffsets, fields.rowPartials)).toEqual([
      [0, 5, 10],
      [1, 6, 11],
      [2, 7, 12],
      [3, 8, 13],
      [4, 9, 14],
    ]);

    // With a higher bar, the private runs go to phase 2 and only the shared ones stay.
    const shared = expandQueryRows(ctx, rows, 4);
    expect(runRows(shared)).toEqual([
      [0, 5],
      [0, 5],
    ]);
    expect(Array.from(shared.rowSharedChunks)).toEqual([2, 2, 2, 2, 2]);
    // Sequence-first: no runs at all.
    const none = expandQueryRows(t.context({ minSharers: Number.POSITIVE_INFINITY }), rows, 2);
    expect(none.runs.length).toBe(0);
    expect(Array.from(none.rowSharedChunks)).toEqual([0, 0, 0, 0, 0]);
  });

  test('refuses unknown, repeated and over-long requests', () => {
    const ctx = nestedTree().context({ minSharers: 1 });
    const ask = (seqs: number[], counts: number[]) => () =>
      expandQueryRows(ctx, { seqs: Int32Array.from(seqs), counts: Int32Array.from(counts) }, 2);
    expect(ask([9], [1])).toThrow(UnknownSequenceError);
    expect(ask([0, 0], [1, 1])).toThrow(ShapeError);
    expect(ask([3], [2])).toThrow(ArgumentError);
    expect(ask([0], [0])).toThrow(ArgumentError);
    expect(ask([0], [1, 2])).toThrow(ShapeError);
  });
});

describe('the validator (context.h) checks query-row groups before a kernel runs', () => {
  test('a tampered group is refused with a typed error; the untampered context runs', async () => {
    const spec = tinySpec('f32', 'plain', ['cpu']);
    const attn = await Attention.create(spec, { layers: 1, capacityTokens: 16 * 8, target: 'cpu' });
    const pool = attn.module.allocPool(8);
    try {
      const { seq } = attn.insert(range(0, 18)); // query rows at 16, 17, 18: across a chunk edge
      const [twin] = attn.fork(seq, 1);
      const fields = expandQueryRows(
        attn.cache.context({ minSharers: 1 }),
        { seqs: Int32Array.from([seq, twin!]), counts: Int32Array.from([3, 2]) },
        2,
      );
      const qElems = spec.heads.q * spec.headDim;
      const run = (f: ContextFields) =>
        attn.module.decode(pool, {
          q: new Float32Array(5 * qElems).fill(0.5),
          out: new Float32Array(5 * qElems),
          context: packContext(f),
          params: new Float32Array(0),
          softmaxScale: spec.softmaxScale,
          numThreads: 1,
        });
      expect(() => run(fields)).not.toThrow();
      const tamper = (edit: (f: ContextFields) => ContextFields) => () => run(edit(fields));
      expect(tamper((f) => ({ ...f, seqRowOffsets: Int32Array.from([0, 3, 3, 5]) }))).toThrow(
        /every group holds at least one row/,
      );
      expect(tamper((f) => ({ ...f, seqRowOffsets: Int32Array.from([0, 4, 5]) }))).toThrow(ArgumentError);
      const lengths = fields.rowLength.slice();
      lengths[1] = lengths[0]!;
      expect(tamper((f) => ({ ...f, rowLength: lengths }))).toThrow(/consecutive positions/);
      const slots = fields.rowChunkSlots.slice();
      slots[0] = 7;
      expect(tamper((f) => ({ ...f, rowChunkSlots: slots }))).toThrow(ArgumentError);
      // Without groups, the earlier rows' lengths no longer fit their chunk lists.
      expect(tamper((f) => ({ ...f, seqRowOffsets: new Int32Array(0) }))).toThrow(ArgumentError);
    } finally {
      attn.module.free(pool);
      attn.close();
    }
  });
});
