// Measurement: one interface, three timers.
//
//   cpu    the cpu target, timed for real: a decode over a prefix-shared workload through the
//          Attention runtime, host clock around each call (the call returns when done);
//   cuda   the same workload through the same runtime on a GPU, timed by CUDA events around
//          each call: the module's timing entry points (abi.h ca_event_*, `moduleEvents`), or
//          events injected in tests. On an emu module the same entry points read the host
//          clock: emulator wall time, labelled so (`Timing.clock`), never a GPU time;
//   model  the static performance model for a GPU that is not present (model.ts) on our kernels'
//          counted step (counted-step.ts, the path `bench model` uses): a prediction, never
//          reported as a measurement.
//
// A measured candidate is checked against the float64 reference (NaN-poisoned output, fresh
// random inputs per shape) before it may win: a wrong kernel is rejected, however fast.

import { buildModule } from '../codegen/index.ts';
import { variantFunctions } from '../dsl/evaluate.ts';
import type { BuildTarget, KernelSpec } from '../dsl/spec.ts';
import { Attention } from '../runtime/attention.ts';
import { DEFAULT_MIN_SHARERS, type DispatchRules, tunablesId } from '../runtime/dispatch.ts';
import { fromHost, toHost } from '../runtime/half.ts';
import type { ModuleLoader } from '../runtime/module-loader.ts';
import type { HostData, NativeModule, TimingEvent } from '../runtime/native-module.ts';
import { referenceDecode, relativeError, TOLERANCE } from '../runtime/reference.ts';
import { type CountedSource, compiledSource, countedSteps } from './counted-step.ts';
import type { DecodeStepShape, StepCounts } from './emu-counts.ts';
import type { GpuSpec } from './gpus.ts';
import { predict } from './model.ts';
import { constantsFor, type ModelParams } from './model-params.ts';
import type { CtasPerSm } from './our-kernels.ts';
import type { Candidate } from './space.ts';

/** One decode shape to tune: `batch` rows sharing a prefix of `sharedTokens`, each with its own tail. */
export interface TuneShape {
  readonly batch: number;
  readonly sharedTokens: number;
  readonly privateTokens: number;
}

export interface Timing {
  /** Median µs per decode call. */
  readonly us: number;
  readonly samplesUs: readonly number[];
  /** Relative error against float64 (measured timers); null for the model. */
  readonly maxError: number | null;
  /** Whether the result is a prediction (model) rather than a measurement. */
  readonly predicted: boolean;
  /** Resident CTAs per SM of each launch (GPU timers), e.g. `phase1 2/SM, phase2 8/SM`. */
  readonly occupancy?: string;
  /**
   * What read the time: `host clock` (cpu), `cuda-events` (GPU time), `emu-host-clock`
   * (emulator wall time: not a GPU time), `injected events` (tests), `model` (a prediction).
   */
  readonly clock?: string;
}

export class WrongResultError extends Error {
  override name = 'WrongResultError';
}

