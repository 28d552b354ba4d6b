// The native addon (runtime/native) behind a typed API: load a compiled kernel module (a .so that
// exports the C ABI of templates/include/chunkattn/abi.h), allocate one layer's KV pools through
// it, scatter K/V, copy chunks, run decode.
//
// The addon validates every argument before it touches memory and throws errors with a stable
// `code`; this wrapper turns them into the typed errors of ./errors.ts (the `code` stays on the
// typed error):
//
//   ShapeError     ERR_CA_SHAPE (a length / layout), ERR_CA_DTYPE (wrong typed-array kind)
//   ArgumentError  ERR_CA_TYPE (not a number / not a pool), ERR_CA_RANGE (an index or count out of
//                  range), ERR_CA_CONTEXT (an inconsistent kernel context), ERR_CA_FREED (a freed
//                  pool), ERR_CA_FOREIGN (another module's pool), ERR_CA_UNSUPPORTED (runs given
//                  to a module without phase 1), ERR_CA_INVALID (the module itself rejected a call)
//   ModuleError    ERR_CA_LOAD, ERR_CA_ABI, ERR_CA_SYMBOL, ERR_CA_INFO, ERR_CA_ADDON (addon not built)
//   KernelError    ERR_CA_KERNEL (emu shim diagnostic), ERR_CA_DEVICE (CUDA error),
//                  ERR_CA_NO_MEMORY, ERR_CA_STATUS — with .kernel / .location parsed from the
//                  module's ca_last_error() text when it names them
//   BusyError      ERR_CA_BUSY (a decodeAsync of the same handle is in flight)
//   ReservedCapacityError  ERR_CA_CAPACITY (a call needs more scratch than reserve() set)
//
// Host arrays: f32 data is a Float32Array, f16/bf16 data a Uint16Array of raw bits; indices are
// Int32Array. Every target is driven alike (module memory is device memory on cuda, host memory on
// cpu/emu): host q/out/k/v are staged through buffers kept per module in one copy each, a
// DeviceTensor is used in place, and the packed context is uploaded only when its bytes differ
// from the last upload (once per step, not per layer).

import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import type { ScratchBounds } from './capacity.ts';
import {
  ArgumentError,
  BusyError,
  type ChunkattnError,
  KernelError,
  ModuleError,
  ReservedCapacityError,
  ShapeError,
} from './errors.ts';
import { findNativeAddon, NATIVE_DIR } from './native-status.ts';

export type ModuleTarget = 'cpu' | 'emu' | 'cuda';
export type ModuleDType = 'f16' | 'bf16' | 'f32';

/** What a module says about itself (its ca_info() JSON). */
export interface ModuleInfo {
  readonly abi: number;
  readonly name: string;
  /** Cache key / spec hash of the build ('' when the module does not say). */
  readonly key: string;
  readonly target: ModuleTarget;
  readonly archs: readonly string[];
  readonly qHeads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly chunkSize: number;
  readonly dtype: { readonly q: ModuleDType; readonly kv: ModuleDType; readonly out: ModuleDType };
  readonly numParams: number;
  /** Whether the module has a phase-1 kernel (accepts shared runs). */
  readonly phase1: boolean;
  /** The whole ca_info() document, including fields not listed above. */
  readonly raw: Readonly<Record<string, unknown>>;
}

/** f32 data: Float32Array; f16/bf16 data: Uint16Array of raw bits. */
export type HostData = Float32Array | Uint16Array;

/** A tensor argument: a host typed array, or a DeviceTensor already in module memory. */
export type TensorData = HostData | DeviceTensor;

export interface DecodeArgs {
  /** [numIoRows, qHeads, headDim] in dtype.q (numIoRows comes from the context). */
  readonly q: TensorData;
  /** [numIoRows, qHeads, headDim] in dtype.out; io rows no request names are left untouched. */
  readonly out: TensorData;
  /** The packed kernel context (packContext in runtime/kernel-context.ts). */
  readonly context: Int32Array;
  /** The spec's scalar parameters, in order ([numParams]; may be omitted when there are none). */
  readonly params?: Float32Array;
  readonly softmaxScale: number;
  /** cpu target: worker threads, 0 (default) = all cores. */
  readonly numThreads?: number;
}

export type TrafficCategory = 'q' | 'kv' | 'partial' | 'out' | 'context';
export type CopyDirection = 'h2d' | 'd2h' | 'd2d';

