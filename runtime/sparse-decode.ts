// The runtime side of progressive sparse attention: one layer's decode through ca_psa_decode
// (select + list-driven two-phase decode, templates/include/chunkattn/cpu/sparse_decode.h), the
// chunk metadata it reads, and the selection it made (for metrics).
//
//   lists   [numRows, Hkv, maxChunks] int32: the chunks each (DFS row, KV head) attended, as
//           indices into the row's chunk list (token order); counts [numRows, Hkv] (-1: row not
//           requested); guardAdded [numRows, Hkv]: how many of them the guard added.

import type { SparseSpec } from '../dsl/sparse.ts';
import { ChunkMetadata, type ChunkMetadataShape, type WrittenTokens } from './chunk-metadata.ts';
import type { KernelContext } from './kernel-context.ts';
import type { DecodeArgs, KvPool, NativeModule } from './native-module.ts';
import { psaConfig } from './psa-options.ts';

/** What one sparse decode selected. A view: valid until the next decode of the same Attention. */
export interface SparseSelection {
  readonly layer: number;
  readonly kvHeads: number;
  readonly chunkSize: number;
  readonly maxChunks: number;
  /** The context the rows refer to (rowSeq, rowLength, rowChunkSlots, rowSharedChunks, runs). */
  readonly context: KernelContext;
  readonly lists: Int32Array;
  readonly counts: Int32Array;
  readonly guardAdded: Int32Array;
  /** Selected chunk indices of a sequence for one KV head (ascending unless the guard added some). */
  chunksOf(seq: number, kvHead: number): Int32Array;
}

/** What one sparse decode runs over: the pool, ca_decode's arguments and the step's context. */
export interface SparseCall {
  readonly pool: KvPool;
  readonly args: DecodeArgs;
  readonly context: KernelContext;
  /** The requested sequences (their rows' metadata is ensured). */
  readonly ioSeqs: Int32Array;
  readonly written: WrittenTokens;
}

/** The decoder sizes its metadata store from the same shape. */
export type SparseDecoderShape = ChunkMetadataShape;

export class SparseDecoder {
  readonly options: SparseSpec;
  readonly metadata: ChunkMetadata;
  readonly #module: NativeModule;
  readonly #shape: SparseDecoderShape;
  #lists = new Int32Array(0);
  #counts = new Int32Array(0);
  #guardAdded = new Int32Array(0);
  #last: SparseSelection | undefined;

  constructor(module: NativeModule, options: SparseSpec, shape: SparseDecoderShape) {
    this.options = options;
    this.#module = module;
    this.#shape = shape;
    this.metadata = new ChunkMetadata(module, shape);
  }

  /** Whether a layer attends densely (the first denseLayers layers). */
  isDenseLayer(layer: number): boolean {
    return layer < this.options.denseLayers;
  }

  /** The selection of the last sparse decode (undefined before the first, or after a dense one). */
  get last(): SparseSelection | undefined {
    return this.#last;
  }

  /** Marks the last selection stale (a dense layer ran). */
  clearLast(): void {
    this.#last = undefined;
  }

  decode(layer: number, call: SparseCall): SparseSelection {
    const { maxChunks, buffers } = this.#prepare(layer, call);
    this.#module.psaDecode(call.pool, call.args, ...buffers);
    return this.#finish(layer, call.context, maxChunks);
  }

  /**
   * decode on a worker thread (ca_psa_decode through psaDecodeAsync): the metadata, the checks
   * and the plan now; the select and the decode off the event loop. The selection is this
   * decoder's `last` once the promise resolves.
   */
  async decodeAsync(layer: number, call: SparseCall): Promise<SparseSelection> {
    const { maxChunks, buffers } = this.#prepare(layer, call);
    this.#last = undefined; // its arrays are being rewritten
    await this.#module.psaDecodeAsync(call.pool, call.args, ...buffers);
    return this.#finish(layer, call.context, maxChunks);
  }

  /** The metadata a decode reads, the list buffers sized, and ca_psa_decode's arguments. */
  #prepare(layer: number, { pool, context, ioSeqs, written }: SparseCall) {
    const { rowChunkOffsets, rowChunkSlots } = context;
    // Metadata of every full chunk a requested row may score (all but its tail).
    for (const seq of ioSeqs) {
      const r = context.rowOf(seq);
      if (r < 0) continue;
      const begin = rowChunkOffsets[r]!;
      const end = rowChunkOffsets[r + 1]!;
      if (end - begin > 1) this.metadata.ensure(layer, pool, rowChunkSlots.subarray(begin, end - 1), written);
    }
    let maxChunks = 1;
    for (let r = 0; r < context.numRows; r++)
      maxChunks = Math.max(maxChunks, rowChunkOffsets[r + 1]! - rowChunkOffsets[r]!);
    const hkv = this.#shape.kvHeads;
    const rows = context.numRows * hkv;
    if (this.#lists.length < rows * maxChunks) this.#lists = new Int32Array(rows * maxChunks);
    if (this.#counts.length < rows) {
      this.#counts = new Int32Array(rows);
      this.#guardAdded = new Int32Array(rows);
    }
    const config = psaConfig(this.options, this.#shape.chunkSize, maxChunks);
    const buffers = [
      this.metadata.tensor(layer),
      config,
      this.#lists,
      this.#counts,
      this.#guardAdded,
    ] as const;
    return { maxChunks, buffers };
  }

  /** The selection the last call made (a view of the list buffers). */
  #finish(layer: number, context: KernelContext, maxChunks: number): SparseSelection {
    const hkv = this.#shape.kvHeads;
    const lists = this.#lists;
    const counts = this.#counts;
    const selection: SparseSelection = {
      layer,
      kvHeads: hkv,
      chunkSize: this.#shape.chunkSize,
      maxChunks,
      context,
      lists,
      counts,
      guardAdded: this.#guardAdded,
      chunksOf(seq: number, kvHead: number): Int32Array {
        const r = context.rowOf(seq);
        if (r < 0) return new Int32Array(0);
        const at = r * hkv + kvHead;
        const n = counts[at]!;
        return n < 0 ? new Int32Array(0) : lists.slice(at * maxChunks, at * maxChunks + n);
      },
    };
    this.#last = selection;
    return selection;
  }

  close(): void {
    this.metadata.close();
  }
}
