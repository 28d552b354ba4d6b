// The kernel context: what ca_decode must do this step. The builder keeps it as typed arrays;
// packContext() lays them out, with the call's requested rows, as the one packed Int32Array of
// templates/include/chunkattn/context.h (header of counts and section offsets, then the
// sections) that the addon validates and uploads once per step and every target reads.
//
// Rows are the live sequences in DFS order of the prefix tree, so every tree node is shared by a
// contiguous row range [rowBegin, rowEnd) (its refcount is rowEnd - rowBegin). Callers keep their
// own order for q/out ("io rows") and translate through rowOf() / ioRowMap().
//
//   rowSeq            [numRows]        sequence handle of each row
//   rowLength         [numRows]        visible KV tokens (current token included)
//   rowChunkOffsets   [numRows + 1]    CSR into rowChunkSlots
//   rowChunkSlots     [Σ chunks]       every chunk of the row in token order (shared chunks first)
//   rowSharedChunks   [numRows]        leading chunks of the row covered by runs (phase 1)
//   rowPartialOffsets [numRows + 1]    CSR into rowPartials
//   rowPartials       [numPartials]    partial indices phase 2 merges into the row, in tree order
//   runs              [numRuns * 6]    CaSharedRun: chunkBegin, numChunks, kvBegin, rowBegin, rowEnd, partialBegin
//   runSlots          [Σ run chunks]   chunk slots of all runs, run after run
//
// The builder's rows are sequences. A multi-token call (query-rows.ts) repeats a sequence's row
// once per query token, each with its causal length, grouped by a CSR `seqRowOffsets` that
// packContext lays out as the last section (empty here: one row per sequence).
//
// A run is a maximal chain of consecutive tree nodes whose sharer set (= row range) is identical,
// with at least `minSharers` sharers, cut into pieces of at most `maxRunChunks` chunks. Row r's
// partial for a run is partialBegin + (r - rowBegin). Because refcounts never grow towards the
// leaves, the chunks of a row that lie in runs are a prefix of its chunk list.
//
// minSharers = 2 (default) is two-phase partition; minSharers = Infinity gives no runs
// (sequence-first, the paged baseline); minSharers = 1 puts every chunk into runs (chunk-first;
// a single-row run may end in the row's partial tail: kernels mask tokens >= rowLength).

import { ArgumentError, ShapeError, UnknownSequenceError } from './errors.ts';

/** Sections of the packed context, in layout order (chunkattn/context.h, enum Section). */
export const CONTEXT_SECTIONS = [
  'rowSeq',
  'rowLength',
  'rowChunkOffsets',
  'rowChunkSlots',
  'rowSharedChunks',
  'rowPartialOffsets',
  'rowPartials',
  'runs',
  'runSlots',
  'rowIo',
  'requestRow',
  'seqRowOffsets',
] as const;
export type ContextSection = (typeof CONTEXT_SECTIONS)[number];

/**
 * The most words each section can take, for the capacity plan (capacity.ts): so many per row,
 * per chunk listed by a row, per partial, per run, per live chunk (slot), plus a constant (the
 * CSR offsets' extra entry). A new section states its extent here, and the plan follows.
 */
export interface SectionExtent {
  readonly perRow?: number;
  readonly perRowChunk?: number;
  readonly perPartial?: number;
  readonly perRun?: number;
  readonly perSlot?: number;
  readonly plus?: number;
}

export const CONTEXT_SECTION_EXTENT: Readonly<Record<ContextSection, SectionExtent>> = {
  rowSeq: { perRow: 1 },
  rowLength: { perRow: 1 },
  rowChunkOffsets: { perRow: 1, plus: 1 },
  rowChunkSlots: { perRowChunk: 1 },
  rowSharedChunks: { perRow: 1 },
  rowPartialOffsets: { perRow: 1, plus: 1 },
  rowPartials: { perPartial: 1 },
  runs: { perRun: 6 }, // RUN_FIELDS
  // Each live chunk lies in at most one run.
  runSlots: { perSlot: 1 },
  rowIo: { perRow: 1 },
  // Requested rows are distinct rows.
  requestRow: { perRow: 1 },
  // Query-row groups: at most one per row (query-rows.ts), plus the CSR's extra entry.
  seqRowOffsets: { perRow: 1, plus: 1 },
};