/**
 * One kernel's launches and how a GPU would serve its memory instructions, counted in the emu
 * target (zeros elsewhere, launches on cuda too): shared-memory wavefronts of its warp-wide
 * shared accesses, and the 32-byte sectors its warp-wide global accesses touch against the bytes
 * they request, per traffic category.
 */
export interface KernelFigures {
  readonly launches: number;
  /** CTAs (cuda/emu) or tasks (cpu) launched. */
  readonly blocks: number;
  readonly smemInstructions: number;
  readonly smemWavefronts: number;
  readonly smemBytes: number;
  readonly globalInstructions: number;
  readonly sectors: Readonly<Record<TrafficCategory, number>>;
  readonly requestedBytes: Readonly<Record<TrafficCategory, number>>;
}

/**
 * What the module issued since the last reset. Every target counts copies and launches as the
 * cuda target issues them; only emu counts the bytes kernels move (bytesRead / bytesWritten).
 */
export interface KernelStats {
  readonly bytesRead: Readonly<Record<TrafficCategory, number>>;
  readonly bytesWritten: Readonly<Record<TrafficCategory, number>>;
  readonly launches: number;
  readonly memcpy: Readonly<Record<CopyDirection, { readonly calls: number; readonly bytes: number }>>;
  /** Packed contexts uploaded (each also counts as one h2d copy). */
  readonly contextUploads: number;
  /**
   * ca_malloc calls this module handle made for scratch (context, workspace, params, staging) and
   * their bytes: growth on demand, or reserve(). After reserve, calls within it add none.
   */
  readonly scratchAllocations: { readonly calls: number; readonly bytes: number };
  /** Per kernel name, since the last reset (ca_kernel_stats): launches, blocks and the emu shim's figures. */
  readonly kernels: Readonly<Record<string, KernelFigures>>;
}

const noBytes: Readonly<Record<TrafficCategory, number>> = { q: 0, kv: 0, partial: 0, out: 0, context: 0 };

function addBytes(
  a: Readonly<Record<TrafficCategory, number>>,
  b: Readonly<Record<TrafficCategory, number>>,
): Record<TrafficCategory, number> {
  return {
    q: a.q + b.q,
    kv: a.kv + b.kv,
    partial: a.partial + b.partial,
    out: a.out + b.out,
    context: a.context + b.context,
  };
}

function addFigures(a: KernelFigures, b: KernelFigures): KernelFigures {
  return {
    launches: a.launches + b.launches,
    blocks: a.blocks + b.blocks,
    smemInstructions: a.smemInstructions + b.smemInstructions,
    smemWavefronts: a.smemWavefronts + b.smemWavefronts,
    smemBytes: a.smemBytes + b.smemBytes,
    globalInstructions: a.globalInstructions + b.globalInstructions,
    sectors: addBytes(a.sectors, b.sectors),
    requestedBytes: addBytes(a.requestedBytes, b.requestedBytes),
  };
}

/**
 * The sum of several modules' stats (a runtime whose decode calls dispatch over several built
 * instances). Each module library counts only what it issued itself, so the caller passes each
 * library once (a handle loaded twice from one path shares its library's counters).
 */
export function sumKernelStats(stats: readonly KernelStats[]): KernelStats {
  const [first, ...rest] = stats;
  if (!first) throw new RangeError('sumKernelStats: no stats');
  return rest.reduce<KernelStats>((a, b) => {
    const kernels: Record<string, KernelFigures> = { ...a.kernels };
    for (const [name, k] of Object.entries(b.kernels))
      kernels[name] = kernels[name] ? addFigures(kernels[name]!, k) : k;
    const memcpy = {} as Record<CopyDirection, { calls: number; bytes: number }>;
    for (const d of Object.keys(a.memcpy) as CopyDirection[])
      memcpy[d] = {
        calls: a.memcpy[d].calls + b.memcpy[d].calls,
        bytes: a.memcpy[d].bytes + b.memcpy[d].bytes,
      };
    return {
      bytesRead: addBytes(a.bytesRead, b.bytesRead),
      bytesWritten: addBytes(a.bytesWritten, b.bytesWritten),
      launches: a.launches + b.launches,
      memcpy,
      contextUploads: a.contextUploads + b.contextUploads,
      scratchAllocations: {
        calls: a.scratchAllocations.calls + b.scratchAllocations.calls,
        bytes: a.scratchAllocations.bytes + b.scratchAllocations.bytes,
      },
      kernels,
    };
  }, first);
}

