// Multi-token queries: a sequence with n new tokens (prefill of a suffix, chunked prefill,
// speculative verification) becomes n consecutive rows of the packed context, one per query
// token, each with its own causal length (chunkattn/context.h, kSeqRowOffsets). The kernels need
// nothing new: the causal mask is the ordinary length mask, pos.q = rowLength − 1, and phase-1
// runs stack the query rows of all their sharers as the rows of one tile.
//
// expandQueryRows() derives that context from the tree's kernel context built with every chunk
// in a run (minSharers = 1, or Infinity for sequence-first): sequences without query rows drop
// out, rows are repeated per query token, and runs are kept only when they cover at least
// `minRows` query rows ("phase-1 runs count query rows, not sequences"). Row counts never grow
// towards the leaves, so the kept runs of a row are a prefix of its runs, as the validator wants.
//
//   io order   q/out row io = ioBase[i] + j is token j of ioSeqs[i] (ioBase = prefix sums of
//              counts); its causal length is length(seq) − counts[i] + j + 1.

import { ArgumentError, ShapeError, UnknownSequenceError } from './errors.ts';
import {
  type ContextFields,
  type KernelContext,
  packContext,
  RUN_CHUNK_BEGIN,
  RUN_FIELDS,
  RUN_KV_BEGIN,
  RUN_NUM_CHUNKS,
  RUN_PARTIAL_BEGIN,
  RUN_ROW_BEGIN,
  RUN_ROW_END,
} from './kernel-context.ts';

/** Query tokens per sequence of one attention call, in the caller's (io) order. */
export interface QueryRows {
  /** [numSeqs] sequence handles, distinct. */
  readonly seqs: Int32Array;
  /** [numSeqs] query tokens of each: its last counts[i] positions, each ≥ 1. */
  readonly counts: Int32Array;
}

/** Σ counts: the rows of q and out. */
export function totalQueryRows(rows: QueryRows): number {
  let total = 0;
  for (let i = 0; i < rows.counts.length; i++) total += rows.counts[i]!;
  return total;
}

/** Whether every sequence asks for one token (decode): the context is then the tree's own. */
export function isSingleToken(rows: QueryRows): boolean {
  for (let i = 0; i < rows.counts.length; i++) if (rows.counts[i] !== 1) return false;
  return true;
}

/**
 * The packed-context fields of `rows` over `context` (every chunk in runs, or no runs at all).
 * Throws UnknownSequenceError for a sequence not in the context, ShapeError for a repeated one,
 * ArgumentError for a count outside [1, length].
 */