/** Header words of the packed context (chunkattn/context.h, enum Word). */
export const CONTEXT_MAGIC = 0x58544341;
export const CONTEXT_LAYOUT = 2;
export const CONTEXT_WORD = {
  magic: 0,
  layout: 1,
  totalWords: 2,
  numRows: 3,
  numRuns: 4,
  numPartials: 5,
  numRequests: 6,
  numIoRows: 7,
  sections: 8,
} as const;
export const CONTEXT_HEADER_WORDS = CONTEXT_WORD.sections + 2 * CONTEXT_SECTIONS.length;

/** Fields of one run in KernelContext.runs (the layout of CaSharedRun). */
export const RUN_CHUNK_BEGIN = 0;
export const RUN_NUM_CHUNKS = 1;
export const RUN_KV_BEGIN = 2;
export const RUN_ROW_BEGIN = 3;
export const RUN_ROW_END = 4;
export const RUN_PARTIAL_BEGIN = 5;
export const RUN_FIELDS = 6;

export interface KernelContextOptions {
  /** Minimum sharers for a chunk to go to phase 1. Integer ≥ 1 or Infinity. Default 2. */
  readonly minSharers?: number;
  /** Longest run in chunks (longer chains are cut, for parallelism). Integer ≥ 1 or Infinity (default). */
  readonly maxRunChunks?: number;
}

export interface KernelContext {
  /**
   * Identifies this build: unique per built context in the process (a new number at every
   * rebuild, and different for contexts built with different options or from different trees).
   * tree.context() rebuilds only when the shape changed, so it changes only then. rowLength is
   * refreshed in place WITHOUT a version change.
   */
  readonly version: number;
  /** The tree's shapeVersion this context was built from. */
  readonly shapeVersion: number;
  readonly chunkSize: number;
  readonly minSharers: number;
  readonly maxRunChunks: number;
  readonly numRows: number;
  readonly rowSeq: Int32Array;
  /** Refreshed in place by tree.context() while the shape is unchanged. */
  readonly rowLength: Int32Array;
  readonly rowChunkOffsets: Int32Array;
  readonly rowChunkSlots: Int32Array;
  readonly rowSharedChunks: Int32Array;
  readonly rowPartialOffsets: Int32Array;
  readonly rowPartials: Int32Array;
  readonly numRuns: number;
  readonly runs: Int32Array;
  readonly runSlots: Int32Array;
  readonly numPartials: number;
  /** The DFS row of a sequence handle, or -1 when the sequence is not in this context. */
  rowOf(seq: number): number;
}

/** A live sequence as the builder sees it (the tree's record). */
export interface ContextSequence {
  readonly handle: number;
  readonly length: number;
  /** Next sequence whose tail is the same node, or null. */
  readonly nextAtNode: ContextSequence | null;
}

/**
 * The tree, as the builder reads it. Node ids: 0 is the root, node n > 0 is slot n - 1.
 * Live children (refcount > 0) come before cached ones in every child list.
 */
export interface ContextSource {
  readonly chunkSize: number;
  readonly shapeVersion: number;
  readonly liveSequences: number;
  /** Σ refcounts over nodes = Σ chunks over live sequences. */
  readonly refSum: number;
  /** Nodes with refcount > 0. */
  readonly chunksInUse: number;
  /** Chunk index of the node within its sequences (root: -1). */
  readonly depth: Int32Array;
  readonly refs: Int32Array;
  readonly firstChild: Int32Array;
  readonly nextSibling: Int32Array;
  /** First sequence whose tail is the node (index 0: sequences of length 0). */
  readonly nodeSequences: readonly (ContextSequence | null | undefined)[];
}

export function normalizeContextOptions(options: KernelContextOptions = {}): {
  minSharers: number;
  maxRunChunks: number;
} {
  const minSharers = options.minSharers ?? 2;
  const maxRunChunks = options.maxRunChunks ?? Number.POSITIVE_INFINITY;
  const ok = (v: number) => v === Number.POSITIVE_INFINITY || (Number.isInteger(v) && v >= 1);
  if (typeof minSharers !== 'number' || !ok(minSharers)) {
    throw new ArgumentError(`minSharers must be an integer ≥ 1 or Infinity, got ${String(minSharers)}`);
  }
  if (typeof maxRunChunks !== 'number' || !ok(maxRunChunks)) {
    throw new ArgumentError(`maxRunChunks must be an integer ≥ 1 or Infinity, got ${String(maxRunChunks)}`);
  }
  return { minSharers, maxRunChunks };
}

let buildCounter = 0;