function withMemoryFigures(k: Partial<KernelFigures>): KernelFigures {
  return {
    launches: k.launches ?? 0,
    blocks: k.blocks ?? 0,
    smemInstructions: k.smemInstructions ?? 0,
    smemWavefronts: k.smemWavefronts ?? 0,
    smemBytes: k.smemBytes ?? 0,
    globalInstructions: k.globalInstructions ?? 0,
    sectors: k.sectors ?? noBytes,
    requestedBytes: k.requestedBytes ?? noBytes,
  };
}

/** Sector efficiency of a kernel's global traffic in `category`: requested / (32 × sectors); 1 when none. */
export function sectorEfficiency(figures: KernelFigures, category: TrafficCategory): number {
  const sectors = figures.sectors[category];
  return sectors === 0 ? 1 : figures.requestedBytes[category] / (32 * sectors);
}

export type NativeErrorCode =
  | 'ERR_CA_SHAPE'
  | 'ERR_CA_DTYPE'
  | 'ERR_CA_TYPE'
  | 'ERR_CA_RANGE'
  | 'ERR_CA_CONTEXT'
  | 'ERR_CA_FREED'
  | 'ERR_CA_FOREIGN'
  | 'ERR_CA_UNSUPPORTED'
  | 'ERR_CA_INVALID'
  | 'ERR_CA_LOAD'
  | 'ERR_CA_ABI'
  | 'ERR_CA_SYMBOL'
  | 'ERR_CA_INFO'
  | 'ERR_CA_ADDON'
  | 'ERR_CA_KERNEL'
  | 'ERR_CA_DEVICE'
  | 'ERR_CA_NO_MEMORY'
  | 'ERR_CA_STATUS'
  | 'ERR_CA_BUSY'
  | 'ERR_CA_CAPACITY';

/** Which typed error each addon code becomes. */
export const NATIVE_ERROR_CLASSES: Readonly<
  Record<
    NativeErrorCode,
    'ShapeError' | 'ArgumentError' | 'ModuleError' | 'KernelError' | 'BusyError' | 'ReservedCapacityError'
  >
> = {
  ERR_CA_SHAPE: 'ShapeError',
  ERR_CA_DTYPE: 'ShapeError',
  ERR_CA_TYPE: 'ArgumentError',
  ERR_CA_RANGE: 'ArgumentError',
  ERR_CA_CONTEXT: 'ArgumentError',
  ERR_CA_FREED: 'ArgumentError',
  ERR_CA_FOREIGN: 'ArgumentError',
  ERR_CA_UNSUPPORTED: 'ArgumentError',
  ERR_CA_INVALID: 'ArgumentError',
  ERR_CA_LOAD: 'ModuleError',
  ERR_CA_ABI: 'ModuleError',
  ERR_CA_SYMBOL: 'ModuleError',
  ERR_CA_INFO: 'ModuleError',
  ERR_CA_ADDON: 'ModuleError',
  ERR_CA_KERNEL: 'KernelError',
  ERR_CA_DEVICE: 'KernelError',
  ERR_CA_NO_MEMORY: 'KernelError',
  ERR_CA_STATUS: 'KernelError',
  ERR_CA_BUSY: 'BusyError',
  ERR_CA_CAPACITY: 'ReservedCapacityError',
};

/** A typed error that came from the addon: its stable code and, for module failures, the module's text. */
export type NativeError = ChunkattnError & {
  readonly code: NativeErrorCode;
  readonly status?: number;
  readonly moduleMessage?: string;
};

// --- the addon --------------------------------------------------------------------------------

/** Opaque native handles. */
type NativeHandle = object;

interface NativeBuffers {
  readonly k: NativeHandle;
  readonly v: NativeHandle;
  readonly bytes: number;
}

