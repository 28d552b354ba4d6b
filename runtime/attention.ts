// The user API: one prefix tree for all layers, one KV pool per layer, one compiled module.
//
//   const attn = await Attention.create(llama3_8b, { layers: 32, capacityTokens: 65536 });
//   const { seq, matchedTokens } = attn.insert(prompt);
//   for (layer…) attn.writeKV(layer, seq, matchedTokens, k, v);       // the unmatched prompt suffix
//   attn.appendStep(seqs, tokens);                                      // one decode step
//   for (layer…) { attn.writeDecodeKV(layer, k, v); out = attn.decode(layer, q); }
//   attn.release(seq);
//
// q/out rows follow the caller's order (the seqs of the last appendStep), never the tree's.
// Every method validates its arguments first and throws a typed error with nothing changed.

import type { BuildTarget, KernelSpec, Partition } from '../dsl/spec.ts';
import { ArgumentError, BusyError, ShapeError, UnknownSequenceError } from './errors.ts';
import { ContextPlanner, type KernelContext } from './kernel-context.ts';
import type { KvShape, KvStats } from './kv-stats.ts';
import { gpuPresent, type LoadableModule, type ModuleLoader, resolveLoader } from './module-loader.ts';
import {
  type DecodeArgs,
  DeviceTensor,
  type HostData,
  type KernelStats,
  type KvPool,
  NativeModule,
  type TensorData,
} from './native-module.ts';
import { type InsertResult, PrefixTree } from './prefix-tree.ts';

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
}

export interface AttentionStats extends KvStats {
  readonly kernel: KernelStats;
}

interface PendingStep {
  readonly seqs: Int32Array;
  readonly slots: Int32Array;
  readonly offsets: Int32Array;
}

const MIN_SHARERS: Record<Partition, number> = {
  'two-phase': 2,
  'sequence-first': Number.POSITIVE_INFINITY,
  'chunk-first': 1,
};