class BuiltContext implements KernelContext {
  #rowMap: Map<number, number> | undefined;
  /** The tree's sequence records per row; used to refresh rowLength in place. */
  readonly #rowRecords: readonly ContextSequence[];
  readonly version = ++buildCounter;
  constructor(
    readonly shapeVersion: number,
    readonly chunkSize: number,
    readonly minSharers: number,
    readonly maxRunChunks: number,
    readonly numRows: number,
    readonly rowSeq: Int32Array,
    readonly rowLength: Int32Array,
    readonly rowChunkOffsets: Int32Array,
    readonly rowChunkSlots: Int32Array,
    readonly rowSharedChunks: Int32Array,
    readonly rowPartialOffsets: Int32Array,
    readonly rowPartials: Int32Array,
    readonly numRuns: number,
    readonly runs: Int32Array,
    readonly runSlots: Int32Array,
    readonly numPartials: number,
    rowRecords: readonly ContextSequence[],
  ) {
    this.#rowRecords = rowRecords;
  }

  rowOf(seq: number): number {
    if (this.#rowMap === undefined) {
      const map = new Map<number, number>();
      for (let r = 0; r < this.numRows; r++) map.set(this.rowSeq[r]!, r);
      this.#rowMap = map;
    }
    return this.#rowMap.get(seq) ?? -1;
  }

  /** Copies the records' current lengths into rowLength. */
  refreshLengths(): void {
    const lengths = this.rowLength;
    const records = this.#rowRecords;
    for (let r = 0; r < records.length; r++) lengths[r] = records[r]!.length;
  }
}

/** Refreshes rowLength of a context built by buildKernelContext (no-op for other objects). */
export function refreshContextLengths(context: KernelContext): void {
  if (context instanceof BuiltContext) context.refreshLengths();
}

// Scratch buffers shared by all builds (the builder is synchronous and not re-entrant).
let stackScratch: Int32Array = new Int32Array(1024);
let pathScratch: Int32Array = new Int32Array(1024);
let runStackScratch: Int32Array = new Int32Array(1024);
let runsScratch: Int32Array = new Int32Array(1024 * RUN_FIELDS);
let runSlotsScratch: Int32Array = new Int32Array(1024);
let partialsScratch: Int32Array = new Int32Array(1024);

function atLeast(buffer: Int32Array, size: number): Int32Array {
  if (buffer.length >= size) return buffer;
  let length = buffer.length;
  while (length < size) length *= 2;
  return new Int32Array(length);
}

/**
 * Builds the kernel context of every live sequence, unconditionally (tree.context() caches it).
 * Cost: O(live chunks + Σ chunks per row).
 */