interface NativeAddon {
  readonly abiVersion: number;
  load(path: string): NativeHandle;
  info(module: NativeHandle): Record<string, unknown>;
  path(module: NativeHandle): string;
  allocPool(module: NativeHandle, numSlots: number): NativeBuffers;
  freePool(module: NativeHandle, pool: KvPool): void;
  bufferState(buffer: NativeHandle): { bytes: number; freed: boolean; dtype: number };
  writeKv(module: NativeHandle, pool: KvPool, slots: unknown, offsets: unknown, k: unknown, v: unknown): void;
  copyChunk(module: NativeHandle, pool: KvPool, srcSlot: unknown, dstSlot: unknown, numTokens: unknown): void;
  copyChunks(module: NativeHandle, pool: KvPool, copies: unknown): void;
  allocTensor(module: NativeHandle, dtype: number, elements: unknown): NativeHandle;
  freeTensor(module: NativeHandle, tensor: NativeHandle): void;
  uploadTensor(module: NativeHandle, tensor: NativeHandle, data: unknown): void;
  downloadTensor(module: NativeHandle, tensor: NativeHandle): HostData;
  readPool(module: NativeHandle, pool: KvPool, slot: unknown): { k: HostData; v: HostData };
  shareMemory(module: NativeHandle, owner: NativeHandle): void;
  decode(module: NativeHandle, pool: KvPool, args: unknown): void;
  decodeAsync(module: NativeHandle, pool: KvPool, args: unknown): Promise<void>;
  workspaceBytes(module: NativeHandle, pool: KvPool, args: unknown): number;
  stats(module: NativeHandle): KernelStats;
  resetStats(module: NativeHandle): void;
  reserve(module: NativeHandle, bounds: ScratchBounds): void;
  hasEvents(module: NativeHandle): boolean;
  eventClock(module: NativeHandle): string;
  eventCreate(module: NativeHandle): NativeHandle;
  eventRecord(module: NativeHandle, event: unknown): void;
  eventSynchronize(module: NativeHandle, event: unknown): void;
  eventElapsedMs(module: NativeHandle, start: unknown, stop: unknown): number;
  eventDestroy(module: NativeHandle, event: unknown): void;
  hasPsa(module: NativeHandle): boolean;
  hasPsaKernels(module: NativeHandle): boolean;
  psaMeta(module: NativeHandle, pool: KvPool, meta: NativeHandle, slots: unknown): void;
  psaDecode(...a: [...NativePsaArgs, selectOnly?: boolean]): void;
  psaDecodeAsync(...a: NativePsaArgs): Promise<void>;
}

/**
 * psaDecode's arguments before selectOnly: config a Float64Array in runtime/psa-options.ts
 * order; lists [numRows, kvHeads, maxChunks] and counts [numRows, kvHeads] receive each (DFS
 * row, KV head)'s selection; guardAdded [numRows, kvHeads] what the guard added.
 */
export type PsaDecodeArgs = [
  pool: KvPool,
  args: DecodeArgs,
  meta: DeviceTensor,
  config: Float64Array,
  lists: Int32Array,
  counts: Int32Array,
  guardAdded?: Int32Array,
];

/** The addon's psaDecode / psaDecodeAsync arguments. */
type NativePsaArgs = [
  module: NativeHandle,
  pool: KvPool,
  args: unknown,
  meta: NativeHandle,
  config: unknown,
  lists: unknown,
  counts: unknown,
  guardAdded: unknown,
];

let addon: NativeAddon | undefined;

function withCode<E extends ChunkattnError>(error: E, code: NativeErrorCode): E {
  Object.defineProperty(error, 'code', { value: code, enumerable: true });
  return error;
}

/** The addon, loaded on first use. Throws ModuleError (ERR_CA_ADDON) when it is not built. */
export function nativeAddon(): NativeAddon {
  if (addon) return addon;
  const found = findNativeAddon();
  if (!found) {
    throw withCode(
      new ModuleError(
        `the chunkattn native addon has no binary for ${process.platform}-${process.arch} in ${NATIVE_DIR}: ` +
          'run `npm rebuild chunkattn` (or `npm ci` in a checkout) to build it from source; that needs g++ ' +
          'and the headers of the running Node (include/node beside its bin/)',
      ),
      'ERR_CA_ADDON',
    );
  }
  try {
    addon = createRequire(import.meta.url)(found.path) as NativeAddon;
  } catch (error) {
    throw withCode(
      new ModuleError(
        `cannot load the chunkattn native addon (${found.origin}) ${found.path}: ${(error as Error).message}; ` +
          'rebuild it with `npm rebuild chunkattn`',
      ),
      'ERR_CA_ADDON',
    );
  }
  return addon;
}

/** The C ABI version the addon speaks (CA_ABI_VERSION of abi.h when it was built). */
export function nativeAbiVersion(): number {
  return nativeAddon().abiVersion;
}

// --- errors -----------------------------------------------------------------------------------

/**
 * Kernel name and source location in a module's diagnostic, e.g. "phase2_kernel: block (1,0,0)
 * thread (3,0,0): divergent __syncthreads: ... waits at templates/.../phase2.cuh:88:7, ..." →
 * { kernel: 'phase2_kernel', location: 'templates/.../phase2.cuh:88:7' } (the first location named).
 */
