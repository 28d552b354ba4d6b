// Runtime dispatch: which tuned kernel instance, and which two-phase threshold, each decode call
// runs. The rules come from the tuning DB (autotune/dispatch.ts, registered by the package entry
// like the module loader); this file holds what the runtime does with them:
//
// - every kernel instance the rules can choose is built and loaded at create (never on the hot
//   path) and linked to the primary module's memory, so it decodes over the same pools;
// - per decode call the shape (requested rows, shared prefix tokens) selects a bucket; the choice
//   is cached per bucket, so a call costs one Map lookup after the first of its bucket;
// - CHUNKATTN_LOG=dispatch (a comma-separated list may name more) writes each bucket's decision
//   once to stderr;
// - CHUNKATTN_TWO_PHASE=0 is a kill switch: every call runs sequence-first (no shared runs, no
//   phase 1) on the primary module, whatever the spec, the mode or the DB say.

import type { BuildTarget, KernelSpec, Partition } from '../dsl/spec.ts';
import type { ModuleLoader } from './module-loader.ts';
import { NativeModule } from './native-module.ts';
import type { PrefixTree } from './prefix-tree.ts';

/** Kernel tunables of one instance (build-time values); {} is the module built with defaults. */
export type KernelTunables = Readonly<Record<string, number>>;

/** The runtime tunable the DB carries beside the kernel's: the two-phase threshold. */
export const MIN_SHARERS_TUNABLE = 'min_sharers';
/** Values the tuner tries for it (the default, 2, is the paper's "shared by ≥ 2"). */
export const MIN_SHARERS_VALUES: readonly number[] = [2, 3, 4, 8, 16, 32];
export const DEFAULT_MIN_SHARERS = 2;

/** What a decode call looks like to the dispatcher. */
export interface DispatchShape {
  /** Rows the call computes (requested sequences). */
  readonly batch: number;
  /** The longest prefix (tokens, whole chunks) a requested row shares with another live sequence. */
  readonly sharedTokens: number;
}

export interface DispatchChoice {
  /** The instance to run. */
  readonly kernel: KernelTunables;
  /** Two-phase threshold: a chunk run is a phase-1 run when at least this many rows share it. */
  readonly minSharers: number;
  /** Why, for the log: the DB entry's key and source, or that none matched. */
  readonly reason: string;
}

/** What the tuner knows for one spec on one target. */
export interface DispatchRules {
  /** Every instance `choose` can return (built at create). */
  readonly instances: readonly KernelTunables[];
  /** The bucket of a shape: choices are cached and logged per bucket. */
  bucket(shape: DispatchShape): string;
  choose(shape: DispatchShape): DispatchChoice;
}

/** Finds the rules for a spec on a target (null: no DB, run the defaults). */
export type DispatchRulesSource = (spec: KernelSpec, target: BuildTarget) => Promise<DispatchRules | null>;

let defaultRules: DispatchRulesSource | undefined;

/** The package entry registers autotune's DB-backed rules here (runtime never imports autotune). */
export function setDefaultDispatchRules(source: DispatchRulesSource | undefined): void {
  defaultRules = source;
}

export function resolveDispatchRules(
  source: DispatchRulesSource | undefined,
): DispatchRulesSource | undefined {
  return source ?? defaultRules;
}

/** Whether CHUNKATTN_TWO_PHASE=0 (or false/off/no) asks for sequence-first everywhere. */
export function twoPhaseKilled(env: NodeJS.ProcessEnv = process.env): boolean {
  const value = env['CHUNKATTN_TWO_PHASE']?.trim().toLowerCase();
  return value === '0' || value === 'false' || value === 'off' || value === 'no';
}

/** Whether CHUNKATTN_LOG names `topic` (comma-separated, or `all`). */
export function logEnabled(topic: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const topics = (env['CHUNKATTN_LOG'] ?? '').split(',').map((t) => t.trim().toLowerCase());
  return topics.includes(topic) || topics.includes('all');
}

/** A stable id of a tunable set (sorted names), for the instance map and the log. */
export function tunablesId(tunables: KernelTunables): string {
  const names = Object.keys(tunables).sort();
  return names.length === 0 ? 'defaults' : names.map((n) => `${n}=${tunables[n]}`).join(',');
}

/**
 * The longest shared prefix, in tokens, of the given sequences: leading chunks with more than one
 * live sequence through them. O(rows × chunks); computed once per step.
 */
export function sharedPrefixTokens(tree: PrefixTree, seqs: ArrayLike<number>): number {
  let most = 0;
  for (let i = 0; i < seqs.length; i++) {
    const chunks = tree.chunksOf(seqs[i]!);
    let shared = 0;
    while (shared < chunks.length && tree.chunkRefs(chunks[shared]!) > 1) shared++;
    if (shared > most) most = shared;
  }
  return most * tree.chunkSize;
}

export interface Dispatched {
  readonly module: NativeModule;
  readonly minSharers: number;
}

export interface DispatcherOptions {
  readonly primary: NativeModule;
  /** Loaded instances by tunablesId (the primary is added as 'defaults' when missing). */
  readonly instances: ReadonlyMap<string, NativeModule>;
  readonly rules: DispatchRules | null;
  /** The mode the caller asked for: only two-phase takes the DB's threshold. */
  readonly mode: Partition;
  readonly killSwitch: boolean;
  /** Where decisions are logged (null: not logged). */
  readonly log: ((line: string) => void) | null;
  /** For the log. */
  readonly name: string;
}

