// The user API: one prefix tree for all layers, one KV pool per layer, one compiled module.
//
//   const attn = await Attention.create(llama3_8b, { layers: 32, capacityTokens: 65536 });
//   const { seq, matchedTokens } = attn.insert(prompt);
//   for (layer…) attn.writeKV(layer, seq, matchedTokens, k, v);       // the unmatched prompt suffix
//   attn.appendStep(seqs, tokens);                                      // one decode step
//   for (layer…) { attn.writeDecodeKV(layer, k, v); out = attn.decode(layer, q); }
//   attn.release(seq);
//
// Multi-token steps (prefill of a suffix, chunked prefill, speculative verification):
//   attn.extend(seqs, tokensPerSeq);                                   // n_i tokens per sequence
//   for (layer…) { attn.writeDecodeKV(layer, k, v); out = attn.attend(layer, q); } // [Σ n_i, …]
//   attn.rollback(seq, rejected);                                       // drop rejected drafts
// decode is attend with one token per sequence (the same planner and kernel).
//
// q/out rows follow the caller's order (the seqs of the last appendStep), never the tree's.
// Every method validates its arguments first and throws a typed error with nothing changed.
//
// K/V validity: the tree tracks, per chunk and layer, which positions were written. writeKV and
// writeDecodeKV extend that in token order, and refuse (ArgumentError) K/V holding NaN or ±Inf,
// which would otherwise poison every later prompt that shares the chunk. decode refuses
// (UnwrittenKvError) a sequence whose K/V is not all written in that layer, and an insert
// matches only chunks whose K/V is complete in every layer.

import { freemem } from 'node:os';
import { isPlainObject, validateSpec } from '../dsl/attention.ts';
import type { SparseSpec } from '../dsl/sparse.ts';
import { ARCHS, type BuildTarget, type KernelSpec, PARTITIONS, type Partition } from '../dsl/spec.ts';
import {
  type Capacity,
  type CapacityOptions,
  checkContextCapacity,
  checkWriteCapacity,
  resolveCapacity,
  scratchBounds,
  writeStagingBytes,
} from './capacity.ts';
import type { ChunkMetadataStats } from './chunk-metadata.ts';
import {
  type Dispatcher,
  type DispatchRulesSource,
  type DispatchShape,
  prepareDispatch,
  sharedPrefixTokens,
} from './dispatch.ts';
import {
  ArgumentError,
  BusyError,
  ReservedCapacityError,
  ShapeError,
  UnknownSequenceError,
  UnwrittenKvError,
} from './errors.ts';
import { ContextPlanner, type KernelContext } from './kernel-context.ts';
import { type KvReadback, readSequenceKv } from './kv-readback.ts';
import { bytesPerChunk, type KvShape, type KvStats } from './kv-stats.ts';
import { gpuPresent, type LoadableModule, type ModuleLoader, resolveLoader } from './module-loader.ts';
import {
  type DecodeArgs,
  DeviceTensor,
  type HostData,
  type KernelStats,
  type KvPool,
  NativeModule,
  sumKernelStats,
  type TensorData,
} from './native-module.ts';
import { type InsertResult, PrefixTree, type RollbackResult } from './prefix-tree.ts';
import { resolveSparse, type SparseOverride } from './psa-options.ts';
import { isSingleToken, QueryPlanner, type QueryRows, totalQueryRows } from './query-rows.ts';
import { type SparseCall, SparseDecoder, type SparseSelection } from './sparse-decode.ts';

export type RuntimeTarget = BuildTarget;

/** A committed kernel from generated/ (or anything carrying a spec). */
export interface SpecSource {
  readonly spec: KernelSpec;
}

export interface AttentionOptions {
  readonly layers: number;
  /** KV capacity of the pool in tokens (rounded up to whole chunks). */
  readonly capacityTokens: number;
  /** Default 'auto': cuda when a GPU is present, else cpu. */
  readonly target?: RuntimeTarget | 'auto';
  /** Default: the spec's partition. Without a phase-1 kernel, two-phase runs as sequence-first. */
  readonly mode?: Partition;
  /** cpu target: worker threads (0 = all cores). */
  readonly threads?: number;
  /** Values of the spec's named parameters (default: their declared defaults). */
  readonly params?: Readonly<Record<string, number>>;
  /** Longest run of shared chunks one phase-1 task takes (default: unlimited). */
  readonly maxRunChunks?: number;
  /** How to get a module for a spec (default: the package's codegen builder). */
  readonly loader?: ModuleLoader;
  /** Progressive sparse attention: overrides of the spec's `sparse` options, or false for dense. */
  readonly sparse?: SparseOverride;
  /**
   * Where per-call dispatch rules come from (default: the tuning DB, registered by the package
   * entry); false: always the default instance and threshold. See runtime/dispatch.ts.
   */
  readonly dispatch?: DispatchRulesSource | false;
  /** Decode shapes to prebuild instances for (default: every instance the rules list). */
  readonly shapes?: readonly DispatchShape[];
  /**
   * Bounds of one kernel call (rows, partials, writeTokens, sequenceTokens; runtime/capacity.ts):
   * create reserves every scratch buffer for them once, so no later call allocates module memory
   * (CUDA-graph safe). A call past them throws ReservedCapacityError naming the field to raise.
   */
  readonly capacity?: CapacityOptions;
}

/** The query rows of one attend call: the last counts[i] tokens of seqs[i], in this order. */
export interface AttendRows {
  readonly seqs: ArrayLike<number>;
  readonly counts: ArrayLike<number>;
}