function isSpec(source: KernelSpec | SpecSource | LoadableModule): source is KernelSpec {
  return 'heads' in source && 'headDim' in source;
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
  #inFlight: Promise<void> | null = null;
  #closed = false;

  private constructor(spec: KernelSpec, module: NativeModule, options: AttentionOptions, mode: Partition) {
    this.spec = spec;
    this.module = module;
    this.target = module.info.target;
    this.mode = mode;
    this.layers = options.layers;
    const slots = Math.ceil(options.capacityTokens / spec.chunkSize);
    this.cache = new PrefixTree({ chunkSize: spec.chunkSize, maxCapacity: slots, initialCapacity: slots });
    this.#params = Float32Array.from(spec.params, (p) => options.params?.[p.name] ?? p.default);
    this.#threads = options.threads ?? 0;
    this.#maxRunChunks = options.maxRunChunks ?? Number.POSITIVE_INFINITY;
    this.#pools = [];
    try {
      for (let layer = 0; layer < options.layers; layer++) this.#pools.push(module.allocPool(slots));
    } catch (error) {
      for (const pool of this.#pools) module.free(pool);
      throw error;
    }
  }

  /** Builds (or finds in the cache) the module for a spec and allocates the per-layer pools. */
  static async create(
    source: KernelSpec | SpecSource | LoadableModule,
    options: AttentionOptions,
  ): Promise<Attention> {
    if (!Number.isInteger(options.layers) || options.layers < 1)
      throw new ArgumentError(`layers must be a positive integer, got ${options.layers}`);
    if (!Number.isInteger(options.capacityTokens) || options.capacityTokens < 1)
      throw new ArgumentError(`capacityTokens must be a positive integer, got ${options.capacityTokens}`);
    if (options.threads !== undefined && (!Number.isInteger(options.threads) || options.threads < 0))
      throw new ArgumentError(`threads must be an integer ≥ 0, got ${options.threads}`);
    let loadable: LoadableModule;
    if ('libraryPath' in source) {
      loadable = source;
    } else {
      const spec = isSpec(source) ? source : source.spec;
      const target =
        options.target && options.target !== 'auto' ? options.target : gpuPresent() ? 'cuda' : 'cpu';
      loadable = await resolveLoader(options.loader)(spec, target);
    }
    const spec = loadable.manifest.spec;
    for (const name of Object.keys(options.params ?? {}))
      if (!spec.params.some((p) => p.name === name))
        throw new ArgumentError(
          `params.${name}: spec "${spec.name}" declares ${spec.params.map((p) => p.name).join(', ') || 'no params'}`,
        );
    const module = NativeModule.load(loadable.libraryPath);
    const wanted = options.mode ?? spec.partition;
    if (wanted === 'chunk-first' && !module.info.phase1)
      throw new ArgumentError(
        `mode chunk-first needs a phase-1 kernel, which the ${module.info.target} module lacks`,
      );
    const mode = wanted === 'two-phase' && !module.info.phase1 ? 'sequence-first' : wanted;
    return new Attention(spec, module, options, mode);
  }

  get kvShape(): KvShape {
    const bytes = { f16: 2, bf16: 2, f32: 4 }[this.spec.dtype.kv];
    return {
      layers: this.layers,
      kvHeads: this.spec.heads.kv,
      headDim: this.spec.headDim,
      dtypeBytes: bytes,
    };
  }

  /** Adds a sequence; the caller writes KV for prompt tokens [matchedTokens, length) with writeKV. */
  insert(tokens: ArrayLike<number>): InsertResult {
    this.#checkOpen();
    this.#pending = null;
    return this.cache.insert(tokens);
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
    this.module.writeKv(pool, slots, offsets, k, v);
  }

  /** One decode step: appends one token to each sequence; then writeDecodeKV and decode per layer. */
  appendStep(seqs: ArrayLike<number>, tokens: ArrayLike<number>): void {
    this.#checkOpen();
    const result = this.cache.appendBatch(seqs, tokens);
    this.#applyCopies(result.copies);
    this.#pending = { seqs: Int32Array.from(seqs), slots: result.slots, offsets: result.offsets };
  }

  /** K/V ([seqs.length, Hkv, D], rows in appendStep order) of the step's new tokens, for one layer. */
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
      if (this.#tokenRows(name, data) !== step.seqs.length)
        throw new ShapeError(
          `${name} holds ${data.length / this.#rowElems()} tokens; the step has ${step.seqs.length}`,
        );
    this.module.writeKv(pool, step.slots, step.offsets, k, v);
  }

  /**
   * Attention of one query token per sequence over its whole KV. q and out are [n, Hq, D] with
   * row i for seqs[i] (default: the seqs of the last appendStep); only those rows are computed.
   * q/out may be DeviceTensors (allocTensor): then nothing crosses to the host.
   */
  decode(layer: number, q: TensorData, out?: HostData, seqs?: ArrayLike<number>): HostData;
  decode(layer: number, q: TensorData, out: DeviceTensor, seqs?: ArrayLike<number>): DeviceTensor;
  decode(layer: number, q: TensorData, out?: TensorData, seqs?: ArrayLike<number>): TensorData {
    const call = this.#decodeCall(layer, q, out, seqs);
    this.module.decode(call.pool, call.args);
    return call.args.out;
  }

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
    const call = this.#decodeCall(layer, q, out, seqs);
    const done = this.module.decodeAsync(call.pool, call.args);
    this.#inFlight = done;
    try {
      await done;
    } finally {
      this.#inFlight = null;
    }
    return call.args.out;
  }

  #decodeCall(
    layer: number,
    q: TensorData,
    out: TensorData | undefined,
    seqs: ArrayLike<number> | undefined,
  ): { pool: KvPool; args: DecodeArgs } {
    this.#checkOpen();
    const pool = this.#pool(layer);
    const ioSeqs = seqs ? Int32Array.from(seqs) : this.#pending?.seqs;
    if (!ioSeqs)
      throw new ArgumentError(
        'decode needs the sequences of its q rows: call appendStep first, or pass seqs',
      );
    const { q: qType, out: outType } = this.spec.dtype;
    const rowElems = this.spec.heads.q * this.spec.headDim;
    this.#checkData('q', q, qType, ioSeqs.length * rowElems);
    const result =
      out ??
      (outType === 'f32'
        ? new Float32Array(ioSeqs.length * rowElems)
        : new Uint16Array(ioSeqs.length * rowElems));
    this.#checkData('out', result, outType, ioSeqs.length * rowElems);
    for (const seq of ioSeqs) if (!this.cache.has(seq)) throw new UnknownSequenceError(seq);

    // Plan once per step: every layer passes the same packed context (uploaded once); only the
    // requested rows are computed.
    const packed = this.#planner.plan(this.context(), ioSeqs);
    return {
      pool,
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

  /** The kernel context of the current tree for this runtime's mode (cached while the shape holds). */
  context(): KernelContext {
    return this.cache.context({ minSharers: MIN_SHARERS[this.mode], maxRunChunks: this.#maxRunChunks });
  }

  release(seq: number): void {
    this.#checkOpen();
    this.cache.release(seq);
    this.#pending = null;
  }

  stats(): AttentionStats {
    return { ...this.cache.stats(this.kvShape), kernel: this.module.stats() };
  }

  /** Frees the pools. The object is unusable afterwards. */
  close(): void {
    if (this.#closed) return;
    if (this.#inFlight) throw new BusyError('close: a decodeAsync is in flight; await it first');
    this.#closed = true;
    for (const pool of this.#pools) this.module.free(pool);
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
  }
}