export function buildKernelContext(source: ContextSource, options: KernelContextOptions = {}): KernelContext {
  const { minSharers, maxRunChunks } = normalizeContextOptions(options);
  const chunkSize = source.chunkSize;
  const numRows = source.liveSequences;
  const liveNodes = source.chunksInUse;
  const { depth, refs, firstChild, nextSibling, nodeSequences } = source;

  const rowSeq = new Int32Array(numRows);
  const rowLength = new Int32Array(numRows);
  const rowChunkOffsets = new Int32Array(numRows + 1);
  const rowChunkSlots = new Int32Array(source.refSum);
  const rowSharedChunks = new Int32Array(numRows);
  const rowPartialOffsets = new Int32Array(numRows + 1);
  const rowRecords: ContextSequence[] = new Array(numRows);

  // Upper bounds: every live node is on the DFS stack at most once, in at most one run; each run
  // gives one partial per row it covers, so partials ≤ Σ refcounts.
  stackScratch = atLeast(stackScratch, liveNodes + 1);
  pathScratch = atLeast(pathScratch, liveNodes + 1);
  runStackScratch = atLeast(runStackScratch, liveNodes + 1);
  runsScratch = atLeast(runsScratch, (liveNodes + 1) * RUN_FIELDS);
  runSlotsScratch = atLeast(runSlotsScratch, liveNodes + 1);
  partialsScratch = atLeast(partialsScratch, source.refSum + 1);
  const stack = stackScratch;
  const path = pathScratch;
  const runStack = runStackScratch;
  const runs = runsScratch;
  const runSlots = runSlotsScratch;
  const partials = partialsScratch;

  let row = 0;
  let chunkOffset = 0;
  let partialOffset = 0;
  let numRuns = 0;
  let numRunSlots = 0;
  let numPartials = 0;
  let runTop = 0;

  // Rows of length 0 hang at the root: no chunks, no runs.
  for (let seq = nodeSequences[0]; seq; seq = seq.nextAtNode) {
    rowSeq[row] = seq.handle;
    rowLength[row] = seq.length;
    rowRecords[row] = seq;
    row++;
    rowChunkOffsets[row] = 0;
    rowPartialOffsets[row] = 0;
  }

  let top = 0;
  for (let child = firstChild[0]!; child !== 0 && refs[child]! > 0; child = nextSibling[child]!) {
    stack[top++] = child;
  }

  while (top > 0) {
    const node = stack[--top]!;
    const d = depth[node]!;
    const sharers = refs[node]!;
    path[d] = node - 1;

    // Runs that start at depth ≥ d belong to a branch the DFS has left.
    while (runTop > 0 && runs[runStack[runTop - 1]! * RUN_FIELDS + RUN_KV_BEGIN]! >= d * chunkSize) runTop--;

    if (sharers >= minSharers) {
      let extend = false;
      if (runTop > 0) {
        const run = runStack[runTop - 1]! * RUN_FIELDS;
        const runChunks = runs[run + RUN_NUM_CHUNKS]!;
        // The top run is on this node's path; it ends at the parent iff its last depth is d - 1.
        extend =
          runs[run + RUN_KV_BEGIN]! + runChunks * chunkSize === d * chunkSize &&
          runs[run + RUN_ROW_END]! - runs[run + RUN_ROW_BEGIN]! === sharers &&
          runChunks < maxRunChunks;
        if (extend) runs[run + RUN_NUM_CHUNKS] = runChunks + 1;
      }
      if (!extend) {
        const run = numRuns * RUN_FIELDS;
        runs[run + RUN_CHUNK_BEGIN] = numRunSlots;
        runs[run + RUN_NUM_CHUNKS] = 1;
        runs[run + RUN_KV_BEGIN] = d * chunkSize;
        runs[run + RUN_ROW_BEGIN] = row;
        runs[run + RUN_ROW_END] = row + sharers;
        runs[run + RUN_PARTIAL_BEGIN] = numPartials;
        numPartials += sharers;
        runStack[runTop++] = numRuns++;
      }
      runSlots[numRunSlots++] = node - 1;
    }

    const seqHead = nodeSequences[node];
    if (seqHead) {
      const chunks = d + 1;
      let shared = 0;
      if (runTop > 0) {
        const run = runStack[runTop - 1]! * RUN_FIELDS;
        shared = runs[run + RUN_KV_BEGIN]! / chunkSize + runs[run + RUN_NUM_CHUNKS]!;
      }
      const pathView = path.subarray(0, chunks);
      for (let seq: ContextSequence | null = seqHead; seq; seq = seq.nextAtNode) {
        rowSeq[row] = seq.handle;
        rowLength[row] = seq.length;
        rowRecords[row] = seq;
        rowChunkSlots.set(pathView, chunkOffset);
        chunkOffset += chunks;
        rowSharedChunks[row] = shared;
        for (let i = 0; i < runTop; i++) {
          const run = runStack[i]! * RUN_FIELDS;
          partials[partialOffset++] = runs[run + RUN_PARTIAL_BEGIN]! + (row - runs[run + RUN_ROW_BEGIN]!);
        }
        row++;
        rowChunkOffsets[row] = chunkOffset;
        rowPartialOffsets[row] = partialOffset;
      }
    }

    for (let child = firstChild[node]!; child !== 0 && refs[child]! > 0; child = nextSibling[child]!) {
      stack[top++] = child;
    }
  }

  if (row !== numRows || chunkOffset !== rowChunkSlots.length || partialOffset !== numPartials) {
    throw new Error(
      `kernel context: tree bookkeeping is inconsistent (rows ${row}/${numRows}, chunks ${chunkOffset}/${rowChunkSlots.length}, partials ${partialOffset}/${numPartials})`,
    );
  }

  return new BuiltContext(
    source.shapeVersion,
    chunkSize,
    minSharers,
    maxRunChunks,
    numRows,
    rowSeq,
    rowLength,
    rowChunkOffsets,
    rowChunkSlots,
    rowSharedChunks,
    rowPartialOffsets,
    partials.slice(0, partialOffset),
    numRuns,
    runs.slice(0, numRuns * RUN_FIELDS),
    runSlots.slice(0, numRunSlots),
    numPartials,
    rowRecords,
  );
}

/**
 * rowIo of the packed context: for each DFS row, the io row (index into the caller's q/out) of
 * its sequence, or -1 when the call does not ask for it (phase 2 then skips the row). `ioSeqs[i]`
 * is the sequence handle of io row i, or -1 for a padding row.
 */