export interface AttentionStats extends KvStats {
  readonly kernel: KernelStats;
  /** PSA chunk metadata (present when sparse attention is on). */
  readonly sparseMetadata?: ChunkMetadataStats;
}

/** One kernel call, ready to run: the dispatched module, the layer's pool and the arguments. */
interface AttendCall {
  readonly module: NativeModule;
  /** The query rows (io order) the call computes. */
  readonly rows: QueryRows;
  readonly pool: KvPool;
  readonly args: DecodeArgs;
}

interface PendingStep {
  readonly seqs: Int32Array;
  /** New tokens per sequence (1 for appendStep); K/V and q rows come in this CSR order. */
  readonly counts: Int32Array;
  readonly slots: Int32Array;
  readonly offsets: Int32Array;
}

const MIN_SHARERS: Record<Partition, number> = {
  'two-phase': 2,
  'sequence-first': Number.POSITIVE_INFINITY,
  'chunk-first': 1,
};

const KV_DTYPE_BYTES = { f16: 2, bf16: 2, f32: 4 } as const;

// An Attention dropped without close() frees its pools when it is collected (the held value
// references the module and pools, never the Attention itself).
// A throw here would be an uncaught exception, so a pool that cannot be freed is left to its own
// native finalizer.
const dropped = new FinalizationRegistry<{ module: NativeModule; pools: KvPool[] }>(({ module, pools }) => {
  for (const pool of pools) {
    try {
      if (!pool.freed) module.free(pool);
    } catch {
      // freed already, or the module rejected it: the buffer's finalizer releases it
    }
  }
});

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;

/** Bytes of the KV pools Attention.create allocates (K and V, every layer, whole chunks). */
export function poolBytes(
  spec: KernelSpec,
  options: Pick<AttentionOptions, 'layers' | 'capacityTokens'>,
): number {
  const shape = {
    layers: options.layers,
    kvHeads: spec.heads.kv,
    headDim: spec.headDim,
    dtypeBytes: KV_DTYPE_BYTES[spec.dtype.kv],
  };
  return Math.ceil(options.capacityTokens / spec.chunkSize) * bytesPerChunk(shape, spec.chunkSize);
}

/** The warning create() gives when host pools would take more than half of the free memory. */
export function poolMemoryWarning(
  spec: KernelSpec,
  options: Pick<AttentionOptions, 'layers' | 'capacityTokens'>,
  freeBytes: number,
): string | undefined {
  const bytes = poolBytes(spec, options);
  if (bytes <= freeBytes / 2) return undefined;
  return (
    `the KV pools of ${options.layers} layers × ${options.capacityTokens} tokens take ${gib(bytes)}, ` +
    `more than half of the ${gib(freeBytes)} of free memory`
  );
}

function isSpec(source: KernelSpec | SpecSource | LoadableModule): source is KernelSpec {
  return 'heads' in source && 'headDim' in source;
}

const RUNTIME_TARGETS: readonly unknown[] = ['auto', 'cuda', 'emu', 'cpu'];
const MAX_LAYERS = 4096;

/** What a value looks like in a message, kept short whatever it is. */
function shown(value: unknown): string {
  const text =
    typeof value === 'string'
      ? `'${value}'`
      : typeof value === 'object'
        ? JSON.stringify(value)
        : String(value);
  return text === undefined ? String(value) : text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Validates every option that does not need the module (before anything is built). */
function checkOptions(options: AttentionOptions): void {
  if (!isPlainObject(options)) throw new ArgumentError(`options must be an object, got ${shown(options)}`);
  if (!Number.isInteger(options.layers) || options.layers < 1 || options.layers > MAX_LAYERS)
    throw new ArgumentError(`layers must be an integer in [1, ${MAX_LAYERS}], got ${shown(options.layers)}`);
  if (!Number.isSafeInteger(options.capacityTokens) || options.capacityTokens < 1)
    throw new ArgumentError(
      `capacityTokens must be a positive integer, got ${shown(options.capacityTokens)}`,
    );
  if (options.threads !== undefined && (!Number.isInteger(options.threads) || options.threads < 0))
    throw new ArgumentError(`threads must be an integer ≥ 0, got ${shown(options.threads)}`);
  if (options.target !== undefined && !RUNTIME_TARGETS.includes(options.target))
    throw new ArgumentError(
      `target must be one of ${RUNTIME_TARGETS.join(', ')}, got ${shown(options.target)}`,
    );
  if (options.mode !== undefined && !(PARTITIONS as readonly unknown[]).includes(options.mode))
    throw new ArgumentError(`mode must be one of ${PARTITIONS.join(', ')}, got ${shown(options.mode)}`);
  const runs = options.maxRunChunks;
  if (runs !== undefined && runs !== Number.POSITIVE_INFINITY && (!Number.isInteger(runs) || runs < 1))
    throw new ArgumentError(`maxRunChunks must be an integer ≥ 1 (or Infinity), got ${shown(runs)}`);
  if (options.loader !== undefined && typeof options.loader !== 'function')
    throw new ArgumentError(`loader must be a function, got ${shown(options.loader)}`);
  if (options.params !== undefined && !isPlainObject(options.params))
    throw new ArgumentError(`params must be an object of name: number, got ${shown(options.params)}`);
  if (options.capacity !== undefined && !isPlainObject(options.capacity))
    throw new ArgumentError(`capacity must be an object, got ${shown(options.capacity)}`);
}

/** The kernel parameter values: the spec's defaults, with given values matched by own property. */
function paramValues(spec: KernelSpec, given: Readonly<Record<string, number>> | undefined): Float32Array {
  const values = given ?? {};
  for (const name of Object.keys(values)) {
    if (!spec.params.some((p) => p.name === name))
      throw new ArgumentError(
        `params.${name.slice(0, 64)}: spec "${spec.name}" declares ${spec.params.map((p) => p.name).join(', ') || 'no params'}`,
      );
    const value = values[name];
    if (typeof value !== 'number' || !Number.isFinite(value))
      throw new ArgumentError(`params.${name}: ${shown(value)} is not a finite number`);
    if (Math.abs(value) > 3.4028234663852886e38)
      throw new ArgumentError(`params.${name}: ${value} does not fit a float32`);
  }
  return Float32Array.from(spec.params, (p) => (Object.hasOwn(values, p.name) ? values[p.name]! : p.default));
}

/** The build target for a spec: the one asked for (which the spec must list), or the best it lists. */
function chooseTarget(spec: KernelSpec, asked: RuntimeTarget | 'auto' | undefined): BuildTarget {
  const hasArch = spec.targets.some((t) => (ARCHS as readonly string[]).includes(t));
  const lists = (target: BuildTarget) => (target === 'cuda' ? hasArch : spec.targets.includes(target));
  if (asked && asked !== 'auto') {
    if (!lists(asked))
      throw new ArgumentError(
        `target ${asked}: spec "${spec.name}" targets ${spec.targets.join(', ')} (add ${asked === 'cuda' ? 'a GPU arch' : asked} to its targets)`,
      );
    return asked;
  }
  if (hasArch && gpuPresent()) return 'cuda';
  if (lists('cpu')) return 'cpu';
  throw new ArgumentError(
    `spec "${spec.name}" targets ${spec.targets.join(', ')}, none of which runs on this machine (no GPU); add 'cpu' or pass target`,
  );
}

/** Finds the first NaN or ±Inf in K/V data (f32 values, or f16/bf16 bit patterns). */
function nonFiniteIndex(data: HostData, dtype: 'f16' | 'bf16' | 'f32'): number {
  if (data instanceof Float32Array) {
    for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) return i;
    return -1;
  }
  // An all-ones exponent is Inf or NaN.
  const exponent = dtype === 'bf16' ? 0x7f80 : 0x7c00;
  for (let i = 0; i < data.length; i++) if ((data[i]! & exponent) === exponent) return i;
  return -1;
}

