// PrefixTree: which chunks exist, who shares them, where every sequence's KV lives.
//
// One tree serves all layers: a node is one chunk of `chunkSize` tokens and owns one pool slot,
// and slot i has storage in every layer. Children are found by content (a hash of the full
// chunk's tokens, then a token comparison). Only FULL chunks are ever shared or matched.
//
// Invariants (validate() checks them all):
//   - every non-leaf chunk is full; a partial chunk is the private tail of exactly one sequence;
//   - refcount(node) = number of live sequences whose path goes through node;
//   - free + evictable + inUse == pool capacity; evictable = allocated nodes with refcount 0,
//     all full, in an LRU list in which every node comes after its evictable descendants (so the
//     head is always a leaf);
//   - each live sequence's path spells exactly its tokens (length = depth·C + tail fill).
//
// Every mutation first checks its input and the capacity it needs (counting what eviction can
// free), then changes the tree; a thrown error leaves the tree exactly as it was.
//
// What the KV store must do is returned by each operation, in slot/offset terms:
//   insert      writes for prompt positions [matchedTokens, length)
//   appendBatch writes for one token per sequence (copies: always empty today; reserved)
//   fork        copies (copy-on-write of a partial tail)
// Apply an operation's copies BEFORE its writes, and both before the next decode.
//
// With `kvLayers`, the tree also knows which K/V is stored: per chunk and layer, a watermark of
// written token positions (writes extend it in token order; a write past it is refused). A
// chunk is matched by a later insert only once its K/V is complete in every layer (vLLM's rule:
// a block is cached only once computed), and firstUnwritten() tells a decode what it may read.
// A new or reused slot starts unwritten, so nothing stale is ever read as a prefix hit.

import { ChunkPool } from './chunk-pool.ts';
import {
  ArgumentError,
  CapacityError,
  ChunkattnError,
  InvariantError,
  ShapeError,
  UnknownSequenceError,
} from './errors.ts';
import {
  buildKernelContext,
  type ContextSequence,
  type ContextSource,
  type KernelContext,
  type KernelContextOptions,
  normalizeContextOptions,
  refreshContextLengths,
} from './kernel-context.ts';
import { type KvShape, type KvStats, kvStats } from './kv-stats.ts';

export interface PrefixTreeOptions {
  /** Tokens per chunk (the kernels' C). */
  readonly chunkSize: number;
  /** Pool slots the tree may use at most. */
  readonly maxCapacity: number;
  /** Pool slots with storage at creation. Default: min(maxCapacity, 256). */
  readonly initialCapacity?: number;
  /** Called when the pool grew; grow the KV buffers before applying the operation's writes. */
  readonly onPoolGrow?: (capacity: number, previousCapacity: number) => void;
  /** Layers whose K/V writes the tree tracks (0, the default: no tracking, every chunk counts as written). */
  readonly kvLayers?: number;
}

/** Where new tokens' K/V go: token i to (slots[i], offsets[i]). */
export interface KvWrites {
  readonly slots: Int32Array;
  readonly offsets: Int32Array;
}

/** Copy the first `tokens` token positions of chunk srcSlot to dstSlot (every layer, K and V). */
export interface ChunkCopy {
  readonly srcSlot: number;
  readonly dstSlot: number;
  readonly tokens: number;
}

export interface InsertResult {
  /** The new sequence's handle. */
  readonly seq: number;
  /** Leading prompt tokens whose K/V is already stored (no prefill needed). A multiple of chunkSize. */
  readonly matchedTokens: number;
  /** Chunks allocated for this prompt. */
  readonly newChunks: number;
  /** Positions [matchedTokens, length): writes.slots[i] / offsets[i] is for token matchedTokens + i. */
  readonly writes: KvWrites;
}

export interface AppendResult extends KvWrites {
  /** Copies to apply before the writes (none today: fork copies eagerly). */
  readonly copies: readonly ChunkCopy[];
}

export interface RollbackResult {
  /** Chunks whose slots went back to the pool. */
  readonly freedChunks: number;
  /** Chunks that stayed cached (evictable) because cached descendants hang below them. */
  readonly evictableChunks: number;
  /** Copy-on-write of a truncated shared (or full, non-leaf) tail: apply before the next write. */
  readonly copies: readonly ChunkCopy[];
}

export interface ForkResult {
  /** The new sequences' handles. */
  readonly seqs: number[];
  /** Copy-on-write of the partial tail: one copy per new sequence (none when the tail is full). */
  readonly copies: ChunkCopy[];
}

export interface ReleaseResult {
  /** Chunks returned to the pool at once (the partial tail). */
  readonly freedChunks: number;
  /** Full chunks that reached refcount 0 and stay cached (evictable). */
  readonly evictableChunks: number;
}

export interface DumpOptions {
  /** Show each chunk's slot (`#slot`). Default false. */
  readonly slots?: boolean;
}

const ROOT = 0;
const NONE = 0;
const EMPTY_COPIES: readonly ChunkCopy[] = Object.freeze([]);
const MAX_HANDLE = 0x7fffffff;
const HASH_KEY_MASK = 0x3fffffff;

class SequenceRecord implements ContextSequence {
  nextAtNode: SequenceRecord | null = null;
  prevAtNode: SequenceRecord | null = null;
  /** Marks the record during appendBatch (duplicate detection). */
  stamp = 0;
  constructor(
    readonly handle: number,
    /** Tail node (ROOT for a sequence of length 0). */
    public tail: number,
    public length: number,
  ) {}
}

interface CachedContext {
  context: KernelContext;
  lengthVersion: number;
}