const FIXED_MIN_SHARERS: Record<Partition, number> = {
  'two-phase': DEFAULT_MIN_SHARERS,
  'sequence-first': Number.POSITIVE_INFINITY,
  'chunk-first': 1,
};

/** Per-call selection over prebuilt instances; decisions cached per bucket. */
export class Dispatcher {
  readonly #options: DispatcherOptions;
  readonly #decided = new Map<string, Dispatched>();
  readonly #fixed: Dispatched;

  constructor(options: DispatcherOptions) {
    this.#options = options;
    const mode = options.killSwitch ? 'sequence-first' : options.mode;
    this.#fixed = { module: options.primary, minSharers: FIXED_MIN_SHARERS[mode] };
  }

  /** The mode calls run in (sequence-first under the kill switch). */
  get mode(): Partition {
    return this.#options.killSwitch ? 'sequence-first' : this.#options.mode;
  }

  /** Every module a call may run on: the primary, then the prebuilt tuned instances. */
  modules(): NativeModule[] {
    const all = [this.#options.primary];
    for (const module of this.#options.instances.values()) if (module !== all[0]) all.push(module);
    return all;
  }

  /** Every decision made so far, by bucket (for tests and stats). */
  decisions(): ReadonlyMap<string, Dispatched> {
    return this.#decided;
  }

  pick(shape: DispatchShape): Dispatched {
    const { rules, killSwitch } = this.#options;
    if (killSwitch || !rules) {
      this.#logOnce(killSwitch ? 'kill-switch' : 'no-rules', shape, () =>
        killSwitch
          ? 'CHUNKATTN_TWO_PHASE=0: sequence-first, default instance'
          : 'no tuning DB: default instance and threshold',
      );
      return this.#fixed;
    }
    const bucket = rules.bucket(shape);
    const known = this.#decided.get(bucket);
    if (known) return known;
    const choice = rules.choose(shape);
    const id = tunablesId(choice.kernel);
    const module = this.#options.instances.get(id) ?? (id === 'defaults' ? this.#options.primary : undefined);
    // An instance the rules did not list is a bug in the rules; run the defaults rather than build.
    const chosen: Dispatched = {
      module: module ?? this.#options.primary,
      minSharers: this.#options.mode === 'two-phase' ? choice.minSharers : this.#fixed.minSharers,
    };
    this.#decided.set(bucket, chosen);
    this.#options.log?.(
      `chunkattn dispatch: ${this.#options.name} ${bucket} (b=${shape.batch}, shared=${shape.sharedTokens}) → ` +
        `${module ? id : `defaults (instance ${id} not built)`}, min_sharers=${chosen.minSharers}: ${choice.reason}`,
    );
    return chosen;
  }

  #loggedFixed = new Set<string>();
  #logOnce(kind: string, shape: DispatchShape, text: () => string): void {
    const log = this.#options.log;
    if (!log) return;
    const key = `${kind} b${shape.batch} s${shape.sharedTokens}`;
    if (this.#loggedFixed.has(key)) return;
    this.#loggedFixed.add(key);
    log(
      `chunkattn dispatch: ${this.#options.name} b=${shape.batch} shared=${shape.sharedTokens} → ${text()}`,
    );
  }
}

export interface PrepareOptions {
  readonly spec: KernelSpec;
  readonly primary: NativeModule;
  readonly mode: Partition;
  /** null: the module came prebuilt, so no other instance can be built (defaults only). */
  readonly loader: ModuleLoader | null;
  readonly dispatch?: DispatchRulesSource | false;
  /** Shapes to prebuild for (default: every instance the rules list). */
  readonly shapes?: readonly DispatchShape[];
  readonly env?: NodeJS.ProcessEnv;
}

/** Reads the rules, builds and loads every instance they may pick, and links it to the primary's memory. */
export async function prepareDispatch(options: PrepareOptions): Promise<Dispatcher> {
  const env = options.env ?? process.env;
  const killSwitch = twoPhaseKilled(env);
  const log = logEnabled('dispatch', env) ? (line: string) => process.stderr.write(`${line}\n`) : null;
  const target = options.primary.info.target;
  const source = options.dispatch === false ? undefined : resolveDispatchRules(options.dispatch);
  const rules = killSwitch || !source || !options.loader ? null : await source(options.spec, target);
  const instances = new Map<string, NativeModule>();
  if (rules && options.loader) {
    const wanted = options.shapes
      ? options.shapes.map((shape) => rules.choose(shape).kernel)
      : rules.instances;
    for (const tunables of wanted) {
      const id = tunablesId(tunables);
      if (id === 'defaults' || instances.has(id)) continue;
      const loadable = await options.loader(options.spec, target, tunables);
      const module = NativeModule.load(loadable.libraryPath);
      module.shareMemoryWith(options.primary);
      instances.set(id, module);
    }
    log?.(
      `chunkattn dispatch: ${options.spec.name} (${target}) prebuilt ${instances.size} tuned instance(s) besides the defaults: ${[...instances.keys()].join('; ') || '-'}`,
    );
  }
  return new Dispatcher({
    primary: options.primary,
    instances,
    rules,
    mode: options.mode,
    killSwitch,
    log,
    name: options.spec.name,
  });
}
