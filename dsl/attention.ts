// `attention({...})`: validates a user's description and normalizes it into a KernelSpec: plain,
// deep-frozen, JSON-serializable data. Every field error is a DslError whose message starts with
// the field path and says what is allowed: `heads.kv: 5 does not divide heads.q: 32; allowed: ...`.

import { callSiteFromStack, captureStack, displayPath } from './call-site.ts';
import { irProblem } from './check-ir.ts';
import { exprToCpp } from './emit-cpp.ts';
import { DslError } from './errors.ts';
import { type ProgressiveOptions, validateSparse } from './sparse.ts';
import {
  CHUNK_SIZES,
  type ChunkSize,
  DTYPES,
  type DType,
  HEAD_DIMS,
  type HeadDim,
  type KernelSpec,
  MAX_HEADS,
  MAX_NAME_LENGTH,
  MAX_PARAMS,
  MAX_TUNABLE_VALUES,
  MAX_TUNABLES,
  PARTITIONS,
  type ParamSpec,
  type Partition,
  type Pos,
  type SourceLoc,
  TARGETS,
  type Target,
  type TunableSpec,
  type VariantFn,
} from './spec.ts';
import { translateVariant } from './translate.ts';

/** The named scalar parameters as score/mask functions see them. */
export type ParamValues<P> = { readonly [K in keyof P]: number };

export interface AttentionInput<P extends Record<string, number> = Record<never, number>> {
  /** Identifier-like: a letter, then letters, digits, `_` or `-`. */
  readonly name: string;
  /** Query and KV heads; `q % kv == 0` (MHA, GQA, MQA). */
  readonly heads: { readonly q: number; readonly kv: number };
  readonly headDim: HeadDim;
  /** One dtype for q, kv and out, or each separately. f32 only when every target is `cpu`. */
  readonly dtype: DType | { readonly q: DType; readonly kv: DType; readonly out: DType };
  /** Tokens per KV chunk (default 64). */
  readonly chunkSize?: ChunkSize;
  /** Default `two-phase`. */
  readonly partition?: Partition;
  /** Default 1/√headDim. */
  readonly softmaxScale?: number;
  /** Named scalar parameters and their defaults, passed to the kernel at run time. */
  readonly params?: P;
  /** Rewrites a score (already scaled). Translated to C++: see the DSL docs for what is allowed. */
  readonly scoreMod?: (score: number, pos: Pos, params: ParamValues<P>) => number;
  /** `true` keeps the (query, key) pair. Evaluated before any score function. */
  readonly mask?: (pos: Pos, params: ParamValues<P>) => boolean;
  /** Tuning knobs: candidate values and the default. */
  readonly tunables?: Readonly<
    Record<string, { readonly values: readonly number[]; readonly default: number }>
  >;
  /** Default ['sm_80', 'sm_90a', 'cpu']. */
  readonly targets?: readonly Target[];
  /** Progressive sparse attention: `progressive({ mass: 0.95, ... })` (dsl/sparse.ts). Default dense. */
  readonly sparse?: { readonly kind: 'progressive' } & ProgressiveOptions;
}

export const DEFAULT_TARGETS: readonly Target[] = ['sm_80', 'sm_90a', 'cpu'];
export const DEFAULT_CHUNK_SIZE: ChunkSize = 64;
export const DEFAULT_PARTITION: Partition = 'two-phase';

const FIELDS = [
  'name',
  'heads',
  'headDim',
  'dtype',
  'chunkSize',
  'partition',
  'softmaxScale',
  'params',
  'scoreMod',
  'mask',
  'tunables',
  'targets',
  'sparse',
] as const;

const NAME_RE = /^[A-Za-z][A-Za-z0-9_-]*$/;
const IDENT_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Brand of specs made by `attention()`: a non-enumerable, registry-wide symbol, invisible to JSON. */
const BRAND = Symbol.for('chunkattn.KernelSpec');

/** True for specs made by `attention()` or `withOverrides()` (in any copy of this module). */
export function isKernelSpec(value: unknown): value is KernelSpec {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
}

/** Describes an attention kernel. Throws DslError on any invalid field or unsupported function. */
export function attention<P extends Record<string, number> = Record<never, number>>(
  input: AttentionInput<P>,
): KernelSpec {
  return buildSpec(input, new Context(captureStack()));
}