export interface Timer {
  readonly kind: 'cpu' | 'cuda' | 'model';
  /** Times one candidate on one shape (measured timers build it first, cached by content). */
  time(candidate: Candidate, shape: TuneShape): Promise<Timing>;
  /** Frees what the timer holds. */
  close(): void;
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

// --- the measured timers (cpu, cuda) -------------------------------------------------------------

/** How a measured timer reads time around one decode call. */
export interface Clock {
  readonly kind: 'cpu' | 'cuda';
  /** µs that `run` took on the module's device. */
  time(module: NativeModule, run: () => void): number;
  /** What the time is (Timing.clock). */
  label(module: NativeModule): string;
}

/** The host clock: the cpu target's decode returns when the work is done. */
export const hostClock: Clock = {
  kind: 'cpu',
  label: () => 'host clock',
  time: (_module, run) => {
    const start = performance.now();
    run();
    return (performance.now() - start) * 1000;
  },
};

/** CUDA events on a module's stream (create, record, wait, elapsed), as cudaEvent* provide them. */
export interface DeviceEvents {
  create(module: NativeModule): unknown;
  record(module: NativeModule, event: unknown): void;
  synchronize(module: NativeModule, event: unknown): void;
  elapsedMs(module: NativeModule, start: unknown, stop: unknown): number;
  destroy(module: NativeModule, event: unknown): void;
  /** What the events measure (Timing.clock). */
  clock(module: NativeModule): string;
}

/**
 * The module's own timing entry points (abi.h ca_event_*, through the addon): cudaEvent* on a
 * cuda module, the host clock on an emu module (`emu-host-clock`: emulator wall time).
 */
export const moduleEvents: DeviceEvents = {
  create: (module) => module.createEvent(),
  record: (module, event) => module.recordEvent(event as TimingEvent),
  synchronize: (module, event) => module.synchronizeEvent(event as TimingEvent),
  elapsedMs: (module, start, stop) => module.elapsedMs(start as TimingEvent, stop as TimingEvent),
  destroy: (module, event) => module.destroyEvent(event as TimingEvent),
  clock: (module) => module.eventClock,
};

/** Events recorded before and after each call on the module's stream; the elapsed time between. */
export function cudaEventClock(events: DeviceEvents = moduleEvents): Clock {
  return {
    kind: 'cuda',
    label: (module) => events.clock(module),
    time: (module, run) => {
      const start = events.create(module);
      const stop = events.create(module);
      try {
        events.record(module, start);
        run();
        events.record(module, stop);
        events.synchronize(module, stop);
        return events.elapsedMs(module, start, stop) * 1000;
      } finally {
        events.destroy(module, start);
        events.destroy(module, stop);
      }
    },
  };
}

export interface MeasuredTimerOptions {
  readonly spec: KernelSpec;
  readonly target: BuildTarget;
  readonly clock: Clock;
  /** Timed calls per candidate and shape (after one warm-up); default 7. */
  readonly reps?: number;
  /** Builds a candidate's module (default: codegen, cached by content). */
  readonly loader?: ModuleLoader;
  /** Random seed of the inputs (default: fixed). */
  readonly seed?: number;
}

/** xorshift32 in [-1, 1). */
function randoms(length: number, seed: number): Float32Array {
  let x = seed >>> 0 || 1;
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = ((x >>> 0) / 2 ** 32) * 2 - 1;
  }
  return out;
}

/** Inputs of one shape, shared by every candidate: tokens, K/V, q, and the float64 answer. */
interface Workload {
  readonly prompts: number[][];
  /** The shared prefix's K/V [sharedTokens, Hkv, D], dtype-rounded (stored once). */
  readonly sharedK: Float32Array;
  readonly sharedV: Float32Array;
  /** Each row's own K/V [privateTokens + 1, Hkv, D]: its tail, then the decode step's token. */
  readonly own: { k: Float32Array; v: Float32Array }[];
  readonly q: Float32Array; // [batch, Hq, D], dtype-rounded
  readonly expected: Float64Array;
}

const concat = (a: Float32Array, b: Float32Array) => {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
};

/** The cpu and cuda timers: a real decode over the runtime, checked against float64. */
export class MeasuredTimer implements Timer {
  readonly kind: 'cpu' | 'cuda';
  readonly #options: MeasuredTimerOptions;
  readonly #workloads = new Map<string, Workload>();
  readonly #open: Attention[] = [];

  constructor(options: MeasuredTimerOptions) {
    this.kind = options.clock.kind;
    this.#options = options;
  }