export class Attention {
  readonly spec: KernelSpec;
  readonly target: RuntimeTarget;
  /** The partition mode kernels actually run (two-phase falls back without a phase-1 kernel). */
  readonly mode: Partition;
  readonly layers: number;
  readonly module: NativeModule;
  /** The prefix tree. Mutate through this object (insert, fork, appendStep, release) so KV copies happen. */
  readonly cache: PrefixTree;
  readonly #pools: KvPool[];
  readonly #params: Float32Array;
  readonly #threads: number;
  readonly #maxRunChunks: number;
  #pending: PendingStep | null = null;
  readonly #planner = new ContextPlanner();
  readonly #queryPlanner = new QueryPlanner();
  #inFlight: Promise<void> | null = null;
  #closed = false;
  readonly #dispatcher: Dispatcher;
  #stepShape: { step: PendingStep; shape: DispatchShape } | null = null;
  /** PSA options in force (undefined: dense). */
  readonly sparse: SparseSpec | undefined;
  /** The bounds every kernel call stays within (options.capacity with its defaults). */
  readonly capacity: Capacity;
  /** The primary module's reserved K/V write staging (bytes). */
  readonly #kvStagingBytes: number;
  readonly #sparse: SparseDecoder | undefined;

  private constructor(
    spec: KernelSpec,
    module: NativeModule,
    options: AttentionOptions,
    dispatcher: Dispatcher,
    sparse: SparseSpec | undefined,
  ) {
    this.spec = spec;
    this.module = module;
    this.target = module.info.target;
    this.#dispatcher = dispatcher;
    this.mode = dispatcher.mode;
    this.layers = options.layers;
    const slots = Math.ceil(options.capacityTokens / spec.chunkSize);
    this.capacity = resolveCapacity(options.capacity, { numSlots: slots, chunkSize: spec.chunkSize });
    this.cache = new PrefixTree({
      chunkSize: spec.chunkSize,
      maxCapacity: slots,
      initialCapacity: slots,
      kvLayers: options.layers,
    });
    this.#params = paramValues(spec, options.params);
    this.#threads = options.threads ?? 0;
    this.#maxRunChunks = options.maxRunChunks ?? Number.POSITIVE_INFINITY;
    this.#pools = [];
    // Sparse decode runs on the primary module: its reservation holds the PSA staging too.
    const sparseOn = !!sparse && module.hasPsa;
    try {
      for (let layer = 0; layer < options.layers; layer++) this.#pools.push(module.allocPool(slots));
      // Scratch at its bounds, once, on every module a call may run on: no call allocates later.
      for (const instance of dispatcher.modules())
        instance.reserve(scratchBounds(instance.info, slots, this.capacity, sparseOn && instance === module));
      this.#kvStagingBytes = scratchBounds(module.info, slots, this.capacity).kv;
    } catch (error) {
      for (const pool of this.#pools) module.free(pool);
      throw error;
    }
    this.sparse = sparseOn ? sparse : undefined;
    try {
      this.#sparse = this.sparse
        ? new SparseDecoder(module, this.sparse, {
            layers: options.layers,
            slots,
            kvHeads: spec.heads.kv,
            headDim: spec.headDim,
            chunkSize: spec.chunkSize,
            dtype: spec.dtype.kv,
          })
        : undefined;
    } catch (error) {
      for (const pool of this.#pools) module.free(pool);
      throw error;
    }
    dropped.register(this, { module, pools: this.#pools }, this);
  }

  /** Builds (or finds in the cache) the module for a spec and allocates the per-layer pools. */
  static async create(
    source: KernelSpec | SpecSource | LoadableModule,
    options: AttentionOptions,
  ): Promise<Attention> {
    checkOptions(options);
    if (typeof source !== 'object' || source === null)
      throw new ArgumentError(`expected a spec, { spec } or a built module, got ${shown(source)}`);
    let loadable: LoadableModule;
    let loader: ModuleLoader | null = null;
    if ('libraryPath' in source) {
      loadable = source;
      if (
        options.target !== undefined &&
        options.target !== 'auto' &&
        options.target !== source.manifest.target
      )
        throw new ArgumentError(
          `target ${options.target}: the module was built for ${source.manifest.target}`,
        );
    } else {
      // Whatever its origin (JSON, a plain object), the spec is validated again (DslError).
      const spec = validateSpec(isSpec(source) ? source : source.spec);
      const target = chooseTarget(spec, options.target);
      paramValues(spec, options.params); // fail before building
      resolveSparse(spec, options.sparse); // fail before building
      loader = resolveLoader(options.loader);
      loadable = await loader(spec, target);
    }
    const spec = loadable.manifest.spec;
    paramValues(spec, options.params);
    const module = NativeModule.load(loadable.libraryPath);
    const wanted = options.mode ?? spec.partition;
    if (wanted === 'chunk-first' && !module.info.phase1)
      throw new ArgumentError(
        `mode chunk-first needs a phase-1 kernel, which the ${module.info.target} module lacks`,
      );
    const mode = wanted === 'two-phase' && !module.info.phase1 ? 'sequence-first' : wanted;
    if (mode !== wanted)
      process.emitWarning(
        `spec "${spec.name}" is two-phase, but the ${module.info.target} module has no phase-1 kernel: it runs sequence-first`,
        { code: 'CHUNKATTN_SEQUENCE_FIRST' },
      );
    const warning = module.info.target === 'cuda' ? undefined : poolMemoryWarning(spec, options, freemem());
    if (warning) process.emitWarning(warning, { code: 'CHUNKATTN_MEMORY' });
    const sparse = resolveSparse(spec, options.sparse);
    if (sparse && !module.hasPsa)
      process.emitWarning(
        `spec "${spec.name}" asks for sparse attention, which the ${module.info.target} module lacks: it runs dense`,
        { code: 'CHUNKATTN_DENSE' },
      );
    // Every instance the dispatch rules may pick is built and loaded now, never per call.
    const dispatcher = await prepareDispatch({
      spec,
      primary: module,
      mode,
      loader,
      ...(options.dispatch !== undefined && { dispatch: options.dispatch }),
      ...(options.shapes !== undefined && { shapes: options.shapes }),
    });
    return new Attention(spec, module, options, dispatcher, sparse);
  }

  get kvShape(): KvShape {
    return {
      layers: this.layers,
      kvHeads: this.spec.heads.kv,
      headDim: this.spec.headDim,
      dtypeBytes: KV_DTYPE_BYTES[this.spec.dtype.kv],
    };
  }

  /** Adds a sequence; the caller writes KV for prompt tokens [matchedTokens, length) with writeKV. */
  insert(tokens: ArrayLike<number>): InsertResult {
    this.#checkOpen();
    this.#pending = null;
    const result = this.cache.insert(tokens);
    // The chunks past the matched prefix are new (their slots may be reused): no metadata yet.
    this.#sparse?.metadata.drop(
      this.cache.chunksOf(result.seq).subarray(result.matchedTokens / this.spec.chunkSize),
    );
    return result;
  }

  /** n new sequences sharing everything of `seq` (parallel sampling, beam search). */
  fork(seq: number, n: number): number[] {
    this.#checkOpen();
    const result = this.cache.fork(seq, n);
    this.#applyCopies(result.copies);
    this.#pending = null;
    return result.seqs;
  }

  /** Writes K/V ([n, Hkv, D] each) of tokens [fromPos, fromPos + n) of a sequence into one layer. */
  writeKV(layer: number, seq: number, fromPos: number, k: TensorData, v: TensorData): void {
    this.#checkOpen();
    const pool = this.#pool(layer);
    const n = this.#tokenRows('k', k);
    if (this.#tokenRows('v', v) !== n)
      throw new ShapeError(`k holds ${n} tokens but v holds ${v.length / this.#rowElems()}`);
    if (!this.cache.has(seq)) throw new UnknownSequenceError(seq);
    const length = this.cache.length(seq);
    if (!Number.isInteger(fromPos) || fromPos < 0 || fromPos + n > length)
      throw new ArgumentError(
        `tokens [${fromPos}, ${fromPos + n}) are outside sequence ${seq} (length ${length})`,
      );
    const chunks = this.cache.chunksOf(seq);
    const c = this.spec.chunkSize;
    const slots = new Int32Array(n);
    const offsets = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const pos = fromPos + i;
      const slot = chunks[Math.floor(pos / c)]!;
      const sharers = this.cache.chunkRefs(slot);
      if (sharers > 1)
        throw new ArgumentError(
          `token ${pos} of sequence ${seq} lies in a chunk shared by ${sharers} sequences: its KV is stored already (write from matchedTokens on)`,
        );
      slots[i] = slot;
      offsets[i] = pos % c;
    }
    this.#checkFinite(k, v);
    this.cache.checkKvWrites(layer, slots, offsets);
    this.#writeKvPieces(pool, slots, offsets, k, v);
    this.cache.markKvWritten(layer, slots, offsets);
    this.#sparse?.metadata.afterWrite(layer, pool, slots, offsets, this.#written);
  }

  /** One decode step: appends one token to each sequence; then writeDecodeKV and decode per layer. */
  appendStep(seqs: ArrayLike<number>, tokens: ArrayLike<number>): void {
    this.#checkOpen();
    const result = this.cache.appendBatch(seqs, tokens, this.#checkStepCapacity);
    this.#applyCopies(result.copies);
    this.#dropOpenedChunks(result);
    const ioSeqs = Int32Array.from(seqs);
    this.#pending = { seqs: ioSeqs, counts: new Int32Array(ioSeqs.length).fill(1), ...result };
  }

  // PSA: a token at offset 0 opens a new chunk in a (maybe reused) slot, which has no summary yet.
  #dropOpenedChunks(step: { readonly slots: Int32Array; readonly offsets: Int32Array }): void {
    if (this.#sparse) this.#sparse.metadata.drop(step.slots.filter((_, i) => step.offsets[i] === 0));
  }

  /**
   * One multi-token step: appends tokens[i] (≥ 1 tokens) to seqs[i], with appendStep's rules
   * (copy-on-write, K/V validity). Then per layer writeDecodeKV with [Σ n_i, Hkv, D] K/V and
   * attend with [Σ n_i, Hq, D] q, rows of seqs[0]'s tokens first, each sequence's in token order.
   */
  extend(seqs: ArrayLike<number>, tokens: ArrayLike<ArrayLike<number>>): void {
    this.#checkOpen();
    const result = this.cache.extendBatch(seqs, tokens, this.#checkStepCapacity);
    this.#applyCopies(result.copies);
    this.#dropOpenedChunks(result);
    const counts = Int32Array.from({ length: seqs.length }, (_, i) => tokens[i]!.length);
    this.#pending = { seqs: Int32Array.from(seqs), counts, slots: result.slots, offsets: result.offsets };
  }

  /**
   * Drops the last n tokens of a sequence (rejected speculative drafts): its chunks past the new
   * length are released, a cut tail chunk is truncated or copied (copy-on-write).
   */
  rollback(seq: number, n: number): RollbackResult {
    this.#checkOpen();
    const result = this.cache.rollback(seq, n);
    this.#applyCopies(result.copies);
    // PSA: a tail chunk cut short is partial again, and its summary no longer describes it.
    const c = this.spec.chunkSize;
    const length = this.cache.length(seq);
    if (this.#sparse && length % c !== 0)
      this.#sparse.metadata.drop(this.cache.chunksOf(seq).subarray(Math.floor(length / c)));
    this.#pending = null;
    return result;
  }

  /**
   * K and V ([to − from, Hkv, D], the pool's dtype: Float32Array, or Uint16Array of f16/bf16
   * bits) of positions [from, to) of a sequence in one layer, exactly as stored. Throws
   * UnwrittenKvError for a position without K/V.
   */
  readKV(layer: number, seq: number, from: number, to: number): KvReadback {
    this.#checkOpen();
    const pool = this.#pool(layer);
    if (!this.cache.has(seq)) throw new UnknownSequenceError(seq);
    const { kv: kvHeads } = this.spec.heads;
    const shape = { kvHeads, headDim: this.spec.headDim, chunkSize: this.spec.chunkSize };
    return readSequenceKv(this.cache, this.module, pool, shape, layer, seq, from, to);
  }

  /** K/V ([Σ new tokens, Hkv, D], rows in appendStep / extend order) of the step's new tokens, for one layer. */
  writeDecodeKV(layer: number, k: TensorData, v: TensorData): void {
    this.#checkOpen();
    const pool = this.#pool(layer);
    const step = this.#pending;
    if (!step)
      throw new ArgumentError(
        'writeDecodeKV needs an appendStep first (the tree changed since, or none ran)',
      );
    for (const [name, data] of [
      ['k', k],
      ['v', v],
    ] as const)
      if (this.#tokenRows(name, data) !== step.slots.length)
        throw new ShapeError(
          `${name} holds ${data.length / this.#rowElems()} tokens; the step has ${step.slots.length}`,
        );
    this.#checkFinite(k, v);
    this.cache.checkKvWrites(layer, step.slots, step.offsets);
    this.module.writeKv(pool, step.slots, step.offsets, k, v);
    this.cache.markKvWritten(layer, step.slots, step.offsets);
    this.#sparse?.metadata.afterWrite(layer, pool, step.slots, step.offsets, this.#written);
  }

  /**
   * Attention of one query token per sequence over its whole KV. q and out are [n, Hq, D] with
   * row i for seqs[i] (default: the seqs of the last appendStep); only those rows are computed.
   * q/out may be DeviceTensors (allocTensor): then nothing crosses to the host.
   */
  decode(layer: number, q: TensorData, out?: HostData, seqs?: ArrayLike<number>): HostData;
  decode(layer: number, q: TensorData, out: DeviceTensor, seqs?: ArrayLike<number>): DeviceTensor;
  decode(layer: number, q: TensorData, out?: TensorData, seqs?: ArrayLike<number>): TensorData {
    const call = this.#attendCall(layer, q, out, this.#oneTokenRows(seqs), seqs === undefined);
    this.#run(layer, call);
    return call.args.out;
  }

  /**
   * Attention of several query tokens per sequence (each over the KV up to its own position, the
   * causal mask): q and out are [Σ counts, Hq, D], rows of seqs[0]'s last counts[0] tokens first,
   * in token order, then seqs[1]'s, … (default: the sequences and token counts of the last
   * extend / appendStep). After insert, `{ seqs: [seq], counts: [length − matchedTokens] }`
   * computes the prefill of the unmatched suffix. All those tokens' K/V must be written.
   * Sparse attention (PSA) applies to one-token rows only: a multi-token call runs dense.
   */
  attend(layer: number, q: TensorData, out?: HostData, rows?: AttendRows): HostData;
  attend(layer: number, q: TensorData, out: DeviceTensor, rows?: AttendRows): DeviceTensor;
  attend(layer: number, q: TensorData, out?: TensorData, rows?: AttendRows): TensorData {
    const call = this.#attendCall(layer, q, out, this.#queryRows(rows), rows === undefined);
    this.#run(layer, call);
    return call.args.out;
  }

  /** One layer's decode: sparse (PSA) past the dense layers when it is on, else dense. */
  #run(layer: number, call: AttendCall): void {
    const sparse = this.#sparse;
    if (!this.#runsSparse(layer, call)) {
      sparse?.clearLast();
      call.module.decode(call.pool, call.args);
      return;
    }
    sparse!.decode(layer, this.#sparseCall(call));
  }

  #sparseCall(call: AttendCall): SparseCall {
    return {
      pool: call.pool,
      args: call.args,
      context: this.context(),
      ioSeqs: call.rows.seqs,
      written: this.#written,
    };
  }

  #runsSparse(layer: number, call: AttendCall): boolean {
    return !!this.#sparse && !this.#sparse.isDenseLayer(layer) && isSingleToken(call.rows);
  }

  /** What the last decode selected when it ran sparse (a view, valid until the next decode). */
  get selection(): SparseSelection | undefined {
    return this.#sparse?.last;
  }

  /** The chunk metadata of PSA (undefined when it is off). */
  get chunkMetadata() {
    return this.#sparse?.metadata;
  }

  readonly #written = (layer: number, slot: number): number => this.cache.writtenTokens(layer, slot);

  /**
   * decode on a worker thread, so the event loop stays free: arguments are checked and the step
   * planned now (errors throw at once); the promise resolves with out. Until it settles every
   * other call on this Attention throws BusyError, and q/out must not be touched.
   */
  decodeAsync(layer: number, q: TensorData, out?: HostData, seqs?: ArrayLike<number>): Promise<HostData>;
  decodeAsync(
    layer: number,
    q: TensorData,
    out: DeviceTensor,
    seqs?: ArrayLike<number>,
  ): Promise<DeviceTensor>;
  async decodeAsync(
    layer: number,
    q: TensorData,
    out?: TensorData,
    seqs?: ArrayLike<number>,
  ): Promise<TensorData> {
    return this.#runAsync(
      layer,
      this.#attendCall(layer, q, out, this.#oneTokenRows(seqs), seqs === undefined),
    );
  }

  /** attend on a worker thread, with decodeAsync's rules (BusyError until it settles). */
  attendAsync(layer: number, q: TensorData, out?: HostData, rows?: AttendRows): Promise<HostData>;
  attendAsync(layer: number, q: TensorData, out: DeviceTensor, rows?: AttendRows): Promise<DeviceTensor>;
  async attendAsync(layer: number, q: TensorData, out?: TensorData, rows?: AttendRows): Promise<TensorData> {
    return this.#runAsync(layer, this.#attendCall(layer, q, out, this.#queryRows(rows), rows === undefined));
  }

  async #runAsync(layer: number, call: AttendCall): Promise<TensorData> {
    let done: Promise<void>;
    if (this.#runsSparse(layer, call)) {
      done = this.#sparse!.decodeAsync(layer, this.#sparseCall(call)).then(() => undefined);
    } else {
      this.#sparse?.clearLast();
      done = call.module.decodeAsync(call.pool, call.args);
    }
    this.#inFlight = done;
    try {
      await done;
    } finally {
      this.#inFlight = null;
    }
    return call.args.out;
  }

  /** One token per sequence: `seqs`, or the last step's sequences (each with one token). */
  #oneTokenRows(seqs: ArrayLike<number> | undefined): QueryRows {
    this.#checkOpen();
    if (seqs) {
      const list = Int32Array.from(seqs);
      return { seqs: list, counts: new Int32Array(list.length).fill(1) };
    }
    const step = this.#pending;
    if (!step)
      throw new ArgumentError(
        'decode needs the sequences of its q rows: call appendStep first, or pass seqs',
      );
    if (!isSingleToken(step))
      throw new ArgumentError('the last step appended several tokens per sequence: use attend, not decode');
    return step;
  }

  #queryRows(rows: AttendRows | undefined): QueryRows {
    this.#checkOpen();
    if (rows === undefined) {
      const step = this.#pending;
      if (!step)
        throw new ArgumentError(
          'attend needs its query rows: call extend or appendStep first, or pass { seqs, counts }',
        );
      return step;
    }
    if (
      typeof rows !== 'object' ||
      rows === null ||
      typeof rows.seqs?.length !== 'number' ||
      typeof rows.counts?.length !== 'number'
    )
      throw new ArgumentError(
        'attend: rows must be { seqs, counts } (arrays of sequence handles and query tokens)',
      );
    if (rows.seqs.length !== rows.counts.length)
      throw new ShapeError(`attend: ${rows.seqs.length} sequences but ${rows.counts.length} counts`);
    for (let i = 0; i < rows.counts.length; i++) {
      const n = rows.counts[i];
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 1)
        throw new ArgumentError(`attend: counts[${i}] must be an integer ≥ 1, got ${String(n)}`);
    }
    return { seqs: Int32Array.from(rows.seqs), counts: Int32Array.from(rows.counts) };
  }