// ── validation ───────────────────────────────────────────────────────────────

class Context {
  private site: SourceLoc | null | undefined;
  constructor(readonly stack: string | undefined) {}

  /** The `attention()` call site, for field errors (only when its position is known exactly). */
  loc(): SourceLoc | undefined {
    if (this.site === undefined) {
      const site = this.stack === undefined ? undefined : callSiteFromStack(this.stack);
      this.site = site?.exact ? { file: displayPath(site.file), line: site.line, column: site.column } : null;
    }
    return this.site ?? undefined;
  }

  fail(path: string, message: string, allowed?: string): never {
    const loc = this.loc();
    throw new DslError(`${path}: ${message}${allowed ? `; allowed: ${allowed}` : ''}`, {
      path,
      ...(loc ? { loc } : {}),
      ...(allowed ? { allowed } : {}),
    });
  }
}

/**
 * A value as written in messages: strings quoted, arrays bracketed, functions and objects named.
 * Long strings and arrays are cut, so a message never grows with a hostile input.
 */
export function show(value: unknown): string {
  if (typeof value === 'string')
    return value.length > 60 ? `'${value.slice(0, 40)}…' (${value.length} characters)` : `'${value}'`;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint')
    return String(value);
  if (value === undefined) return 'undefined';
  if (value === null) return 'null';
  if (typeof value === 'function') return 'a function';
  if (Array.isArray(value))
    return value.length > 8
      ? `[${value.slice(0, 8).map(show).join(', ')}, … ${value.length - 8} more]`
      : `[${value.map(show).join(', ')}]`;
  return 'an object';
}

/** An object literal (or Object.create(null)): not an array, class instance or function. */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!;
      row[j] = Math.min(above + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length]!;
}

/** The known field a typo most likely meant: same letters, a prefix, or 1-2 edits away. */
function closestField(key: string, known: readonly string[]): string | undefined {
  const lower = key.toLowerCase();
  const maxEdits = lower.length <= 3 ? 1 : 2;
  let best: { field: string; score: number } | undefined;
  for (const field of known) {
    const f = field.toLowerCase();
    const score =
      f === lower ? 0 : f.startsWith(lower) || lower.startsWith(f) ? 1 : 1 + editDistance(f, lower);
    if (score > 1 + maxEdits) continue;
    if (!best || score < best.score) best = { field, score };
  }
  return best?.field;
}

function checkKnownFields(
  ctx: Context,
  object: Record<string, unknown>,
  known: readonly string[],
  prefix: string,
) {
  for (const key of Object.keys(object)) {
    if (known.includes(key)) continue;
    const shown = key.length > 40 ? `${key.slice(0, 40)}…` : key;
    const close = key.length > 40 ? undefined : closestField(key, known);
    ctx.fail(
      `${prefix}${shown}`,
      `unknown field${close ? ` (did you mean ${close}?)` : ''}`,
      known.join(', '),
    );
  }
}

function requireField(
  ctx: Context,
  object: Record<string, unknown>,
  key: string,
  path: string,
  allowed: string,
) {
  if (object[key] === undefined) ctx.fail(path, 'missing', allowed);
  return object[key];
}

function oneOf<T extends string | number>(
  ctx: Context,
  value: unknown,
  allowed: readonly T[],
  path: string,
  what: string,
): T {
  if (!(allowed as readonly unknown[]).includes(value)) {
    ctx.fail(
      path,
      typeof value === 'number' ? `${show(value)} is not supported` : `${show(value)} is not ${what}`,
      allowed.join(', '),
    );
  }
  return value as T;
}

function positiveInteger(ctx: Context, value: unknown, path: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
    ctx.fail(path, `${show(value)} is not a positive integer`, 'a positive integer');
  }
  return value;
}

function finiteNumber(ctx: Context, value: unknown, path: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value))
    ctx.fail(path, `${show(value)} is not a finite number`, 'a finite number');
  return value;
}

interface Translated {
  readonly scoreMod: VariantFn | null;
  readonly mask: VariantFn | null;
}