export function ioRowMap(context: KernelContext, ioSeqs: ArrayLike<number>): Int32Array {
  const rowIo = new Int32Array(context.numRows).fill(-1);
  for (let io = 0; io < ioSeqs.length; io++) {
    const seq = ioSeqs[io]!;
    if (seq === -1) continue;
    const row = context.rowOf(seq);
    if (row < 0) throw new UnknownSequenceError(seq);
    if (rowIo[row] !== -1)
      throw new ShapeError(`sequence ${seq} appears twice in the io rows (${rowIo[row]} and ${io})`);
    rowIo[row] = io;
  }
  return rowIo;
}

/** Everything packContext lays out: the tree's arrays plus one call's io rows. */
export type ContextFields = Pick<
  KernelContext,
  | 'rowSeq'
  | 'rowLength'
  | 'rowChunkOffsets'
  | 'rowChunkSlots'
  | 'rowSharedChunks'
  | 'rowPartialOffsets'
  | 'rowPartials'
  | 'runs'
  | 'runSlots'
  | 'numPartials'
> & {
  /** [numRows] io row (index into q/out) of each DFS row, -1 for a row this call does not compute. */
  readonly rowIo: Int32Array;
  /** Rows of q/out. */
  readonly numIoRows: number;
  /**
   * Query rows per sequence (CSR over rows; see query-rows.ts). Absent or empty: one row per
   * sequence (decode).
   */
  readonly seqRowOffsets?: Int32Array;
};

const EMPTY = new Int32Array(0);

/**
 * The packed context of chunkattn/context.h. Counts come from the arrays' lengths (numRows =
 * rowLength.length, numRuns = runs.length / 6, requests = rows with rowIo >= 0, listed in DFS
 * order); nothing is validated here: the addon validates the whole buffer before any use.
 */
export function packContext(fields: ContextFields, into?: Int32Array): Int32Array {
  const requests: number[] = [];
  for (let r = 0; r < fields.rowIo.length; r++) if (fields.rowIo[r]! >= 0) requests.push(r);
  const data: Record<ContextSection, ArrayLike<number>> = {
    ...fields,
    requestRow: requests,
    seqRowOffsets: fields.seqRowOffsets ?? EMPTY,
  };
  let total = CONTEXT_HEADER_WORDS;
  for (const name of CONTEXT_SECTIONS) total += data[name].length;
  const packed = into && into.length === total ? into : new Int32Array(total);
  packed[CONTEXT_WORD.magic] = CONTEXT_MAGIC;
  packed[CONTEXT_WORD.layout] = CONTEXT_LAYOUT;
  packed[CONTEXT_WORD.totalWords] = total;
  packed[CONTEXT_WORD.numRows] = fields.rowLength.length;
  packed[CONTEXT_WORD.numRuns] = Math.floor(fields.runs.length / RUN_FIELDS);
  packed[CONTEXT_WORD.numPartials] = fields.numPartials;
  packed[CONTEXT_WORD.numRequests] = requests.length;
  packed[CONTEXT_WORD.numIoRows] = fields.numIoRows;
  let offset = CONTEXT_HEADER_WORDS;
  CONTEXT_SECTIONS.forEach((name, s) => {
    const section = data[name];
    packed[CONTEXT_WORD.sections + 2 * s] = offset;
    packed[CONTEXT_WORD.sections + 2 * s + 1] = section.length;
    packed.set(section, offset);
    offset += section.length;
  });
  return packed;
}

/**
 * Plans a step once for all layers: the packed context of `context` for the io rows `ioSeqs`,
 * repacked only when the tree's shape, a length or the io rows change, so every layer of a step
 * passes the same bytes (the addon then uploads it once).
 */
export class ContextPlanner {
  #packed: Int32Array | null = null;
  #version = -1;
  #ioSeqs: Int32Array = new Int32Array(0);
  #lengths: Int32Array = new Int32Array(0);

  plan(context: KernelContext, ioSeqs: Int32Array): Int32Array {
    if (
      this.#packed &&
      this.#version === context.version &&
      sameInts(this.#ioSeqs, ioSeqs) &&
      sameInts(this.#lengths, context.rowLength)
    )
      return this.#packed;
    const packed = packContext({ ...context, rowIo: ioRowMap(context, ioSeqs), numIoRows: ioSeqs.length });
    this.#packed = packed;
    this.#version = context.version;
    this.#ioSeqs = ioSeqs.slice();
    this.#lengths = context.rowLength.slice();
    return packed;
  }
}

function sameInts(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