export function expandQueryRows(context: KernelContext, rows: QueryRows, minRows: number): ContextFields {
  const { seqs, counts } = rows;
  if (seqs.length !== counts.length)
    throw new ShapeError(`${seqs.length} sequences but ${counts.length} query counts`);
  const numRows = context.numRows;
  const count = new Int32Array(numRows);
  const ioBase = new Int32Array(numRows);
  let io = 0;
  for (let i = 0; i < seqs.length; i++) {
    const seq = seqs[i]!;
    const row = context.rowOf(seq);
    if (row < 0) throw new UnknownSequenceError(seq);
    if (count[row] !== 0) throw new ShapeError(`sequence ${seq} appears twice in one call`);
    const n = counts[i]!;
    const length = context.rowLength[row]!;
    if (!Number.isInteger(n) || n < 1 || n > length)
      throw new ArgumentError(
        `sequence ${seq}: ${n} query tokens, but it holds ${length} (need 1 ≤ n ≤ its length)`,
      );
    count[row] = n;
    ioBase[row] = io;
    io += n;
  }

  // New row index of each old row (prefix sums of counts).
  const begin = new Int32Array(numRows + 1);
  for (let r = 0; r < numRows; r++) begin[r + 1] = begin[r]! + count[r]!;
  const total = begin[numRows]!;

  // Runs kept (≥ minRows query rows), with their new row ranges and partials.
  const numRuns = context.numRuns;
  const keptIndex = new Int32Array(numRuns).fill(-1);
  const runs: number[] = [];
  let numPartials = 0;
  for (let j = 0; j < numRuns; j++) {
    const at = j * RUN_FIELDS;
    const rowBegin = begin[context.runs[at + RUN_ROW_BEGIN]!]!;
    const rowEnd = begin[context.runs[at + RUN_ROW_END]!]!;
    const queryRows = rowEnd - rowBegin;
    if (queryRows < 1 || queryRows < minRows) continue;
    keptIndex[j] = runs.length / RUN_FIELDS;
    runs.push(
      context.runs[at + RUN_CHUNK_BEGIN]!,
      context.runs[at + RUN_NUM_CHUNKS]!,
      context.runs[at + RUN_KV_BEGIN]!,
      rowBegin,
      rowEnd,
      numPartials,
    );
    numPartials += queryRows;
  }

  // The run of every old partial (to follow a row's runs in tree order).
  const partialRun = new Int32Array(context.numPartials);
  for (let j = 0; j < numRuns; j++) {
    const at = j * RUN_FIELDS;
    const rowsOfRun = context.runs[at + RUN_ROW_END]! - context.runs[at + RUN_ROW_BEGIN]!;
    partialRun.fill(
      j,
      context.runs[at + RUN_PARTIAL_BEGIN]!,
      context.runs[at + RUN_PARTIAL_BEGIN]! + rowsOfRun,
    );
  }

  let chunkWords = 0;
  let partialWords = 0;
  const keptRuns: number[][] = new Array(numRows);
  for (let r = 0; r < numRows; r++) {
    if (count[r] === 0) continue;
    const kept: number[] = [];
    for (let k = context.rowPartialOffsets[r]!; k < context.rowPartialOffsets[r + 1]!; k++) {
      const run = keptIndex[partialRun[context.rowPartials[k]!]!]!;
      if (run >= 0) kept.push(run);
    }
    keptRuns[r] = kept;
    chunkWords += count[r]! * (context.rowChunkOffsets[r + 1]! - context.rowChunkOffsets[r]!);
    partialWords += count[r]! * kept.length;
  }

  const rowSeq = new Int32Array(total);
  const rowLength = new Int32Array(total);
  const rowChunkOffsets = new Int32Array(total + 1);
  const rowChunkSlots = new Int32Array(chunkWords);
  const rowSharedChunks = new Int32Array(total);
  const rowPartialOffsets = new Int32Array(total + 1);
  const rowPartials = new Int32Array(partialWords);
  const rowIo = new Int32Array(total);
  const groups: number[] = [0];
  const c = context.chunkSize;
  let q = 0;
  let chunkAt = 0;
  let partialAt = 0;
  for (let r = 0; r < numRows; r++) {
    const n = count[r]!;
    if (n === 0) continue;
    const chunks = context.rowChunkSlots.subarray(
      context.rowChunkOffsets[r]!,
      context.rowChunkOffsets[r + 1]!,
    );
    const kept = keptRuns[r]!;
    let shared = 0;
    if (kept.length > 0) {
      const last = kept[kept.length - 1]! * RUN_FIELDS;
      shared = runs[last + RUN_KV_BEGIN]! / c + runs[last + RUN_NUM_CHUNKS]!;
    }
    const length = context.rowLength[r]!;
    for (let j = 0; j < n; j++, q++) {
      rowSeq[q] = context.rowSeq[r]!;
      rowLength[q] = length - n + 1 + j;
      rowChunkSlots.set(chunks, chunkAt);
      chunkAt += chunks.length;
      rowChunkOffsets[q + 1] = chunkAt;
      rowSharedChunks[q] = shared;
      for (const run of kept) {
        const at = run * RUN_FIELDS;
        rowPartials[partialAt++] = runs[at + RUN_PARTIAL_BEGIN]! + (q - runs[at + RUN_ROW_BEGIN]!);
      }
      rowPartialOffsets[q + 1] = partialAt;
      rowIo[q] = ioBase[r]! + j;
    }
    groups.push(q);
  }

  return {
    rowSeq,
    rowLength,
    rowChunkOffsets,
    rowChunkSlots,
    rowSharedChunks,
    rowPartialOffsets,
    rowPartials,
    runs: Int32Array.from(runs),
    runSlots: context.runSlots,
    numPartials,
    rowIo,
    numIoRows: total,
    seqRowOffsets: Int32Array.from(groups),
  };
}

/**
 * Plans a multi-token call once for all layers: repacks only when the tree's shape, a length,
 * the sequences or their counts change, so every layer passes the same bytes (uploaded once).
 */
export class QueryPlanner {
  #packed: Int32Array | null = null;
  #version = -1;
  #minRows = -1;
  #seqs: Int32Array = new Int32Array(0);
  #counts: Int32Array = new Int32Array(0);
  #lengths: Int32Array = new Int32Array(0);

  plan(context: KernelContext, rows: QueryRows, minRows: number): Int32Array {
    if (
      this.#packed &&
      this.#version === context.version &&
      this.#minRows === minRows &&
      sameInts(this.#seqs, rows.seqs) &&
      sameInts(this.#counts, rows.counts) &&
      sameInts(this.#lengths, context.rowLength)
    )
      return this.#packed;
    const packed = packContext(expandQueryRows(context, rows, minRows));
    this.#packed = packed;
    this.#version = context.version;
    this.#minRows = minRows;
    this.#seqs = rows.seqs.slice();
    this.#counts = rows.counts.slice();
    this.#lengths = context.rowLength.slice();
    return packed;
  }
}

function sameInts(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