/** Validates and normalizes; `translated` reuses already-translated functions (withOverrides). */
function buildSpec(input: unknown, ctx: Context, translated?: Translated): KernelSpec {
  if (!isPlainObject(input)) {
    ctx.fail(
      'attention',
      `expected an object { name, heads, headDim, dtype, ... }, got ${show(input)}`,
      FIELDS.join(', '),
    );
  }
  checkKnownFields(ctx, input, FIELDS, '');

  const name = requireField(ctx, input, 'name', 'name', 'a letter, then letters, digits, _ or -');
  if (typeof name === 'string' && name.length > MAX_NAME_LENGTH)
    ctx.fail(
      'name',
      `${show(name)} is longer than ${MAX_NAME_LENGTH} characters`,
      `at most ${MAX_NAME_LENGTH}`,
    );
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    ctx.fail('name', `${show(name)} is not a valid name`, 'a letter, then letters, digits, _ or -');
  }

  const headsInput = requireField(ctx, input, 'heads', 'heads', '{ q, kv } with q % kv == 0');
  if (!isPlainObject(headsInput))
    ctx.fail('heads', `expected { q, kv }, got ${show(headsInput)}`, '{ q, kv } with q % kv == 0');
  checkKnownFields(ctx, headsInput, ['q', 'kv'], 'heads.');
  const q = positiveInteger(
    ctx,
    requireField(ctx, headsInput, 'q', 'heads.q', 'a positive integer'),
    'heads.q',
  );
  const kv = positiveInteger(
    ctx,
    requireField(ctx, headsInput, 'kv', 'heads.kv', 'a divisor of heads.q'),
    'heads.kv',
  );
  if (q > MAX_HEADS) ctx.fail('heads.q', `${q} is more than ${MAX_HEADS}`, `1 to ${MAX_HEADS}`);
  if (kv > q) ctx.fail('heads.kv', `${kv} is more than heads.q: ${q}`, 'a divisor of heads.q');
  if (q % kv !== 0) {
    const divisors = Array.from({ length: q }, (_, i) => i + 1).filter((d) => q % d === 0);
    ctx.fail('heads.kv', `${kv} does not divide heads.q: ${q}`, divisors.join(', '));
  }

  const headDim = oneOf(
    ctx,
    requireField(ctx, input, 'headDim', 'headDim', HEAD_DIMS.join(', ')),
    HEAD_DIMS,
    'headDim',
    'a head dim',
  );

  const targets = validateTargets(ctx, input['targets']);
  const dtype = validateDtype(ctx, requireField(ctx, input, 'dtype', 'dtype', DTYPES.join(', ')), targets);

  const chunkSize =
    input['chunkSize'] === undefined
      ? DEFAULT_CHUNK_SIZE
      : oneOf(ctx, input['chunkSize'], CHUNK_SIZES, 'chunkSize', 'a chunk size');
  const partition =
    input['partition'] === undefined
      ? DEFAULT_PARTITION
      : oneOf(ctx, input['partition'], PARTITIONS, 'partition', 'a partition');

  let softmaxScale = 1 / Math.sqrt(headDim);
  if (input['softmaxScale'] !== undefined) {
    const s = input['softmaxScale'];
    if (typeof s !== 'number' || !Number.isFinite(s) || s <= 0) {
      ctx.fail(
        'softmaxScale',
        `${show(s)} is not a finite number > 0`,
        `a finite number > 0 (default 1/√headDim = ${softmaxScale})`,
      );
    }
    softmaxScale = s;
  }

  const params = validateParams(ctx, input['params']);
  const sparse =
    input['sparse'] === undefined
      ? undefined
      : validateSparse(input['sparse'], (p, m, a) => ctx.fail(p, m, a));
  const tunables = validateTunables(ctx, input['tunables']);

  let scoreMod: VariantFn | null;
  let mask: VariantFn | null;
  if (translated) {
    ({ scoreMod, mask } = translated);
  } else {
    scoreMod = validateFunction(ctx, input['scoreMod'], 'scoreMod', '(score, pos, params) => number', params);
    mask = validateFunction(ctx, input['mask'], 'mask', '(pos, params) => boolean', params);
  }

  const spec: KernelSpec = {
    name,
    heads: { q, kv },
    headDim,
    dtype,
    chunkSize,
    partition,
    softmaxScale,
    params,
    scoreMod,
    mask,
    tunables,
    targets,
    ...(sparse ? { sparse } : {}),
  };
  Object.defineProperty(spec, BRAND, { value: true, enumerable: false });
  return deepFreeze(spec);
}