  #workload(shape: TuneShape): Workload {
    const key = `${shape.batch}/${shape.sharedTokens}/${shape.privateTokens}`;
    const known = this.#workloads.get(key);
    if (known) return known;
    const { spec } = this.#options;
    const seed = this.#options.seed ?? 0x7a11;
    const kvElems = spec.heads.kv * spec.headDim;
    const qElems = spec.heads.q * spec.headDim;
    const round = (x: Float32Array, dtype: 'f16' | 'bf16' | 'f32') => fromHost(toHost(x, dtype), dtype);
    const shared = Array.from({ length: shape.sharedTokens }, (_, i) => 1 + (i % 1000));
    const sharedK = round(randoms(shape.sharedTokens * kvElems, seed), spec.dtype.kv);
    const sharedV = round(randoms(shape.sharedTokens * kvElems, seed + 1), spec.dtype.kv);
    const q = round(randoms(shape.batch * qElems, seed + 3), spec.dtype.q);
    const refShape = {
      qHeads: spec.heads.q,
      kvHeads: spec.heads.kv,
      headDim: spec.headDim,
      softmaxScale: spec.softmaxScale,
    };
    const variant = variantFunctions(spec);
    const length = shape.sharedTokens + shape.privateTokens + 1;
    const prompts: number[][] = [];
    const own: { k: Float32Array; v: Float32Array }[] = [];
    const expected = new Float64Array(shape.batch * qElems);
    for (let b = 0; b < shape.batch; b++) {
      prompts.push([
        ...shared,
        ...Array.from({ length: shape.privateTokens }, (_, i) => 2000 + b * 7919 + i),
      ]);
      const tail = (shape.privateTokens + 1) * kvElems;
      const k = round(randoms(tail, seed + 10 + 2 * b), spec.dtype.kv);
      const v = round(randoms(tail, seed + 11 + 2 * b), spec.dtype.kv);
      own.push({ k, v });
      // One row at a time, so only one row's whole K/V is ever held.
      const [reference] = referenceDecode(
        refShape,
        [
          {
            seq: b,
            q: q.subarray(b * qElems, (b + 1) * qElems),
            k: concat(sharedK, k),
            v: concat(sharedV, v),
            length,
          },
        ],
        variant,
      );
      expected.set(reference!, b * qElems);
    }
    const workload = { prompts, sharedK, sharedV, own, q, expected };
    this.#workloads.set(key, workload);
    return workload;
  }

  async time(candidate: Candidate, shape: TuneShape): Promise<Timing> {
    const { spec, target, clock } = this.#options;
    const loader: ModuleLoader =
      this.#options.loader ??
      ((s, t, tunables) => buildModule(s, { target: t, ...(tunables && { tunables }) }));
    const work = this.#workload(shape);
    const tokens = shape.batch * (shape.privateTokens + 1) + shape.sharedTokens;
    // The candidate's instance and threshold, pinned for every call (no DB in the way).
    const rules: DispatchRules = {
      instances: [candidate.kernel],
      bucket: () => 'tuning',
      choose: () => ({
        kernel: candidate.kernel,
        minSharers: candidate.minSharers,
        reason: `tuning ${candidate.id}`,
      }),
    };
    const attn = await Attention.create(spec, {
      layers: 1,
      capacityTokens: tokens + spec.chunkSize * (shape.batch + 1),
      target,
      mode: 'two-phase',
      loader,
      dispatch: async () => rules,
    });
    this.#open.push(attn);
    const kvElems = spec.heads.kv * spec.headDim;
    const seqs: number[] = [];
    for (const [b, prompt] of work.prompts.entries()) {
      const { seq, matchedTokens } = attn.insert(prompt);
      const own = work.own[b]!;
      // Tokens [matchedTokens, prompt.length): the shared prefix's rest (first row only), then its own.
      const from = matchedTokens * kvElems;
      const ownEnd = shape.privateTokens * kvElems;
      const pick = (shared: Float32Array, mine: Float32Array) =>
        from >= shared.length
          ? mine.subarray(from - shared.length, ownEnd)
          : concat(shared.subarray(from), mine.subarray(0, ownEnd));
      attn.writeKV(
        0,
        seq,
        matchedTokens,
        toHost(pick(work.sharedK, own.k), spec.dtype.kv),
        toHost(pick(work.sharedV, own.v), spec.dtype.kv),
      );
      seqs.push(seq);
    }
    attn.appendStep(
      seqs,
      seqs.map(() => 1),
    );
    const stepK = new Float32Array(shape.batch * kvElems);
    const stepV = new Float32Array(shape.batch * kvElems);
    work.own.forEach(({ k, v }, b) => {
      stepK.set(k.subarray(k.length - kvElems), b * kvElems);
      stepV.set(v.subarray(v.length - kvElems), b * kvElems);
    });
    attn.writeDecodeKV(0, toHost(stepK, spec.dtype.kv), toHost(stepV, spec.dtype.kv));

    const q = toHost(work.q, spec.dtype.q);
    const elements = work.q.length;
    const poisoned = (): HostData =>
      spec.dtype.out === 'f32'
        ? new Float32Array(elements).fill(Number.NaN)
        : new Uint16Array(elements).fill(spec.dtype.out === 'f16' ? 0x7e00 : 0x7fc0);
    // Which module the dispatcher runs: the candidate's instance.
    const { module } = attn.dispatcher.pick({ batch: shape.batch, sharedTokens: shape.sharedTokens });
    let out = poisoned();
    attn.decode(0, q, out); // warm-up, and the check
    const error = relativeError(fromHost(out as Float32Array | Uint16Array, spec.dtype.out), work.expected);
    const dtypes = [spec.dtype.q, spec.dtype.kv, spec.dtype.out];
    const tolerance = dtypes.includes('bf16')
      ? TOLERANCE.bf16
      : dtypes.includes('f16')
        ? TOLERANCE.f16
        : TOLERANCE.f32;
    if (!(error <= tolerance)) {
      this.#close(attn);
      throw new WrongResultError(
        `${candidate.id}: relative error ${error} against float64 exceeds ${tolerance}: rejected`,
      );
    }
    const samplesUs: number[] = [];
    for (let rep = 0; rep < (this.#options.reps ?? 7); rep++) {
      out = poisoned();
      samplesUs.push(clock.time(module, () => attn.decode(0, q, out)));
    }
    const clockLabel = clock.label(module);
    this.#close(attn);
    return { us: median(samplesUs), samplesUs, maxError: error, predicted: false, clock: clockLabel };
  }

  #close(attn: Attention): void {
    attn.close();
    const i = this.#open.indexOf(attn);
    if (i >= 0) this.#open.splice(i, 1);
  }

  close(): void {
    for (const attn of this.#open.splice(0)) attn.close();
  }
}