function hashChunk(tokens: Int32Array, offset: number, count: number): number {
  let h = 0x9747b28c ^ count;
  for (let i = 0; i < count; i++) {
    let k = Math.imul(tokens[offset + i]!, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    h ^= Math.imul(k, 0x1b873593);
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

function hashKey(parent: number, contentHash: number): number {
  return (Math.imul(parent, 0x9e3779b1) ^ contentHash) & HASH_KEY_MASK;
}

function checkToken(token: unknown, where: string): number {
  if (typeof token !== 'number' || !Number.isInteger(token) || token < 0 || token > 0x7fffffff) {
    throw new ArgumentError(`${where}: token must be an integer in [0, 2^31), got ${String(token)}`);
  }
  return token;
}

function checkPositiveInteger(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ArgumentError(`${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

export class PrefixTree {
  readonly chunkSize: number;
  readonly pool: ChunkPool;

  // ---- nodes (id 0 = root, id n = slot n - 1), grown with the pool ----
  private nodeCapacity = 0;
  private parent = new Int32Array(0);
  private depth = new Int32Array(0);
  private fill = new Int32Array(0);
  private refs = new Int32Array(0);
  private firstChild = new Int32Array(0);
  private lastChild = new Int32Array(0);
  private nextSibling = new Int32Array(0);
  private prevSibling = new Int32Array(0);
  private contentHash = new Int32Array(0);
  private hashNext = new Int32Array(0);
  private lruPrev = new Int32Array(0);
  private lruNext = new Int32Array(0);
  private tokens = new Int32Array(0);
  /** written[node · kvLayers + layer]: token positions [0, w) of the chunk hold K/V in that layer. */
  private written = new Int32Array(0);
  private nodeSequences: (SequenceRecord | null)[] = [];

  /** Full chunks by hashKey(parent, content hash); collisions chain through hashNext. */
  private readonly childIndex = new Map<number, number>();
  private lruHead = NONE;
  private lruTail = NONE;

  // ---- sequences ----
  private readonly sequenceMap = new Map<number, SequenceRecord>();
  private nextHandle = 0;
  private batchStamp = 0;
  private batchRecords: SequenceRecord[] = [];
  private matchScratch = new Int32Array(64);

  // ---- counters ----
  private inUse = 0;
  private evictable = 0;
  private peakInUse = 0;
  private stored = 0;
  private logical = 0;
  private refTotal = 0;
  private shapeVersionNow = 1;
  private lengthVersion = 0;
  private readonly contexts = new Map<string, CachedContext>();

  /** Layers whose K/V writes are tracked (0: none). */
  readonly kvLayers: number;

  constructor(options: PrefixTreeOptions) {
    this.chunkSize = checkPositiveInteger('chunkSize', options.chunkSize);
    const layers = options.kvLayers ?? 0;
    if (!Number.isInteger(layers) || layers < 0 || layers > 4096)
      throw new ArgumentError(`kvLayers must be an integer in [0, 4096], got ${String(layers)}`);
    this.kvLayers = layers;
    if (this.chunkSize > 1 << 16) throw new ArgumentError(`chunkSize ${this.chunkSize} is larger than 65536`);
    const onPoolGrow = options.onPoolGrow;
    this.pool = new ChunkPool({
      maxCapacity: options.maxCapacity,
      ...(options.initialCapacity === undefined ? {} : { initialCapacity: options.initialCapacity }),
      onGrow: (capacity, previous) => {
        this.ensureNodeCapacity(capacity + 1);
        onPoolGrow?.(capacity, previous);
      },
    });
    this.ensureNodeCapacity(this.pool.capacity + 1);
  }

  // =============================================================================================
  // Queries
  // =============================================================================================

  /** Bumped by every change of the live sequences' chunk lists (insert, fork, release, new chunk). */
  get shapeVersion(): number {
    return this.shapeVersionNow;
  }

  get liveSequences(): number {
    return this.sequenceMap.size;
  }

  /** Pool slots with storage now. */
  get capacity(): number {
    return this.pool.capacity;
  }

  has(seq: number): boolean {
    return this.sequenceMap.has(seq);
  }

  /** Live sequence handles, oldest first. */
  sequences(): number[] {
    return [...this.sequenceMap.keys()];
  }

  /** Tokens of a live sequence (its K/V positions). */
  length(seq: number): number {
    return this.record(seq).length;
  }

  /** The tokens of a live sequence, read back from its chunks. */
  tokensOf(seq: number): Int32Array {
    const rec = this.record(seq);
    const out = new Int32Array(rec.length);
    const c = this.chunkSize;
    for (let node = rec.tail; node !== ROOT; node = this.parent[node]!) {
      const d = this.depth[node]!;
      out.set(this.tokens.subarray(node * c, node * c + this.fill[node]!), d * c);
    }
    return out;
  }

  /** The pool slots of a live sequence's chunks, in token order. */
  chunksOf(seq: number): Int32Array {
    const rec = this.record(seq);
    const out = new Int32Array(rec.tail === ROOT ? 0 : this.depth[rec.tail]! + 1);
    for (let node = rec.tail; node !== ROOT; node = this.parent[node]!) out[this.depth[node]!] = node - 1;
    return out;
  }

  /** The tokens stored in an allocated slot (for tests and KV debugging). */
  chunkTokens(slot: number): Int32Array {
    if (!this.pool.isAllocated(slot)) throw new ArgumentError(`slot ${slot} holds no chunk`);
    const node = slot + 1;
    const c = this.chunkSize;
    return this.tokens.slice(node * c, node * c + this.fill[node]!);
  }

  /** Live sequences through the chunk in `slot` (0: evictable). */
  chunkRefs(slot: number): number {
    if (!this.pool.isAllocated(slot)) throw new ArgumentError(`slot ${slot} holds no chunk`);
    return this.refs[slot + 1]!;
  }

  /** Tokens [0, w) of the chunk in `slot` whose K/V is written in `layer` (kvLayers trees only). */
  writtenTokens(layer: number, slot: number): number {
    this.checkKvLayer(layer);
    if (!this.pool.isAllocated(slot)) throw new ArgumentError(`slot ${slot} holds no chunk`);
    return this.written[(slot + 1) * this.kvLayers + layer]!;
  }

  /**
   * The first token position of `seq` whose K/V is not written in `layer`, or -1 when all are
   * (always -1 without kvLayers).
   */
  firstUnwritten(layer: number, seq: number): number {
    const rec = this.record(seq);
    if (this.kvLayers === 0) return -1;
    this.checkKvLayer(layer);
    let first = -1;
    for (let node = rec.tail; node !== ROOT; node = this.parent[node]!) {
      const w = this.written[node * this.kvLayers + layer]!;
      if (w < this.fill[node]!) first = this.depth[node]! * this.chunkSize + w;
    }
    return first;
  }

  /**
   * Checks that K/V writes to (slots[i], offsets[i]) extend each chunk's written prefix in layer
   * `layer` without a gap; throws ArgumentError (nothing changed) naming the first gap.
   */
  checkKvWrites(layer: number, slots: Int32Array, offsets: Int32Array): void {
    if (this.kvLayers === 0) return;
    this.checkKvLayer(layer);
    const reach = new Map<number, number>();
    for (let i = 0; i < slots.length; i++) {
      const node = slots[i]! + 1;
      const w = reach.get(node) ?? this.written[node * this.kvLayers + layer]!;
      const offset = offsets[i]!;
      if (offset > w)
        throw new ArgumentError(
          `layer ${layer}: K/V of chunk slot ${slots[i]} is written up to offset ${w}; write offsets ${w}…${offset - 1} first (K/V is written in token order)`,
        );
      reach.set(node, Math.max(w, offset + 1));
    }
  }

  /** Records writes that checkKvWrites accepted and the KV store applied. */
  markKvWritten(layer: number, slots: Int32Array, offsets: Int32Array): void {
    if (this.kvLayers === 0) return;
    for (let i = 0; i < slots.length; i++) {
      const at = (slots[i]! + 1) * this.kvLayers + layer;
      if (offsets[i]! >= this.written[at]!) this.written[at] = offsets[i]! + 1;
    }
  }

  /** Evictable slots, least recently used first (the order evict() frees them). */
  evictionOrder(): number[] {
    const out: number[] = [];
    for (let node = this.lruHead; node !== NONE; node = this.lruNext[node]!) out.push(node - 1);
    return out;
  }

  /** Memory accounting for a model shape. O(1). */
  stats(shape: KvShape): KvStats {
    return kvStats(
      {
        chunkSize: this.chunkSize,
        chunksInUse: this.inUse,
        chunksEvictable: this.evictable,
        chunksFree: this.pool.capacity - this.inUse - this.evictable,
        capacityChunks: this.pool.capacity,
        peakChunksInUse: this.peakInUse,
        liveSequences: this.sequenceMap.size,
        logicalTokens: this.logical,
        storedTokens: this.stored,
      },
      shape,
    );
  }

  /** Starts peak tracking afresh (peakChunksInUse = chunks in use now; also the pool's peak). */
  resetPeak(): void {
    this.peakInUse = this.inUse;
    this.pool.resetPeak();
  }

  /**
   * The kernel context of all live sequences. Cached per option set: rebuilt only when the
   * shape changed since the last build (a new object with a new version); otherwise the same
   * object is returned with rowLength refreshed in place (same version).
   */
  context(options: KernelContextOptions = {}): KernelContext {
    const { minSharers, maxRunChunks } = normalizeContextOptions(options);
    const key = `${minSharers}|${maxRunChunks}`;
    const cached = this.contexts.get(key);
    if (cached && cached.context.shapeVersion === this.shapeVersionNow) {
      if (cached.lengthVersion !== this.lengthVersion) {
        refreshContextLengths(cached.context);
        cached.lengthVersion = this.lengthVersion;
      }
      return cached.context;
    }
    const context = buildKernelContext(this.contextSource(), { minSharers, maxRunChunks });
    if (!cached && this.contexts.size >= 8) this.contexts.delete(this.contexts.keys().next().value!);
    this.contexts.set(key, { context, lengthVersion: this.lengthVersion });
    return context;
  }

  /** The tree's internals as the context builder reads them (valid until the next mutation). */
  contextSource(): ContextSource {
    return {
      chunkSize: this.chunkSize,
      shapeVersion: this.shapeVersionNow,
      liveSequences: this.sequenceMap.size,
      refSum: this.refTotal,
      chunksInUse: this.inUse,
      depth: this.depth,
      refs: this.refs,
      firstChild: this.firstChild,
      nextSibling: this.nextSibling,
      nodeSequences: this.nodeSequences,
    };
  }

  // =============================================================================================
  // Mutations
  // =============================================================================================

  /**
   * Adds a sequence with the given prompt. Full chunks are matched by content (live or cached),
   * except the chunk holding the last prompt token, which is always fresh and private.
   */
  insert(prompt: ArrayLike<number>): InsertResult {
    const length = prompt?.length;
    if (typeof length !== 'number') throw new ArgumentError('insert: tokens must be an array of token ids');
    const promptTokens = new Int32Array(length);
    for (let i = 0; i < length; i++) promptTokens[i] = checkToken(prompt[i], `insert: position ${i}`);
    const handle = this.issueHandle();
    const c = this.chunkSize;

    // Match (read-only).
    const maxMatch = length > 0 ? Math.floor((length - 1) / c) : 0;
    const matchedChunks = this.matchPrefix(promptTokens, maxMatch);
    const matched = this.matchScratch;
    let matchedEvictable = 0;
    for (let i = 0; i < matchedChunks; i++) if (this.refs[matched[i]!] === 0) matchedEvictable++;
    const revivedTokens = matchedEvictable * c;
    const node = matchedChunks > 0 ? matched[matchedChunks - 1]! : ROOT;
    const matchedTokens = matchedChunks * c;
    const newChunks = Math.ceil((length - matchedTokens) / c);

    // Capacity (matched cached chunks stop being evictable).
    this.requireChunks(newChunks, matchedEvictable, 'insert');

    // Mutate.
    for (let i = 0; i < matchedChunks; i++) this.incRef(matched[i]!, 1);
    const writeCount = length - matchedTokens;
    const slots = new Int32Array(writeCount);
    const offsets = new Int32Array(writeCount);
    let tail = node;
    for (let k = 0; k < newChunks; k++) {
      const begin = matchedTokens + k * c;
      const count = Math.min(c, length - begin);
      const chunk = this.newNode(tail);
      this.tokens.set(promptTokens.subarray(begin, begin + count), chunk * c);
      this.fill[chunk] = count;
      for (let i = 0; i < count; i++) {
        slots[begin - matchedTokens + i] = chunk - 1;
        offsets[begin - matchedTokens + i] = i;
      }
      if (count === c) this.registerFull(chunk);
      tail = chunk;
    }
    const rec = new SequenceRecord(handle, tail, length);
    this.attachSequence(rec, tail);
    this.sequenceMap.set(handle, rec);
    this.nextHandle++;
    this.stored += writeCount + revivedTokens;
    this.logical += length;
    this.refTotal += matchedChunks + newChunks;
    this.notePeak();
    this.shapeVersionNow++;
    return { seq: handle, matchedTokens, newChunks, writes: { slots, offsets } };
  }

  /** Appends one token to one sequence (a decode step of batch 1). */
  append(seq: number, token: number): AppendResult {
    return this.appendBatch([seq], [token]);
  }

  /**
   * Appends tokens[i] to seqs[i] for every i (one decode step). Sequences must be distinct.
   * A sequence whose tail chunk is full (or that is empty) gets a new private chunk.
   */
  appendBatch(
    seqs: ArrayLike<number>,
    newTokens: ArrayLike<number>,
    /** Runs after every check and before any change (a caller's own check of the step). */
    beforeChange?: (tokens: number) => void,
  ): AppendResult {
    if (typeof seqs?.length !== 'number' || typeof newTokens?.length !== 'number') {
      throw new ArgumentError('appendBatch: seqs and tokens must be arrays');
    }
    const n = seqs.length;
    if (newTokens.length !== n) {
      throw new ShapeError(`appendBatch: ${n} sequences but ${newTokens.length} tokens`);
    }
    const c = this.chunkSize;
    const fill = this.fill;
    if (this.batchRecords.length < n) this.batchRecords = new Array(n);
    const records = this.batchRecords;
    const stamp = ++this.batchStamp;
    let need = 0;
    for (let i = 0; i < n; i++) {
      const rec = this.sequenceMap.get(seqs[i]!);
      if (rec === undefined) throw new UnknownSequenceError(seqs[i]!);
      if (rec.stamp === stamp) throw new ArgumentError(`appendBatch: sequence ${rec.handle} appears twice`);
      rec.stamp = stamp;
      const token = newTokens[i];
      if (typeof token !== 'number' || !Number.isInteger(token) || token < 0 || token > 0x7fffffff) {
        checkToken(token, `appendBatch: entry ${i}`);
      }
      records[i] = rec;
      if (rec.tail === ROOT || fill[rec.tail] === c) need++;
    }
    this.requireChunks(need, 0, 'appendBatch');
    beforeChange?.(n);

    // New chunks first (allocation may grow the node arrays), then the writes with the arrays
    // held in locals.
    if (need > 0) {
      for (let i = 0; i < n; i++) {
        const rec = records[i]!;
        const tail = rec.tail;
        if (tail === ROOT || this.fill[tail] === c) {
          const chunk = this.newNode(tail);
          this.detachSequence(rec);
          this.attachSequence(rec, chunk);
          rec.tail = chunk;
        }
      }
    }
    const slots = new Int32Array(n);
    const offsets = new Int32Array(n);
    const fillNow = this.fill;
    const tokens = this.tokens;
    for (let i = 0; i < n; i++) {
      const rec = records[i]!;
      const tail = rec.tail;
      const offset = fillNow[tail]!;
      tokens[tail * c + offset] = newTokens[i]!;
      slots[i] = tail - 1;
      offsets[i] = offset;
      fillNow[tail] = offset + 1;
      if (offset + 1 === c) this.registerFull(tail);
      rec.length++;
    }
    this.stored += n;
    this.logical += n;
    this.refTotal += need;
    this.lengthVersion++;
    if (need > 0) {
      this.notePeak();
      this.shapeVersionNow++;
    }
    return { slots, offsets, copies: EMPTY_COPIES };
  }

  /**
   * Appends tokens[i] (one or more tokens) to seqs[i] for every i in one step: prefill of a
   * suffix, chunked prefill, speculative drafts. Sequences must be distinct. The writes come in
   * CSR order: entry Σ_{k<i} tokens[k].length + j is token j of seqs[i]. Same rules as
   * appendBatch (a full or shared tail gets a new private chunk); everything is checked (handles,
   * tokens, capacity for every chunk the step opens) before anything changes.
   */
  extendBatch(
    seqs: ArrayLike<number>,
    newTokens: ArrayLike<ArrayLike<number>>,
    /** Runs after every check and before any change (a caller's own check of Σ tokens). */
    beforeChange?: (tokens: number) => void,
  ): AppendResult {
    if (typeof seqs?.length !== 'number' || typeof newTokens?.length !== 'number')
      throw new ArgumentError('extend: seqs and tokens must be arrays');
    const n = seqs.length;
    if (newTokens.length !== n)
      throw new ShapeError(`extend: ${n} sequences but ${newTokens.length} token lists`);
    const c = this.chunkSize;
    const stamp = ++this.batchStamp;
    const base = new Int32Array(n + 1);
    let need = 0;
    let rounds = 0;
    for (let i = 0; i < n; i++) {
      const rec = this.sequenceMap.get(seqs[i]!);
      if (rec === undefined) throw new UnknownSequenceError(seqs[i]!);
      if (rec.stamp === stamp) throw new ArgumentError(`extend: sequence ${rec.handle} appears twice`);
      rec.stamp = stamp;
      const list = newTokens[i];
      if (typeof list !== 'object' || list === null || typeof list.length !== 'number' || list.length < 1)
        throw new ArgumentError(`extend: entry ${i} must be an array of at least one token`);
      for (let j = 0; j < list.length; j++) checkToken(list[j], `extend: entry ${i}, token ${j}`);
      const room = rec.tail !== ROOT && this.fill[rec.tail]! < c ? c - this.fill[rec.tail]! : 0;
      need += Math.ceil(Math.max(0, list.length - room) / c);
      base[i + 1] = base[i]! + list.length;
      rounds = Math.max(rounds, list.length);
    }
    this.requireChunks(need, 0, 'extend');
    beforeChange?.(base[n]!);

    // Token j of every sequence that has one, as one appendBatch per position (capacity for all
    // of them is reserved above, so none of these can fail).
    const slots = new Int32Array(base[n]!);
    const offsets = new Int32Array(base[n]!);
    const who: number[] = [];
    const stepSeqs: number[] = [];
    const stepTokens: number[] = [];
    for (let j = 0; j < rounds; j++) {
      who.length = 0;
      stepSeqs.length = 0;
      stepTokens.length = 0;
      for (let i = 0; i < n; i++) {
        const list = newTokens[i]!;
        if (j >= list.length) continue;
        who.push(i);
        stepSeqs.push(seqs[i]!);
        stepTokens.push(list[j]!);
      }
      const step = this.appendBatch(stepSeqs, stepTokens);
      for (let k = 0; k < who.length; k++) {
        const at = base[who[k]!]! + j;
        slots[at] = step.slots[k]!;
        offsets[at] = step.offsets[k]!;
      }
    }
    return { slots, offsets, copies: EMPTY_COPIES };
  }

  /**
   * Drops the last n tokens of a sequence (speculative decoding: rejected drafts). Chunks the
   * sequence no longer reaches lose its reference (freed when unreferenced, or kept cached when
   * cached chunks hang below them); a tail cut inside a chunk is truncated in place when the
   * sequence owns it alone and nothing hangs below it, else copied (copy-on-write: `copies`,
   * one chunk). Written-K/V watermarks shrink with the tokens. Checks (handle, n, capacity for
   * the copy) before anything changes.
   */
  rollback(seq: number, n: number): RollbackResult {
    const rec = this.record(seq);
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > rec.length)
      throw new ArgumentError(
        `rollback: n must be an integer in [1, ${rec.length}] (the length of sequence ${seq}), got ${String(n)}`,
      );
    const c = this.chunkSize;
    const newLength = rec.length - n;
    const keepChunks = Math.ceil(newLength / c);
    const dropped: number[] = [];
    let tail = rec.tail;
    while (tail !== ROOT && this.depth[tail]! >= keepChunks) {
      dropped.push(tail);
      tail = this.parent[tail]!;
    }
    const keep = tail === ROOT ? 0 : newLength - this.depth[tail]! * c;
    const truncate = tail !== ROOT && keep < this.fill[tail]!;
    // Which dropped chunks end up freed (bottom-up: private, and a leaf once those below go).
    let freedBelow = NONE;
    for (const node of dropped) {
      freedBelow = this.refs[node] === 1 && this.onlyChild(node, freedBelow) ? node : NONE;
    }
    const inPlace = truncate && this.refs[tail] === 1 && this.onlyChild(tail, freedBelow);
    if (truncate && !inPlace) this.requireChunks(1, 0, 'rollback');

    this.detachSequence(rec);
    let freedChunks = 0;
    let evictableChunks = 0;
    const unref = (node: number) => {
      if (--this.refs[node]! > 0) return;
      this.inUse--;
      this.stored -= this.fill[node]!;
      if (this.firstChild[node] === NONE) {
        this.freeNode(node);
        freedChunks++;
      } else {
        const up = this.parent[node]!;
        this.unlinkChild(node);
        this.linkChildBack(up, node);
        this.lruAppend(node);
        this.evictable++;
        evictableChunks++;
      }
    };
    for (const node of dropped) unref(node);
    const copies: ChunkCopy[] = [];
    const layers = this.kvLayers;
    if (inPlace) {
      if (this.fill[tail] === c) this.unregisterFull(tail);
      this.stored -= this.fill[tail]! - keep;
      this.fill[tail] = keep;
      for (let layer = 0; layer < layers; layer++) {
        const at = tail * layers + layer;
        this.written[at] = Math.min(this.written[at]!, keep);
      }
    } else if (truncate) {
      const src = tail;
      const chunk = this.newNode(this.parent[src]!);
      this.tokens.copyWithin(chunk * c, src * c, src * c + keep);
      this.fill[chunk] = keep;
      for (let layer = 0; layer < layers; layer++)
        this.written[chunk * layers + layer] = Math.min(this.written[src * layers + layer]!, keep);
      copies.push({ srcSlot: src - 1, dstSlot: chunk - 1, tokens: keep });
      this.stored += keep;
      unref(src);
      tail = chunk;
      this.notePeak();
    }
    rec.tail = tail;
    rec.length = newLength;
    this.attachSequence(rec, tail);
    this.logical -= n;
    this.refTotal -= dropped.length;
    this.lengthVersion++;
    this.shapeVersionNow++;
    return { freedChunks, evictableChunks, copies };
  }

  /** Whether `node` has no child other than `except`. */
  private onlyChild(node: number, except: number): boolean {
    for (let child = this.firstChild[node]!; child !== NONE; child = this.nextSibling[child]!)
      if (child !== except) return false;
    return true;
  }

  /**
   * Makes n new sequences identical to `seq` (parallel sampling, beam search). They share every
   * full chunk; a partial tail is copied (copy-on-write): one new chunk and one copy per sequence.
   */
  fork(seq: number, n: number): ForkResult {
    const rec = this.record(seq);
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1) {
      throw new ArgumentError(`fork: n must be an integer ≥ 1, got ${String(n)}`);
    }
    if (this.nextHandle + n - 1 > MAX_HANDLE)
      throw new ChunkattnError('sequence handles exhausted (2^31 issued)');
    const c = this.chunkSize;
    const tail = rec.tail;
    const tailFill = tail === ROOT ? 0 : this.fill[tail]!;
    const partial = tail !== ROOT && tailFill < c;
    this.requireChunks(partial ? n : 0, 0, 'fork');

    const seqs: number[] = [];
    const copies: ChunkCopy[] = [];
    const chunksPerSeq = tail === ROOT ? 0 : this.depth[tail]! + 1;
    if (partial) {
      const parentNode = this.parent[tail]!;
      for (let i = 0; i < n; i++) {
        const chunk = this.newNode(parentNode);
        this.tokens.copyWithin(chunk * c, tail * c, tail * c + tailFill);
        this.fill[chunk] = tailFill;
        for (let layer = 0; layer < this.kvLayers; layer++)
          this.written[chunk * this.kvLayers + layer] = Math.min(
            this.written[tail * this.kvLayers + layer]!,
            tailFill,
          );
        copies.push({ srcSlot: tail - 1, dstSlot: chunk - 1, tokens: tailFill });
        const forked = new SequenceRecord(this.nextHandle++, chunk, rec.length);
        this.attachSequence(forked, chunk);
        this.sequenceMap.set(forked.handle, forked);
        seqs.push(forked.handle);
      }
      for (let node = parentNode; node !== ROOT; node = this.parent[node]!) this.refs[node]! += n;
      this.stored += n * tailFill;
    } else {
      for (let i = 0; i < n; i++) {
        const forked = new SequenceRecord(this.nextHandle++, tail, rec.length);
        this.attachSequence(forked, tail);
        this.sequenceMap.set(forked.handle, forked);
        seqs.push(forked.handle);
      }
      for (let node = tail; node !== ROOT; node = this.parent[node]!) this.refs[node]! += n;
    }
    this.logical += n * rec.length;
    this.refTotal += n * chunksPerSeq;
    this.notePeak();
    this.shapeVersionNow++;
    return { seqs, copies };
  }

  /**
   * Ends a sequence. Refcounts drop along its path; its partial tail is freed at once, full
   * chunks that reach 0 stay cached (evictable, LRU) for future prefix hits.
   */
  release(seq: number): ReleaseResult {
    const rec = this.record(seq);
    const c = this.chunkSize;
    this.detachSequence(rec);
    this.sequenceMap.delete(seq);
    let freedChunks = 0;
    let evictableChunks = 0;
    let node = rec.tail;
    let chunks = 0;
    while (node !== ROOT) {
      const up = this.parent[node]!;
      chunks++;
      if (--this.refs[node]! === 0) {
        this.inUse--;
        this.stored -= this.fill[node]!;
        if (this.fill[node]! < c) {
          this.freeNode(node);
          freedChunks++;
        } else {
          // Cached: behind the live siblings, and at the LRU tail (after its descendants).
          this.unlinkChild(node);
          this.linkChildBack(up, node);
          this.lruAppend(node);
          this.evictable++;
          evictableChunks++;
        }
      }
      node = up;
    }
    this.logical -= rec.length;
    this.refTotal -= chunks;
    this.shapeVersionNow++;
    return { freedChunks, evictableChunks };
  }

  /** Frees up to n evictable chunks, least recently used first (always leaves). Returns how many. */
  evict(n: number = Number.POSITIVE_INFINITY): number {
    if (typeof n !== 'number' || !(n === Number.POSITIVE_INFINITY || (Number.isInteger(n) && n >= 0))) {
      throw new ArgumentError(`evict: n must be an integer ≥ 0 or Infinity, got ${String(n)}`);
    }
    let count = 0;
    while (count < n && this.lruHead !== NONE) {
      this.evictOne();
      count++;
    }
    return count;
  }

  // =============================================================================================
  // Checking and printing
  // =============================================================================================

  /**
   * Checks every invariant against a full recount; throws InvariantError listing what is wrong.
   * With `expected` (handle → tokens), also checks that exactly those sequences are live and that
   * each one's chunks spell its tokens.
   */
  validate(expected?: ReadonlyMap<number, ArrayLike<number>>): void {
    const problems: string[] = [];
    const c = this.chunkSize;
    const cap = this.pool.capacity;
    const nodes = cap + 1;
    const count = new Int32Array(nodes);
    let logical = 0;
    let refTotal = 0;

    // Sequences: paths, lengths, per-node lists.
    for (const [handle, rec] of this.sequenceMap) {
      if (rec.handle !== handle) problems.push(`sequence ${handle}: record says ${rec.handle}`);
      logical += rec.length;
      const tail = rec.tail;
      if (tail === ROOT) {
        if (rec.length !== 0) problems.push(`sequence ${handle}: length ${rec.length} but no chunks`);
      } else {
        if (!this.pool.isAllocated(tail - 1)) {
          problems.push(`sequence ${handle}: tail slot ${tail - 1} is not allocated`);
          continue;
        }
        const expectLength = this.depth[tail]! * c + this.fill[tail]!;
        if (rec.length !== expectLength) {
          problems.push(
            `sequence ${handle}: length ${rec.length} but its chunks hold ${expectLength} tokens`,
          );
        }
        let steps = 0;
        for (let node = tail; node !== ROOT; node = this.parent[node]!) {
          if (++steps > nodes) {
            problems.push(`sequence ${handle}: parent chain does not reach the root`);
            break;
          }
          count[node]!++;
          refTotal++;
          if (node !== tail && this.fill[node] !== c)
            problems.push(`sequence ${handle}: inner chunk ${node - 1} is not full`);
        }
      }
      let found = false;
      for (let s = this.nodeSequences[tail]; s; s = s.nextAtNode) if (s === rec) found = true;
      if (!found) problems.push(`sequence ${handle}: missing from the sequence list of its tail`);
    }
    for (let node = 0; node < nodes; node++) {
      let prev: SequenceRecord | null = null;
      for (let s = this.nodeSequences[node]; s; s = s.nextAtNode) {
        if (s.prevAtNode !== prev) problems.push(`node ${node}: broken sequence list at ${s.handle}`);
        if (s.tail !== node || this.sequenceMap.get(s.handle) !== s) {
          problems.push(`node ${node}: lists sequence ${s.handle} which does not end there`);
        }
        prev = s;
      }
    }

    // Nodes.
    let inUse = 0;
    let evictable = 0;
    let stored = 0;
    for (let slot = 0; slot < cap; slot++) {
      const node = slot + 1;
      if (!this.pool.isAllocated(slot)) {
        if (this.refs[node] !== 0 || this.fill[node] !== 0)
          problems.push(`free slot ${slot} still has node data`);
        continue;
      }
      const refs = this.refs[node]!;
      const fillNode = this.fill[node]!;
      if (refs !== count[node])
        problems.push(`slot ${slot}: refcount ${refs} but ${count[node]} live sequences pass through`);
      if (fillNode < 1 || fillNode > c) problems.push(`slot ${slot}: fill ${fillNode} outside [1, ${c}]`);
      if (this.firstChild[node] !== NONE && fillNode !== c)
        problems.push(`slot ${slot}: has children but is not full`);
      if (fillNode < c && refs !== 1)
        problems.push(`slot ${slot}: partial chunk with refcount ${refs} (must be a private tail)`);
      const up = this.parent[node]!;
      if (up !== ROOT && !this.pool.isAllocated(up - 1))
        problems.push(`slot ${slot}: parent ${up - 1} is not allocated`);
      if (this.depth[node] !== (up === ROOT ? 0 : this.depth[up]! + 1))
        problems.push(`slot ${slot}: wrong depth`);
      if (refs > 0) {
        inUse++;
        stored += fillNode;
      } else {
        evictable++;
      }
      if (fillNode === c) {
        const h = hashChunk(this.tokens, node * c, c);
        if (this.contentHash[node] !== h) problems.push(`slot ${slot}: stale content hash`);
        let chained = false;
        for (let x = this.childIndex.get(hashKey(up, h)) ?? NONE; x !== NONE; x = this.hashNext[x]!) {
          if (x === node) chained = true;
        }
        if (!chained) problems.push(`slot ${slot}: full chunk missing from the child index`);
      }
    }

    // Child lists: consistent links, live children first.
    const listed = new Uint8Array(nodes);
    for (let node = 0; node < nodes; node++) {
      if (node !== ROOT && !this.pool.isAllocated(node - 1)) continue;
      let prev = NONE;
      let seenCached = false;
      let steps = 0;
      for (let child = this.firstChild[node]!; child !== NONE; child = this.nextSibling[child]!) {
        if (++steps > nodes) {
          problems.push(`node ${node}: child list loops`);
          break;
        }
        if (child >= nodes || !this.pool.isAllocated(child - 1)) {
          problems.push(`node ${node}: child ${child - 1} not allocated`);
          break;
        }
        listed[child] = 1;
        if (this.parent[child] !== node) problems.push(`slot ${child - 1}: listed under the wrong parent`);
        if (this.prevSibling[child] !== prev) problems.push(`slot ${child - 1}: broken sibling links`);
        if (this.refs[child] === 0) seenCached = true;
        else if (seenCached) problems.push(`slot ${child - 1}: live child after a cached sibling`);
        prev = child;
      }
      if (this.lastChild[node] !== prev) problems.push(`node ${node}: wrong last child`);
    }
    for (let slot = 0; slot < cap; slot++) {
      if (this.pool.isAllocated(slot) && !listed[slot + 1])
        problems.push(`slot ${slot}: missing from its parent's children`);
    }

    // Child index: only allocated full chunks, under the right key.
    let indexed = 0;
    for (const [key, head] of this.childIndex) {
      let steps = 0;
      for (let x = head; x !== NONE; x = this.hashNext[x]!) {
        if (++steps > nodes || x >= nodes || !this.pool.isAllocated(x - 1)) {
          problems.push(`child index: key ${key} lists a free slot or loops`);
          break;
        }
        indexed++;
        if (this.fill[x] !== c) problems.push(`child index: slot ${x - 1} is not full`);
        if (hashKey(this.parent[x]!, this.contentHash[x]!) !== key)
          problems.push(`child index: slot ${x - 1} under a wrong key`);
      }
    }
    let fullChunks = 0;
    for (let slot = 0; slot < cap; slot++)
      if (this.pool.isAllocated(slot) && this.fill[slot + 1] === c) fullChunks++;
    if (indexed !== fullChunks) problems.push(`child index holds ${indexed} chunks, ${fullChunks} are full`);

    // LRU: exactly the evictable chunks, each after its evictable descendants.
    const position = new Int32Array(nodes).fill(-1);
    let lruCount = 0;
    let prevLru = NONE;
    for (let node = this.lruHead; node !== NONE; node = this.lruNext[node]!) {
      if (lruCount > nodes || !this.pool.isAllocated(node - 1)) {
        problems.push('LRU list loops or holds a free slot');
        break;
      }
      if (this.lruPrev[node] !== prevLru) problems.push(`LRU: broken links at slot ${node - 1}`);
      if (this.refs[node] !== 0) problems.push(`LRU: slot ${node - 1} is in use`);
      if (this.fill[node] !== c) problems.push(`LRU: slot ${node - 1} is partial`);
      position[node] = lruCount++;
      prevLru = node;
    }
    if (this.lruTail !== prevLru) problems.push('LRU: wrong tail');
    if (lruCount !== evictable) problems.push(`LRU holds ${lruCount} chunks, ${evictable} have refcount 0`);
    for (let slot = 0; slot < cap; slot++) {
      const node = slot + 1;
      if (!this.pool.isAllocated(slot) || this.refs[node] !== 0) continue;
      if (position[node] === -1) problems.push(`LRU: evictable slot ${slot} is missing`);
      const up = this.parent[node]!;
      if (up !== ROOT && this.refs[up] === 0 && position[up]! < position[node]!) {
        problems.push(`LRU: slot ${slot} comes after its evictable parent ${up - 1}`);
      }
    }

    // Counters.
    const pool = this.pool;
    if (this.inUse !== inUse) problems.push(`counter: inUse ${this.inUse}, recount ${inUse}`);
    if (this.evictable !== evictable)
      problems.push(`counter: evictable ${this.evictable}, recount ${evictable}`);
    if (pool.used !== inUse + evictable)
      problems.push(`pool: ${pool.used} allocated, tree holds ${inUse + evictable}`);
    if (pool.freeSlots + inUse + evictable !== cap) {
      problems.push(`free ${pool.freeSlots} + evictable ${evictable} + in use ${inUse} != capacity ${cap}`);
    }
    if (this.stored !== stored) problems.push(`counter: storedTokens ${this.stored}, recount ${stored}`);
    if (this.logical !== logical) problems.push(`counter: logicalTokens ${this.logical}, recount ${logical}`);
    if (this.refTotal !== refTotal) problems.push(`counter: refSum ${this.refTotal}, recount ${refTotal}`);
    if (this.peakInUse < inUse) problems.push(`counter: peak ${this.peakInUse} below in use ${inUse}`);

    // The caller's model.
    if (expected) {
      if (expected.size !== this.sequenceMap.size) {
        problems.push(`${this.sequenceMap.size} live sequences, expected ${expected.size}`);
      }
      for (const [handle, want] of expected) {
        if (!this.sequenceMap.has(handle)) {
          problems.push(`sequence ${handle} is not live`);
          continue;
        }
        const got = this.tokensOf(handle);
        let same = got.length === want.length;
        for (let i = 0; same && i < got.length; i++) same = got[i] === want[i];
        if (!same)
          problems.push(
            `sequence ${handle}: tokens [${got.join(' ')}], expected [${Array.from(want).join(' ')}]`,
          );
      }
    }

    if (problems.length > 0) throw new InvariantError(problems);
  }

  /**
   * The tree as indented text, one chunk per line, children in token order:
   *   `[t0 t1 ...] refs=N seqs=a,b` (`cached` for evictable chunks, `#slot` with slots: true).
   * Sequences of length 0 are listed on a first line `(root) seqs=...`.
   */
  dump(options: DumpOptions = {}): string {
    const lines: string[] = [];
    const c = this.chunkSize;
    const seqList = (node: number) => {
      const handles: number[] = [];
      for (let s = this.nodeSequences[node]; s; s = s.nextAtNode) handles.push(s.handle);
      handles.sort((a, b) => a - b);
      return handles.length > 0 ? ` seqs=${handles.join(',')}` : '';
    };
    const rootSeqs = seqList(ROOT);
    if (rootSeqs) lines.push(`(root)${rootSeqs}`);
    const visit = (node: number, indent: string) => {
      const children: number[] = [];
      for (let child = this.firstChild[node]!; child !== NONE; child = this.nextSibling[child]!)
        children.push(child);
      const content = children.map((child) =>
        Array.from(this.tokens.subarray(child * c, child * c + this.fill[child]!)),
      );
      const order = children.map((_, i) => i);
      order.sort((a, b) => {
        const x = content[a]!;
        const y = content[b]!;
        for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
        return x.length - y.length || children[a]! - children[b]!;
      });
      for (const i of order) {
        const child = children[i]!;
        const refs = this.refs[child]!;
        const slot = options.slots ? ` #${child - 1}` : '';
        const state = refs === 0 ? ' cached' : ` refs=${refs}`;
        lines.push(`${indent}[${content[i]!.join(' ')}]${slot}${state}${seqList(child)}`);
        visit(child, indent + '  ');
      }
    };
    visit(ROOT, '');
    return lines.join('\n');
  }

  // =============================================================================================
  // Internals
  // =============================================================================================

  private record(seq: number): SequenceRecord {
    const rec = this.sequenceMap.get(seq);
    if (rec === undefined) throw new UnknownSequenceError(seq);
    return rec;
  }

  private issueHandle(): number {
    if (this.nextHandle > MAX_HANDLE) throw new ChunkattnError('sequence handles exhausted (2^31 issued)');
    return this.nextHandle;
  }

  /** Throws CapacityError unless `chunks` slots can be had (free, growth, eviction). */
  private requireChunks(chunks: number, revivedEvictable: number, op: string): void {
    if (chunks === 0) return;
    const available = this.pool.available + this.evictable - revivedEvictable;
    if (chunks > available) {
      throw new CapacityError(
        `${op}: needs ${chunks} chunks but only ${available} can be had (free + growth room + evictable); pool max ${this.pool.maxCapacity}`,
        chunks,
        available,
      );
    }
  }

  private notePeak(): void {
    if (this.inUse > this.peakInUse) this.peakInUse = this.inUse;
  }

  /**
   * The deepest chain of full chunks spelling prompt[0, k·C) for k ≤ maxMatch, into
   * matchScratch[0, k); returns k. Ties go to the chain that revives fewer cached chunks.
   * Usually one candidate per level; duplicates (equal full siblings, which appends and the
   * last-chunk rule can create) are searched depth-first, each node at most once.
   */
  private matchPrefix(prompt: Int32Array, maxMatch: number): number {
    if (maxMatch === 0) return 0;
    if (this.matchScratch.length < maxMatch) this.matchScratch = new Int32Array(maxMatch * 2);
    const c = this.chunkSize;
    const hashes = new Int32Array(maxMatch);
    const hashed = new Uint8Array(maxMatch);
    const levelHash = (k: number) => {
      if (hashed[k] === 0) {
        hashes[k] = hashChunk(prompt, k * c, c);
        hashed[k] = 1;
      }
      return hashes[k]!;
    };
    let bestNode = ROOT;
    let bestDepth = 0;
    let bestRevived = 0;
    // Stack of (node, revived chunks on its path).
    const stack: number[] = [ROOT, 0];
    while (stack.length > 0) {
      const revived = stack.pop()!;
      const node = stack.pop()!;
      const k = node === ROOT ? 0 : this.depth[node]! + 1;
      if (k > bestDepth || (k === bestDepth && revived < bestRevived)) {
        bestNode = node;
        bestDepth = k;
        bestRevived = revived;
      }
      if (k >= maxMatch) continue;
      const h = levelHash(k);
      const offset = k * c;
      for (let x = this.childIndex.get(hashKey(node, h)) ?? NONE; x !== NONE; x = this.hashNext[x]!) {
        if (this.parent[x] !== node || this.contentHash[x] !== h) continue;
        const base = x * c;
        let same = true;
        for (let i = 0; i < c; i++) {
          if (this.tokens[base + i] !== prompt[offset + i]) {
            same = false;
            break;
          }
        }
        if (same && this.kvComplete(x)) stack.push(x, revived + (this.refs[x] === 0 ? 1 : 0));
      }
    }
    for (let node = bestNode; node !== ROOT; node = this.parent[node]!)
      this.matchScratch[this.depth[node]!] = node;
    return bestDepth;
  }

  /** Whether the chunk's K/V is written in full in every tracked layer. */
  private kvComplete(node: number): boolean {
    const base = node * this.kvLayers;
    for (let layer = 0; layer < this.kvLayers; layer++)
      if (this.written[base + layer]! < this.chunkSize) return false;
    return true;
  }

  private checkKvLayer(layer: number): void {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.kvLayers)
      throw new ArgumentError(`layer ${layer} is outside the tree's ${this.kvLayers} tracked layers`);
  }

  private registerFull(node: number): void {
    const c = this.chunkSize;
    const h = hashChunk(this.tokens, node * c, c);
    this.contentHash[node] = h;
    const key = hashKey(this.parent[node]!, h);
    this.hashNext[node] = this.childIndex.get(key) ?? NONE;
    this.childIndex.set(key, node);
  }

  private unregisterFull(node: number): void {
    const key = hashKey(this.parent[node]!, this.contentHash[node]!);
    const head = this.childIndex.get(key) ?? NONE;
    if (head === node) {
      const next = this.hashNext[node]!;
      if (next === NONE) this.childIndex.delete(key);
      else this.childIndex.set(key, next);
    } else {
      let x = head;
      while (x !== NONE && this.hashNext[x] !== node) x = this.hashNext[x]!;
      if (x !== NONE) this.hashNext[x] = this.hashNext[node]!;
    }
    this.hashNext[node] = NONE;
  }

  /** refcount += k; a cached chunk going live leaves the LRU and moves before its cached siblings. */
  private incRef(node: number, k: number): void {
    if (this.refs[node] === 0) {
      this.lruRemove(node);
      this.evictable--;
      this.inUse++;
      const up = this.parent[node]!;
      this.unlinkChild(node);
      this.linkChildFront(up, node);
    }
    this.refs[node]! += k;
  }

  /** A new private chunk (refcount 1, fill 0) under `up`, evicting if the pool is full. */
  private newNode(up: number): number {
    let slot = this.pool.alloc();
    if (slot < 0) {
      this.evictOne();
      slot = this.pool.alloc();
      if (slot < 0) throw new Error('prefix tree: no slot after eviction (capacity check missed)');
    }
    const node = slot + 1;
    this.parent[node] = up;
    this.depth[node] = up === ROOT ? 0 : this.depth[up]! + 1;
    this.fill[node] = 0;
    this.refs[node] = 1;
    this.written.fill(0, node * this.kvLayers, (node + 1) * this.kvLayers);
    this.firstChild[node] = NONE;
    this.lastChild[node] = NONE;
    this.hashNext[node] = NONE;
    this.linkChildFront(up, node);
    this.inUse++;
    return node;
  }

  private evictOne(): void {
    const node = this.lruHead;
    if (node === NONE) throw new Error('prefix tree: nothing to evict');
    if (this.firstChild[node] !== NONE) throw new Error(`prefix tree: LRU head ${node - 1} is not a leaf`);
    this.lruRemove(node);
    this.evictable--;
    this.freeNode(node);
  }

  /** Unlinks a leaf with refcount 0 (not in the LRU) and returns its slot to the pool. */
  private freeNode(node: number): void {
    if (this.fill[node] === this.chunkSize) this.unregisterFull(node);
    this.unlinkChild(node);
    this.refs[node] = 0;
    this.fill[node] = 0;
    this.parent[node] = ROOT;
    this.pool.free(node - 1);
  }

  private linkChildFront(up: number, node: number): void {
    const first = this.firstChild[up]!;
    this.prevSibling[node] = NONE;
    this.nextSibling[node] = first;
    if (first !== NONE) this.prevSibling[first] = node;
    else this.lastChild[up] = node;
    this.firstChild[up] = node;
  }

  private linkChildBack(up: number, node: number): void {
    const last = this.lastChild[up]!;
    this.nextSibling[node] = NONE;
    this.prevSibling[node] = last;
    if (last !== NONE) this.nextSibling[last] = node;
    else this.firstChild[up] = node;
    this.lastChild[up] = node;
  }

  private unlinkChild(node: number): void {
    const up = this.parent[node]!;
    const prev = this.prevSibling[node]!;
    const next = this.nextSibling[node]!;
    if (prev !== NONE) this.nextSibling[prev] = next;
    else this.firstChild[up] = next;
    if (next !== NONE) this.prevSibling[next] = prev;
    else this.lastChild[up] = prev;
    this.prevSibling[node] = NONE;
    this.nextSibling[node] = NONE;
  }

  private lruAppend(node: number): void {
    this.lruNext[node] = NONE;
    this.lruPrev[node] = this.lruTail;
    if (this.lruTail !== NONE) this.lruNext[this.lruTail] = node;
    else this.lruHead = node;
    this.lruTail = node;
  }

  private lruRemove(node: number): void {
    const prev = this.lruPrev[node]!;
    const next = this.lruNext[node]!;
    if (prev !== NONE) this.lruNext[prev] = next;
    else this.lruHead = next;
    if (next !== NONE) this.lruPrev[next] = prev;
    else this.lruTail = prev;
    this.lruPrev[node] = NONE;
    this.lruNext[node] = NONE;
  }

  private attachSequence(rec: SequenceRecord, node: number): void {
    const head = this.nodeSequences[node] ?? null;
    rec.prevAtNode = null;
    rec.nextAtNode = head;
    if (head) head.prevAtNode = rec;
    this.nodeSequences[node] = rec;
  }

  private detachSequence(rec: SequenceRecord): void {
    if (rec.prevAtNode) rec.prevAtNode.nextAtNode = rec.nextAtNode;
    else this.nodeSequences[rec.tail] = rec.nextAtNode;
    if (rec.nextAtNode) rec.nextAtNode.prevAtNode = rec.prevAtNode;
    rec.prevAtNode = null;
    rec.nextAtNode = null;
  }

  private ensureNodeCapacity(nodes: number): void {
    if (nodes <= this.nodeCapacity) return;
    const size = Math.max(nodes, this.nodeCapacity * 2, 16);
    const grow = (a: Int32Array, per = 1) => {
      const b = new Int32Array(size * per);
      b.set(a);
      return b;
    };
    this.parent = grow(this.parent);
    this.depth = grow(this.depth);
    this.fill = grow(this.fill);
    this.refs = grow(this.refs);
    this.firstChild = grow(this.firstChild);
    this.lastChild = grow(this.lastChild);
    this.nextSibling = grow(this.nextSibling);
    this.prevSibling = grow(this.prevSibling);
    this.contentHash = grow(this.contentHash);
    this.hashNext = grow(this.hashNext);
    this.lruPrev = grow(this.lruPrev);
    this.lruNext = grow(this.lruNext);
    this.tokens = grow(this.tokens, this.chunkSize);
    this.written = grow(this.written, this.kvLayers);
    // A packed array (never holey or sparse), so lookups stay fast.
    const sequences: (SequenceRecord | null)[] = new Array(size).fill(null);
    for (let node = 0; node < this.nodeSequences.length; node++)
      sequences[node] = this.nodeSequences[node] ?? null;
    this.nodeSequences = sequences;
    this.depth[ROOT] = -1;
    this.nodeCapacity = size;
  }
}