function validateTargets(ctx: Context, value: unknown): readonly Target[] {
  if (value === undefined) return [...DEFAULT_TARGETS];
  const allowed = TARGETS.join(', ');
  if (!Array.isArray(value)) ctx.fail('targets', `expected an array of targets, got ${show(value)}`, allowed);
  if (value.length === 0) ctx.fail('targets', 'must not be empty', allowed);
  const seen = new Set<unknown>();
  value.forEach((t, i) => {
    oneOf(ctx, t, TARGETS, `targets[${i}]`, 'a target');
    if (seen.has(t)) ctx.fail(`targets[${i}]`, `duplicate ${show(t)}`, allowed);
    seen.add(t);
  });
  return [...(value as Target[])];
}

function validateDtype(ctx: Context, value: unknown, targets: readonly Target[]): KernelSpec['dtype'] {
  const check = (v: unknown, path: string): DType => {
    const dtype = oneOf(ctx, v, DTYPES, path, 'a dtype');
    if (dtype === 'f32' && targets.some((t) => t !== 'cpu')) {
      const gpu = targets.filter((t) => t !== 'cpu');
      ctx.fail(
        path,
        `'f32' needs every target to be cpu, but targets include ${gpu.join(', ')}`,
        `f16, bf16 (or f32 with targets: ['cpu'])`,
      );
    }
    return dtype;
  };
  if (typeof value === 'string') {
    const dtype = check(value, 'dtype');
    return { q: dtype, kv: dtype, out: dtype };
  }
  if (!isPlainObject(value))
    ctx.fail('dtype', `expected a dtype or { q, kv, out }, got ${show(value)}`, DTYPES.join(', '));
  checkKnownFields(ctx, value, ['q', 'kv', 'out'], 'dtype.');
  const field = (key: string) =>
    check(requireField(ctx, value, key, `dtype.${key}`, DTYPES.join(', ')), `dtype.${key}`);
  return { q: field('q'), kv: field('kv'), out: field('out') };
}

function validateParams(ctx: Context, value: unknown): readonly ParamSpec[] {
  if (value === undefined) return [];
  if (!isPlainObject(value)) {
    ctx.fail(
      'params',
      `expected an object of name: default value, got ${show(value)}`,
      '{ softcap: 50, window: 4096 }',
    );
  }
  const entries = Object.entries(value);
  if (entries.length > MAX_PARAMS)
    ctx.fail('params', `${entries.length} params are more than ${MAX_PARAMS}`, `at most ${MAX_PARAMS}`);
  return entries.map(([name, v]) => {
    if (name.length > MAX_NAME_LENGTH || !IDENT_RE.test(name)) {
      ctx.fail(
        `params.${name}`,
        `${show(name)} is not an identifier`,
        'a letter or _, then letters, digits or _',
      );
    }
    return { name, default: finiteNumber(ctx, v, `params.${name}`) };
  });
}

function validateTunables(ctx: Context, value: unknown): readonly TunableSpec[] {
  if (value === undefined) return [];
  if (!isPlainObject(value)) {
    ctx.fail(
      'tunables',
      `expected an object of name: { values, default }, got ${show(value)}`,
      '{ blockN: { values: [32, 64], default: 64 } }',
    );
  }
  const entries = Object.entries(value);
  if (entries.length > MAX_TUNABLES)
    ctx.fail(
      'tunables',
      `${entries.length} tunables are more than ${MAX_TUNABLES}`,
      `at most ${MAX_TUNABLES}`,
    );
  return entries.map(([name, t]) => {
    const path = `tunables.${name.slice(0, MAX_NAME_LENGTH)}`;
    if (name.length > MAX_NAME_LENGTH || !IDENT_RE.test(name))
      ctx.fail(path, `${show(name)} is not an identifier`, 'a letter or _, then letters, digits or _');
    if (!isPlainObject(t))
      ctx.fail(path, `expected { values, default }, got ${show(t)}`, '{ values: [32, 64], default: 64 }');
    checkKnownFields(ctx, t, ['values', 'default'], `${path}.`);
    const values = t['values'];
    if (!Array.isArray(values) || values.length === 0) {
      ctx.fail(
        `${path}.values`,
        `${show(values)} is not a non-empty array of finite numbers`,
        'e.g. [32, 64, 128]',
      );
    }
    if (values.length > MAX_TUNABLE_VALUES)
      ctx.fail(
        `${path}.values`,
        `${values.length} values are more than ${MAX_TUNABLE_VALUES}`,
        `at most ${MAX_TUNABLE_VALUES}`,
      );
    const seen = new Set<number>();
    values.forEach((v, i) => {
      finiteNumber(ctx, v, `${path}.values[${i}]`);
      if (seen.has(v)) ctx.fail(`${path}.values[${i}]`, `duplicate ${show(v)}`, 'distinct values');
      seen.add(v);
    });
    const allowed = values.join(', ');
    const d = requireField(ctx, t, 'default', `${path}.default`, `one of ${allowed}`);
    if (!values.includes(d)) ctx.fail(`${path}.default`, `${show(d)} is not among values`, allowed);
    return { name, values: [...(values as number[])], default: d as number };
  });
}