  #attendCall(
    layer: number,
    q: TensorData,
    out: TensorData | undefined,
    rows: QueryRows,
    isStep: boolean,
  ): AttendCall {
    this.#checkOpen();
    const pool = this.#pool(layer);
    const ioSeqs = rows.seqs;
    const numIo = totalQueryRows(rows);
    const { q: qType, out: outType } = this.spec.dtype;
    const rowElems = this.spec.heads.q * this.spec.headDim;
    this.#checkData('q', q, qType, numIo * rowElems);
    const result =
      out ?? (outType === 'f32' ? new Float32Array(numIo * rowElems) : new Uint16Array(numIo * rowElems));
    this.#checkData('out', result, outType, numIo * rowElems);
    for (let i = 0; i < ioSeqs.length; i++) {
      const seq = ioSeqs[i]!;
      if (!this.cache.has(seq)) throw new UnknownSequenceError(seq);
      const length = this.cache.length(seq);
      if (rows.counts[i]! > Math.max(length, 1))
        throw new ArgumentError(
          `sequence ${seq}: ${rows.counts[i]} query tokens, but it holds ${length} (need 1 ≤ n ≤ its length)`,
        );
      const unwritten = this.cache.firstUnwritten(layer, seq);
      if (unwritten >= 0) throw new UnwrittenKvError(seq, layer, unwritten, length);
    }

    // Dispatch per call (cached per shape bucket), plan once per step: every layer passes the
    // same packed context (uploaded once); only the requested rows are computed. One token per
    // sequence uses the tree's context as it is; several expand it to one row per query token
    // (query-rows.ts), where runs count query rows.
    const { module, minSharers } = this.#dispatcher.pick(this.#shape(ioSeqs, isStep));
    const packed = isSingleToken(rows)
      ? this.#planner.plan(this.cache.context({ minSharers, maxRunChunks: this.#maxRunChunks }), ioSeqs)
      : this.#queryPlanner.plan(
          this.cache.context({
            minSharers: minSharers === Number.POSITIVE_INFINITY ? minSharers : 1,
            maxRunChunks: this.#maxRunChunks,
          }),
          rows,
          minSharers,
        );
    checkContextCapacity(packed, this.capacity, this.cache.capacity, this.spec.chunkSize);
    return {
      module,
      pool,
      rows,
      args: {
        q,
        out: result,
        context: packed,
        params: this.#params,
        softmaxScale: this.spec.softmaxScale,
        numThreads: this.#threads,
      },
    };
  }

  /** Per-call kernel dispatch: its decisions by shape bucket (runtime/dispatch.ts). */
  get dispatcher(): Dispatcher {
    return this.#dispatcher;
  }

  /** The kernel context of the current tree for this runtime's mode (cached while the shape holds). */
  context(): KernelContext {
    return this.cache.context({ minSharers: MIN_SHARERS[this.mode], maxRunChunks: this.#maxRunChunks });
  }

  /** A decode call's dispatch shape; the step's rows compute it once for all layers. */
  #shape(ioSeqs: Int32Array, isStep: boolean): DispatchShape {
    const step = this.#pending;
    if (isStep && step && this.#stepShape?.step === step) return this.#stepShape.shape;
    const shape = { batch: ioSeqs.length, sharedTokens: sharedPrefixTokens(this.cache, ioSeqs) };
    if (isStep && step) this.#stepShape = { step, shape };
    return shape;
  }

  release(seq: number): void {
    this.#checkOpen();
    this.cache.release(seq);
    this.#pending = null;
  }

  stats(): AttentionStats {
    const sparse = this.#sparse ? { sparseMetadata: this.#sparse.metadata.stats() } : {};
    // Counters are per module library, scratch per handle: sum every instance a call may run on
    // (the primary first), each library's counters once and every handle's scratch.
    const modules = this.#dispatcher.modules();
    const libraries = new Map<string, NativeModule>();
    for (const m of modules) if (!libraries.has(m.path)) libraries.set(m.path, m);
    const counted = sumKernelStats([...libraries.values()].map((m) => m.stats()));
    const scratch = { calls: 0, bytes: 0 };
    for (const m of modules) {
      const own = m.stats().scratchAllocations;
      scratch.calls += own.calls;
      scratch.bytes += own.bytes;
    }
    const kernel: KernelStats = { ...counted, scratchAllocations: scratch };
    return { ...this.cache.stats(this.kvShape), kernel, ...sparse };
  }

  /**
   * One writeKv per at most capacity.writeTokens tokens of host K/V (a long prompt costs a launch
   * per piece, never an allocation); DeviceTensors are read in place, so their write stages the
   * index lists only and goes whole, when that fits the reserved staging.
   */
  #writeKvPieces(pool: KvPool, slots: Int32Array, offsets: Int32Array, k: TensorData, v: TensorData): void {
    const n = slots.length;
    const piece = this.capacity.writeTokens;
    if (k instanceof DeviceTensor || v instanceof DeviceTensor) {
      const hostBytes = [k, v]
        .filter((t) => !(t instanceof DeviceTensor))
        .map((t) => (t as HostData).byteLength);
      if (writeStagingBytes(n, hostBytes) > this.#kvStagingBytes)
        throw new ReservedCapacityError(
          `writeKV of ${n} tokens needs ${writeStagingBytes(n, hostBytes)} bytes of staging, more than the ${this.#kvStagingBytes} reserved: raise capacity.writeTokens in Attention.create (or write in pieces)`,
          'capacity.writeTokens',
        );
      this.module.writeKv(pool, slots, offsets, k, v);
      return;
    }
    const e = this.#rowElems();
    for (let at = 0; at < n; at += piece) {
      const end = Math.min(n, at + piece);
      this.module.writeKv(
        pool,
        slots.subarray(at, end),
        offsets.subarray(at, end),
        k.subarray(at * e, end * e),
        v.subarray(at * e, end * e),
      );
    }
  }

  /** A step of `tokens` new tokens within capacity (the tree calls it after its own checks, before it changes). */
  readonly #checkStepCapacity = (tokens: number): void => {
    checkWriteCapacity(tokens, this.capacity, 'this step');
    if (tokens > this.capacity.rows)
      throw new ReservedCapacityError(
        `this step has ${tokens} query rows, more than capacity.rows = ${this.capacity.rows}: raise capacity.rows in Attention.create`,
        'capacity.rows',
      );
  };

  /** Frees the pools at once (a dropped object frees them when collected). Unusable afterwards. */
  close(): void {
    if (this.#closed) return;
    if (this.#inFlight) throw new BusyError('close: a decodeAsync is in flight; await it first');
    this.#closed = true;
    dropped.unregister(this);
    for (const pool of this.#pools) this.module.free(pool);
    this.#sparse?.close();
  }

  /** `using attn = await Attention.create(...)` closes it at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  #checkOpen(): void {
    if (this.#closed) throw new ArgumentError('this Attention is closed');
    if (this.#inFlight)
      throw new BusyError('a decodeAsync of this Attention is in flight: await it before the next call');
  }

  #pool(layer: number): KvPool {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.layers)
      throw new ArgumentError(`layer ${layer} is outside [0, ${this.layers})`);
    return this.#pools[layer]!;
  }

  #rowElems(): number {
    return this.spec.heads.kv * this.spec.headDim;
  }

  /** A zeroed tensor of `length` elements in the module's memory (device memory on cuda). */
  allocTensor(dtype: 'f16' | 'bf16' | 'f32', length: number): DeviceTensor {
    this.#checkOpen();
    return this.module.allocTensor(dtype, length);
  }

  /** Tokens in a K or V array ([n, Hkv, D]); checks its type against the pool's dtype. */
  #tokenRows(name: string, data: TensorData): number {
    const kv = this.spec.dtype.kv;
    if (data instanceof DeviceTensor) {
      if (data.dtype !== 'f32' && data.dtype !== kv)
        throw new ShapeError(`${name} is a DeviceTensor of ${data.dtype}; expected f32 or ${kv}`);
    } else if (!(data instanceof Float32Array) && !(data instanceof Uint16Array))
      throw new ShapeError(`${name} must be a Float32Array, or a Uint16Array of ${kv} bits`);
    if (data instanceof Uint16Array && kv === 'f32')
      throw new ShapeError(`${name}: the KV dtype is f32, so pass a Float32Array`);
    if (data.length % this.#rowElems() !== 0)
      throw new ShapeError(
        `${name} has ${data.length} elements, not a multiple of Hkv × D = ${this.#rowElems()}`,
      );
    return data.length / this.#rowElems();
  }

  /**
   * Refuses NaN/Inf K/V before anything is written (see the file comment). Host arrays only: a
   * DeviceTensor's bytes are not on the host, and reading them back would cost the copy that
   * device tensors exist to avoid, so device-resident K/V is the caller's to keep finite.
   */
  #checkFinite(k: TensorData, v: TensorData): void {
    const dtype = this.spec.dtype.kv;
    for (const [name, data] of [
      ['k', k],
      ['v', v],
    ] as const) {
      if (data instanceof DeviceTensor) continue;
      const at = nonFiniteIndex(data, dtype);
      if (at >= 0) {
        const rowElems = this.#rowElems();
        throw new ArgumentError(
          `${name} holds NaN or ±Inf at element ${at} (token row ${Math.floor(at / rowElems)}, kv head ${Math.floor((at % rowElems) / this.spec.headDim)}): K/V must be finite`,
        );
      }
    }
  }

  #checkData(name: string, data: TensorData, dtype: string, elements: number): void {
    const ok =
      data instanceof DeviceTensor
        ? data.dtype === dtype
        : dtype === 'f32'
          ? data instanceof Float32Array
          : data instanceof Uint16Array;
    if (!ok)
      throw new ShapeError(
        `${name} must be ${dtype === 'f32' ? 'a Float32Array' : `a Uint16Array of ${dtype} bits`}`,
      );
    if (data.length !== elements)
      throw new ShapeError(`${name} has ${data.length} elements; expected ${elements}`);
  }

  /** Copy-on-write of a step's chunks: one launch per layer for all of them. */
  #applyCopies(copies: readonly { srcSlot: number; dstSlot: number; tokens: number }[]): void {
    if (copies.length === 0) return;
    const list = new Int32Array(copies.length * 3);
    copies.forEach((copy, i) => {
      list.set([copy.srcSlot, copy.dstSlot, copy.tokens], i * 3);
    });
    for (const pool of this.#pools) this.module.copyChunks(pool, list);
    this.#sparse?.metadata.afterCopies(copies);
  }
}