/**
 * The cuda timer: the workload on `target` (cuda on a GPU; emu runs the same source and entry
 * points on the host, timed as emulator wall time) with the module's events around each call.
 */
export function cudaEventTimer(
  options: Omit<MeasuredTimerOptions, 'clock'> & { readonly events?: DeviceEvents },
): MeasuredTimer {
  return new MeasuredTimer({ ...options, clock: cudaEventClock(options.events ?? moduleEvents) });
}

// --- the model timer ------------------------------------------------------------------------------

/**
 * The static model on a GPU that is not here, on the candidate's instance: its decode step
 * counted on the emulator and its ptxas resources for the GPU's arch (counted-step.ts, the path
 * `bench model` takes), with the candidate's threshold deciding whether the shared prefix runs
 * in phase 1 or every row reads it itself. Shared tokens must be whole chunks.
 */
export class ModelTimer implements Timer {
  readonly kind = 'model' as const;
  readonly #source: CountedSource;
  readonly #memo: Map<string, StepCounts>;
  readonly #countFor: readonly GpuSpec[];
  readonly #occupancy = new Map<string, Promise<ReadonlyMap<string, CtasPerSm>>>();

  /**
   * `countFor`: GPUs whose steps should share one emulation (the fewest KV heads that launch
   * every one's split factors, when there is such a count), with `memo` shared by their timers:
   * a tuner over many GPUs then emulates each step once. Default: this GPU alone.
   */
  constructor(
    readonly gpu: GpuSpec,
    readonly spec: KernelSpec,
    readonly params: ModelParams,
    options: {
      readonly source?: CountedSource;
      readonly countFor?: readonly GpuSpec[];
      readonly memo?: Map<string, StepCounts>;
    } = {},
  ) {
    this.#source = options.source ?? compiledSource;
    this.#memo = options.memo ?? new Map();
    this.#countFor = options.countFor ?? [];
  }

  /** CTAs per SM of the instance's decode kernels on this GPU (one build per instance). */
  #ctasPerSm(candidate: Candidate): Promise<ReadonlyMap<string, CtasPerSm>> {
    const id = tunablesId(candidate.kernel);
    let known = this.#occupancy.get(id);
    if (!known) {
      known = this.#source.occupancy(this.spec, candidate.kernel, [this.gpu]);
      this.#occupancy.set(id, known);
    }
    return known;
  }

  async time(candidate: Candidate, shape: TuneShape): Promise<Timing> {
    const { spec, gpu } = this;
    // The threshold matters only where it changes whether the prefix is a run: else the step is
    // the defaults' (and counted once).
    const runs = (minSharers: number) => shape.sharedTokens > 0 && shape.batch >= minSharers;
    const step: DecodeStepShape = {
      batch: shape.batch,
      sharedTokens: shape.sharedTokens,
      privateTokens: shape.privateTokens + 1, // the tail, then the decoded token
      ...(runs(candidate.minSharers) !== runs(DEFAULT_MIN_SHARERS) && { minSharers: candidate.minSharers }),
    };
    const steps = await countedSteps(spec, [gpu], step, {
      tunables: candidate.kernel,
      source: this.#source,
      occupancy: await this.#ctasPerSm(candidate),
      memo: this.#memo,
      shareHeadsWith: this.#countFor,
    });
    const counted = steps.get(gpu.id)!;
    const us = predict(
      gpu,
      counted.launches,
      constantsFor(gpu, this.params.fitted, this.params.dramLatencyUs),
    ).us;
    const occupancy = counted.launches
      .filter((l) => l.blocks.length > 0)
      .map((l) => `${l.kernel.replace(/^decode_/, '')} ${l.ctasPerSm}/SM`)
      .join(', ');
    return { us, samplesUs: [us], maxError: null, predicted: true, occupancy, clock: 'model' };
  }

  close(): void {}
}