export function parseKernelDiagnostic(text: string): { kernel?: string; location?: string } {
  const result: { kernel?: string; location?: string } = {};
  const location = /((?:[\w.+-]*\/)*[\w.+-]+\.(?:cuh|cu|cpp|cc|cxx|hpp|hh|h|c)):(\d+):(\d+)/.exec(text);
  if (location) result.location = `${location[1]}:${location[2]}:${location[3]}`;
  const kernel =
    /\bkernel\s+[`'"]?([A-Za-z_]\w*)/.exec(text) ??
    /^\s*([A-Za-z_]\w*)(?:<[^>]*>)?\s*:\s*(?:block|thread|grid)\s*\(/.exec(text) ??
    /\b([A-Za-z_]\w*_kernel\w*)\b/.exec(text) ??
    /\bin\s+([A-Za-z_]\w*)\s*(?:<<<|\()/.exec(text);
  if (kernel?.[1] && kernel[1] !== 'block' && kernel[1] !== 'thread') result.kernel = kernel[1];
  return result;
}

/** Turns an addon error (one with an ERR_CA_* code) into its typed error; anything else is returned as is. */
export function toTypedError(error: unknown): unknown {
  if (!(error instanceof Error)) return error;
  const code = (error as { code?: unknown }).code;
  if (typeof code !== 'string' || !Object.hasOwn(NATIVE_ERROR_CLASSES, code)) return error;
  const nativeCode = code as NativeErrorCode;
  const source = error as Error & { status?: number; moduleMessage?: string };
  let typed: ChunkattnError;
  switch (NATIVE_ERROR_CLASSES[nativeCode]) {
    case 'ShapeError':
      typed = new ShapeError(error.message);
      break;
    case 'ArgumentError':
      typed = new ArgumentError(error.message);
      break;
    case 'ModuleError':
      typed = new ModuleError(error.message);
      break;
    case 'BusyError':
      typed = new BusyError(error.message);
      break;
    case 'ReservedCapacityError':
      typed = new ReservedCapacityError(error.message);
      break;
    case 'KernelError': {
      const { kernel, location } = parseKernelDiagnostic(source.moduleMessage ?? error.message);
      typed = new KernelError(error.message, kernel, location);
      break;
    }
  }
  withCode(typed, nativeCode);
  if (source.status !== undefined)
    Object.defineProperty(typed, 'status', { value: source.status, enumerable: true });
  if (source.moduleMessage !== undefined) {
    Object.defineProperty(typed, 'moduleMessage', { value: source.moduleMessage, enumerable: true });
  }
  return typed;
}

function call<T>(f: () => T): T {
  try {
    return f();
  } catch (error) {
    throw toTypedError(error);
  }
}

// --- pools and modules ------------------------------------------------------------------------

/**
 * One layer's K and V pools: [numSlots, kvHeads, chunkSize, headDim] in dtype.kv each, zeroed at
 * allocation, in the module's memory (device memory on cuda). Free with NativeModule.free(); a pool
 * that is dropped without free() is released when it is garbage-collected.
 */
export class KvPool {
  /** @internal Use NativeModule.allocPool. */
  constructor(
    readonly module: NativeModule,
    readonly numSlots: number,
    readonly bytesPerSlot: number,
    /** Native handle of the K region (read by the addon). */
    readonly k: object,
    /** Native handle of the V region (read by the addon). */
    readonly v: object,
  ) {}

  /** Bytes of each of the two regions. */
  get bytes(): number {
    return this.numSlots * this.bytesPerSlot;
  }

  get freed(): boolean {
    return call(() => nativeAddon().bufferState(this.k).freed || nativeAddon().bufferState(this.v).freed);
  }
}

const DTYPE_CODES: Readonly<Record<ModuleDType, number>> = { f16: 0, bf16: 1, f32: 2 };

/**
 * A tensor in module memory (device memory on cuda), allocated through NativeModule.allocTensor:
 * q, out, k and v may stay here across layers with no host round trip. f32 holds floats, f16/bf16
 * raw bits (upload/download use Float32Array / Uint16Array like host data).
 */
export class DeviceTensor {
  /** @internal Use NativeModule.allocTensor. */
  constructor(
    readonly module: NativeModule,
    readonly dtype: ModuleDType,
    /** Elements. */
    readonly length: number,
    /** Native handle (read by the addon). */
    readonly handle: object,
  ) {}

  get freed(): boolean {
    return call(() => nativeAddon().bufferState(this.handle).freed);
  }
}

/** Decode arguments as the addon takes them (tensors as their handles). */
function nativeDecodeArgs(args: DecodeArgs): unknown {
  if (typeof args !== 'object' || args === null) return args;
  if (!(args.q instanceof DeviceTensor) && !(args.out instanceof DeviceTensor)) return args;
  return { ...args, q: nativeTensor(args.q), out: nativeTensor(args.out) };
}

/** A tensor argument as the addon takes it. */
function nativeTensor(data: unknown): unknown {
  return data instanceof DeviceTensor ? data.handle : data;
}

function normalizeInfo(raw: Record<string, unknown>): ModuleInfo {
  const dtype = raw['dtype'] as { q: ModuleDType; kv: ModuleDType; out: ModuleDType };
  const key =
    typeof raw['key'] === 'string' ? raw['key'] : typeof raw['specHash'] === 'string' ? raw['specHash'] : '';
  return Object.freeze({
    abi: raw['abi'] as number,
    name: raw['name'] as string,
    key,
    target: raw['target'] as ModuleTarget,
    archs: Object.freeze(Array.isArray(raw['archs']) ? [...(raw['archs'] as string[])] : []),
    qHeads: raw['qHeads'] as number,
    kvHeads: raw['kvHeads'] as number,
    headDim: raw['headDim'] as number,
    chunkSize: raw['chunkSize'] as number,
    dtype: Object.freeze({ q: dtype.q, kv: dtype.kv, out: dtype.out }),
    numParams: raw['numParams'] as number,
    phase1: raw['phase1'] as boolean,
    raw: Object.freeze(raw),
  });
}

/** What a module's timing events measure (abi.h ca_event_clock). */
export type EventClock = 'cuda-events' | 'emu-host-clock';

/** A timing event of one module (createEvent); opaque. */
export interface TimingEvent {
  readonly handle: object;
}

/** A loaded kernel module. The library stays mapped for the life of the process. */
export class NativeModule {
  readonly #handle: NativeHandle;
  readonly info: ModuleInfo;
  /** The path the module was loaded from (absolute). */
  readonly path: string;

  private constructor(handle: NativeHandle, path: string) {
    this.#handle = handle;
    this.path = path;
    this.info = normalizeInfo(call(() => nativeAddon().info(handle)));
  }

  /**
   * dlopens a module and checks it: ca_abi_version() == the addon's ABI, every ca_* symbol present,
   * ca_info() well-formed. ModuleError on any failure (missing file, not a module, ABI mismatch,
   * missing symbol, bad info).
   */
  static load(libraryPath: string): NativeModule {
    if (typeof libraryPath !== 'string' || libraryPath.length === 0) {
      throw withCode(
        new ModuleError(`module path must be a non-empty string, got ${String(libraryPath)}`),
        'ERR_CA_LOAD',
      );
    }
    const path = resolve(libraryPath);
    const handle = call(() => nativeAddon().load(path));
    return new NativeModule(handle, path);
  }

  /** Bytes of one slot of one pool: kvHeads × chunkSize × headDim × sizeof(dtype.kv). */
  get bytesPerSlot(): number {
    const { kvHeads, chunkSize, headDim, dtype } = this.info;
    return kvHeads * chunkSize * headDim * (dtype.kv === 'f32' ? 4 : 2);
  }

  /** K and V pools of one layer, numSlots chunks each, zeroed. */
  allocPool(numSlots: number): KvPool {
    const buffers = call(() => nativeAddon().allocPool(this.#handle, numSlots));
    return new KvPool(this, numSlots, buffers.bytes / numSlots, buffers.k, buffers.v);
  }

  /** Releases a pool's memory. Freeing twice (or using a freed pool) is an ArgumentError, never a crash. */
  free(pool: KvPool): void {
    call(() => nativeAddon().freePool(this.#handle, pool));
  }

  /**
   * Scatters new tokens into the pool: token i goes to (slots[i], offsets[i]). k, v: [n, kvHeads,
   * headDim], Float32Array or (when dtype.kv is f16/bf16) a Uint16Array of dtype.kv bits.
   */
  writeKv(pool: KvPool, slots: Int32Array, offsets: Int32Array, k: TensorData, v: TensorData): void {
    call(() => nativeAddon().writeKv(this.#handle, pool, slots, offsets, nativeTensor(k), nativeTensor(v)));
  }

  /** Copy-on-write of many chunks in one launch: copies [n * 3] {srcSlot, dstSlot, numTokens}. */
  copyChunks(pool: KvPool, copies: Int32Array): void {
    call(() => nativeAddon().copyChunks(this.#handle, pool, copies));
  }

  /** A zeroed tensor of `length` elements of `dtype` in module memory. */
  allocTensor(dtype: ModuleDType, length: number): DeviceTensor {
    const code = DTYPE_CODES[dtype];
    if (code === undefined)
      throw withCode(
        new ArgumentError(`dtype must be f16, bf16 or f32, got ${String(dtype)}`),
        'ERR_CA_TYPE',
      );
    const handle = call(() => nativeAddon().allocTensor(this.#handle, code, length));
    return new DeviceTensor(this, dtype, length, handle);
  }

  /** Copies host data (Float32Array for f32, Uint16Array bits otherwise) into the whole tensor. */
  upload(tensor: DeviceTensor, data: HostData): void {
    call(() => nativeAddon().uploadTensor(this.#handle, tensor.handle, data));
  }

  /** The tensor's contents as host data. */
  download(tensor: DeviceTensor): HostData {
    return call(() => nativeAddon().downloadTensor(this.#handle, tensor.handle));
  }

  freeTensor(tensor: DeviceTensor): void {
    call(() => nativeAddon().freeTensor(this.#handle, tensor.handle));
  }

  /** Copies the first numTokens tokens of slot srcSlot into slot dstSlot (K and V). */
  copyChunk(pool: KvPool, srcSlot: number, dstSlot: number, numTokens: number): void {
    call(() => nativeAddon().copyChunk(this.#handle, pool, srcSlot, dstSlot, numTokens));
  }

  /** One slot's K and V, [kvHeads, chunkSize, headDim] each, in dtype.kv (for tests and debugging). */
  readPool(pool: KvPool, slot: number): { k: HostData; v: HostData } {
    return call(() => nativeAddon().readPool(this.#handle, pool, slot));
  }

  /**
   * Lets this module's decode (sync or async) run over `owner`'s pools and DeviceTensors: another
   * tuned instance of the same kernel (runtime dispatch). Both must have the same target and
   * q/KV layout (ArgumentError ERR_CA_FOREIGN otherwise); allocation, writes and frees stay with
   * the owner. On cuda each decode first waits for the owner's stream.
   */
  shareMemoryWith(owner: NativeModule): void {
    call(() => nativeAddon().shareMemory(this.#handle, owner.#handle));
  }

  /** Decode attention for one layer: writes out[rowIo[r]] for every DFS row r. */
  decode(pool: KvPool, args: DecodeArgs): void {
    call(() => nativeAddon().decode(this.#handle, pool, nativeDecodeArgs(args)));
  }

  /**
   * decode on a worker thread: every check, the plan and the q upload happen now (errors throw
   * at once); the launch and the copy of out back run off the event loop. Until the promise
   * settles, every other call on this module handle throws BusyError (ERR_CA_BUSY); q and out
   * must not be touched.
   */
  decodeAsync(pool: KvPool, args: DecodeArgs): Promise<void> {
    const promise = call(() => nativeAddon().decodeAsync(this.#handle, pool, nativeDecodeArgs(args)));
    return promise.catch((error: unknown) => {
      throw toTypedError(error);
    });
  }

  /** The workspace this decode would need (validates args like decode). */
  workspaceBytes(pool: KvPool, args: DecodeArgs): number {
    return call(() => nativeAddon().workspaceBytes(this.#handle, pool, nativeDecodeArgs(args)));
  }

  /**
   * Whether the module decodes sparse through ca_psa_decode (chunkattn/psa_abi.h): every target
   * with PSA kernels (cpu, cuda, emu).
   */
  get hasPsa(): boolean {
    return call(() => nativeAddon().hasPsa(this.#handle));
  }

  /** Whether the module exports the PSA metadata and select kernels (cpu, cuda and emu). */
  get hasPsaKernels(): boolean {
    return call(() => nativeAddon().hasPsaKernels(this.#handle));
  }

  /**
   * PSA metadata of full chunks: meta[slot] (a DeviceTensor of dtype.kv, [numSlots, kvHeads, 4,
   * headDim]: mean, variance, min, max) for every listed slot, from the pool's K.
   */
  psaMeta(pool: KvPool, meta: DeviceTensor, slots: Int32Array): void {
    call(() => nativeAddon().psaMeta(this.#handle, pool, meta.handle, slots));
  }

  /**
   * Sparse decode (select, then two-phase decode over the selected chunks; see hasPsa). config: a Float64Array in runtime/psa-options.ts order; lists [numRows, kvHeads,
   * maxChunks] and counts [numRows, kvHeads] (Int32Array) receive each (DFS row, KV head)'s
   * selection. With `selectOnly` it runs the select alone and leaves `out` untouched: what every
   * target with PSA kernels runs (hasPsaKernels), cuda/emu included.
   */
  psaDecode(
    ...[pool, args, meta, config, lists, counts, guardAdded, selectOnly]: [
      ...PsaDecodeArgs,
      selectOnly?: boolean,
    ]
  ): void {
    call(() =>
      nativeAddon().psaDecode(
        ...this.#nativePsaArgs([pool, args, meta, config, lists, counts, guardAdded]),
        selectOnly ?? false,
      ),
    );
  }

  /**
   * psaDecode (not selectOnly) on a worker thread, with decodeAsync's rules: every check, the
   * plan and the q upload happen now (errors throw at once); the select, the decode and the
   * copies back run off the event loop. Until the promise settles every other call on this
   * module handle throws BusyError, and q, out, lists, counts and guardAdded must not be touched.
   */
  psaDecodeAsync(...a: PsaDecodeArgs): Promise<void> {
    const promise = call(() => nativeAddon().psaDecodeAsync(...this.#nativePsaArgs(a)));
    return promise.catch((error: unknown) => {
      throw toTypedError(error);
    });
  }

  #nativePsaArgs([pool, args, meta, config, lists, counts, guardAdded]: PsaDecodeArgs): NativePsaArgs {
    return [this.#handle, pool, nativeDecodeArgs(args), meta.handle, config, lists, counts, guardAdded];
  }

  /** Whether the module has timing events (abi.h ca_event_*): cuda and emu modules do, cpu ones not. */
  get hasEvents(): boolean {
    return call(() => nativeAddon().hasEvents(this.#handle));
  }

  /**
   * What an event measures: `cuda-events` (GPU time between records on the handle's stream) or
   * `emu-host-clock` (the emulator's wall time on the host: never a GPU time).
   */
  get eventClock(): EventClock {
    return call(() => nativeAddon().eventClock(this.#handle)) as EventClock;
  }

  /** A timing event of this module (ERR_CA_UNSUPPORTED on a module without events). */
  createEvent(): TimingEvent {
    return { handle: call(() => nativeAddon().eventCreate(this.#handle)) };
  }

  /** Records `event` on this handle's stream (after everything queued there so far). */
  recordEvent(event: TimingEvent): void {
    call(() => nativeAddon().eventRecord(this.#handle, event?.handle));
  }

  /** Waits until the work before `event`'s last record is done. */
  synchronizeEvent(event: TimingEvent): void {
    call(() => nativeAddon().eventSynchronize(this.#handle, event?.handle));
  }

  /** Milliseconds from `start` to `stop`: both recorded, `stop` synchronized since its record. */
  elapsedMs(start: TimingEvent, stop: TimingEvent): number {
    return call(() => nativeAddon().eventElapsedMs(this.#handle, start?.handle, stop?.handle));
  }

  destroyEvent(event: TimingEvent): void {
    call(() => nativeAddon().eventDestroy(this.#handle, event?.handle));
  }

  stats(): KernelStats {
    const stats = call(() => nativeAddon().stats(this.#handle));
    // The cpu target counts launches and blocks only: its kernels get zero memory figures.
    const kernels: Record<string, KernelFigures> = {};
    for (const [name, k] of Object.entries(stats.kernels)) kernels[name] = withMemoryFigures(k);
    return { ...stats, kernels };
  }

  resetStats(): void {
    call(() => nativeAddon().resetStats(this.#handle));
  }

  /**
   * Allocates every scratch buffer of this handle at the given bounds (runtime/capacity.ts
   * computes them), once. From then on no call allocates module memory for scratch (CUDA-graph
   * safe), and a call that needs more throws ReservedCapacityError (ERR_CA_CAPACITY) with nothing
   * done. Without reserve, scratch grows on demand.
   */
  reserve(bounds: ScratchBounds): void {
    call(() => nativeAddon().reserve(this.#handle, bounds));
  }
}