function validateFunction(
  ctx: Context,
  value: unknown,
  kind: 'scoreMod' | 'mask',
  shape: string,
  params: readonly ParamSpec[],
): VariantFn | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'function')
    ctx.fail(kind, `expected a function ${shape}, got ${show(value)}`, `a function ${shape}`);
  return translateVariant(kind, value as (...args: never[]) => unknown, ctx.stack, params);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const key of Object.keys(value)) deepFreeze((value as Record<string, unknown>)[key]);
    Object.freeze(value);
  }
  return value;
}

// ── stored specs ─────────────────────────────────────────────────────────────

const VARIANT_FIELDS = ['source', 'loc', 'ir', 'cpp'] as const;
const MAX_SOURCE_LENGTH = 100_000;

/** A stored loc: a file name without control characters (it is printed into C++ comments). */
function validateLoc(ctx: Context, value: unknown, path: string): SourceLoc {
  if (!isPlainObject(value)) ctx.fail(path, `expected { file, line, column }, got ${show(value)}`);
  checkKnownFields(ctx, value, ['file', 'line', 'column'], `${path}.`);
  const file = value['file'];
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it rejects
  if (typeof file !== 'string' || file.length > 4096 || /[\u0000-\u001f\u007f\u2028\u2029]/.test(file))
    ctx.fail(`${path}.file`, `${show(file)} is not a file name`, 'a path without control characters');
  return {
    file,
    line: positiveInteger(ctx, value['line'], `${path}.line`),
    column: positiveInteger(ctx, value['column'], `${path}.column`),
  };
}

/** A stored score/mask function: its IR is checked and its C++ regenerated; a stored `cpp` is never used. */
function validateStoredVariant(
  ctx: Context,
  value: unknown,
  kind: 'scoreMod' | 'mask',
  params: readonly ParamSpec[],
): VariantFn | null {
  if (value === null || value === undefined) return null;
  if (!isPlainObject(value))
    ctx.fail(kind, `expected a translated function { source, loc, ir }, got ${show(value)}`);
  checkKnownFields(ctx, value, VARIANT_FIELDS, `${kind}.`);
  const source = value['source'];
  if (typeof source !== 'string' || source.length > MAX_SOURCE_LENGTH)
    ctx.fail(`${kind}.source`, `${show(source)} is not the function's source text`);
  const loc = validateLoc(ctx, value['loc'], `${kind}.loc`);
  const problem = irProblem(value['ir'], kind === 'mask' ? 'boolean' : 'number', params);
  if (problem) ctx.fail(`${kind}.ir`, problem, 'the IR the DSL translator produces');
  const ir = value['ir'] as VariantFn['ir'];
  return { source, loc, ir: structuredClone(ir), cpp: exprToCpp(ir) };
}

/** A stored list of { name, ... } records → the object form attention() takes (names must be distinct). */
function recordsToObject(
  ctx: Context,
  value: unknown,
  path: string,
  fields: readonly string[],
  limit: number,
  pick: (record: Record<string, unknown>) => unknown,
): Record<string, unknown> | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.length > limit)
    ctx.fail(path, `expected an array of at most ${limit} { ${fields.join(', ')} }, got ${show(value)}`);
  const out: Record<string, unknown> = Object.create(null);
  value.forEach((record, i) => {
    if (!isPlainObject(record))
      ctx.fail(`${path}[${i}]`, `expected { ${fields.join(', ')} }, got ${show(record)}`);
    checkKnownFields(ctx, record, fields, `${path}[${i}].`);
    const name = record['name'];
    if (typeof name !== 'string') ctx.fail(`${path}[${i}].name`, `${show(name)} is not a name`);
    if (Object.hasOwn(out, name)) ctx.fail(`${path}[${i}].name`, `duplicate ${show(name)}`, 'distinct names');
    out[name] = pick(record);
  });
  return out;
}

/**
 * Validates a spec of any origin (JSON, a plain object, a forged brand) exactly as attention()
 * validates its input, and returns a fresh, branded, frozen KernelSpec. Variant functions are
 * checked as IR and their C++ is regenerated from it.
 */
export function validateSpec(value: unknown): KernelSpec {
  const ctx: Context = new Context(undefined);
  if (!isPlainObject(value))
    ctx.fail('spec', `expected a KernelSpec object, got ${show(value)}`, FIELDS.join(', '));
  checkKnownFields(ctx, value, FIELDS, '');
  const params = recordsToObject(
    ctx,
    value['params'],
    'params',
    ['name', 'default'],
    MAX_PARAMS,
    (r) => r['default'],
  );
  const tunables = recordsToObject(
    ctx,
    value['tunables'],
    'tunables',
    ['name', 'values', 'default'],
    MAX_TUNABLES,
    (r) => ({
      values: r['values'],
      default: r['default'],
    }),
  );
  const input: Record<string, unknown> = {};
  for (const key of FIELDS)
    if (value[key] !== undefined && key !== 'scoreMod' && key !== 'mask') input[key] = value[key];
  if (params) input['params'] = { ...params };
  if (tunables) input['tunables'] = { ...tunables };
  // The params the IR may reference: validated first, in the stored order.
  const paramSpecs = validateParams(ctx, input['params']);
  return buildSpec(input, ctx, {
    scoreMod: validateStoredVariant(ctx, value['scoreMod'], 'scoreMod', paramSpecs),
    mask: validateStoredVariant(ctx, value['mask'], 'mask', paramSpecs),
  });
}

// ── overrides ────────────────────────────────────────────────────────────────

/** What the CLI can change on a loaded spec (`--head-dim 64 --arch sm_89 --dtype bf16`). */
export interface SpecOverrides {
  readonly headDim?: number;
  readonly chunkSize?: number;
  readonly targets?: readonly string[];
  readonly dtype?: DType | string | { readonly q?: string; readonly kv?: string; readonly out?: string };
}

/**
 * A new spec with `overrides` applied and everything validated again. A softmax scale equal to the
 * old default 1/√headDim follows a new headDim; an explicit one is kept.
 */
export function withOverrides(spec: KernelSpec, overrides: SpecOverrides): KernelSpec {
  const ctx: Context = new Context(undefined);
  const given: unknown = overrides;
  if (!isPlainObject(given))
    ctx.fail('overrides', `expected an object, got ${show(overrides)}`, 'headDim, chunkSize, targets, dtype');
  checkKnownFields(ctx, given, ['headDim', 'chunkSize', 'targets', 'dtype'], '');
  let dtype: unknown = spec.dtype;
  const o = overrides.dtype;
  if (typeof o === 'string') dtype = o;
  else if (o !== undefined) {
    if (!isPlainObject(o))
      ctx.fail('dtype', `expected a dtype or { q, kv, out }, got ${show(o)}`, DTYPES.join(', '));
    dtype = { ...spec.dtype, ...o };
  }
  const scaleWasDefault = spec.softmaxScale === 1 / Math.sqrt(spec.headDim);
  const input = {
    name: spec.name,
    heads: { ...spec.heads },
    headDim: overrides.headDim ?? spec.headDim,
    dtype,
    chunkSize: overrides.chunkSize ?? spec.chunkSize,
    partition: spec.partition,
    ...(scaleWasDefault ? {} : { softmaxScale: spec.softmaxScale }),
    params: Object.fromEntries(spec.params.map((p) => [p.name, p.default])),
    tunables: Object.fromEntries(
      spec.tunables.map((t) => [t.name, { values: [...t.values], default: t.default }]),
    ),
    targets: overrides.targets ? [...overrides.targets] : [...spec.targets],
    ...(spec.sparse ? { sparse: { ...spec.sparse } } : {}),
  };
  const copy = (fn: VariantFn | null | undefined): VariantFn | null => (fn ? structuredClone(fn) : null);
  return buildSpec(input, ctx, { scoreMod: copy(spec.scoreMod), mask: copy(spec.mask) });
}
