// Progressive sparse attention (PSA) options of a spec: `sparse: progressive({ mass: 0.9 })`.
//
// The options are plain, JSON-serializable data; they enter the normalized KernelSpec (so a spec
// with PSA hashes to its own cache key) and can be overridden per Attention.create. They are run-
// time parameters of the module's select and sparse decode (design: dsl/README.md, runtime/README.md):
//
//   mass             attention mass each query head must cover (0 < mass ≤ 1; 1 = dense)
//   kMin, kMax       chunks selected per (sequence, KV head), forced chunks included
//   denseBelowTokens sequences of at most this many tokens attend densely
//   denseLayers      the first denseLayers layers attend densely
//   safetyNet        fraction of chunks always added by their Quest bound (top ⌈safetyNet·n⌉)
//   recentTokens     the last ⌈recentTokens / chunkSize⌉ chunks are always selected
//   box              use the per-chunk min/max box (Quest bound cap and safety net)
//   guard            after the decode, compare the covered mass with the estimate and attend the
//                    next batch of unselected chunks when it falls short (the progressive step)

export interface ProgressiveOptions {
  readonly mass?: number;
  readonly kMin?: number;
  readonly kMax?: number;
  readonly denseBelowTokens?: number;
  readonly denseLayers?: number;
  readonly safetyNet?: number;
  readonly recentTokens?: number;
  readonly box?: boolean;
  readonly guard?: boolean;
}

/** The normalized options: every field present. */
export interface SparseSpec {
  readonly kind: 'progressive';
  readonly mass: number;
  readonly kMin: number;
  readonly kMax: number;
  readonly denseBelowTokens: number;
  readonly denseLayers: number;
  readonly safetyNet: number;
  readonly recentTokens: number;
  readonly box: boolean;
  readonly guard: boolean;
}

/** Most chunks a bound may name (2^24: exact in float32, far beyond any pool). */
export const MAX_SPARSE_CHUNKS = 1 << 24;
/** Most tokens / layers an option may name. */
export const MAX_SPARSE_TOKENS = 2 ** 31 - 1;

export const SPARSE_DEFAULTS: Omit<SparseSpec, 'kind'> = {
  mass: 0.95,
  kMin: 0,
  kMax: MAX_SPARSE_CHUNKS,
  denseBelowTokens: 2048,
  denseLayers: 2,
  safetyNet: 0.02,
  recentTokens: 256,
  box: true,
  guard: false,
};

export const SPARSE_FIELDS = [
  'kind',
  'mass',
  'kMin',
  'kMax',
  'denseBelowTokens',
  'denseLayers',
  'safetyNet',
  'recentTokens',
  'box',
  'guard',
] as const;

const OPTION_FIELDS = SPARSE_FIELDS.filter((f) => f !== 'kind');

/**
 * Progressive sparse attention over chunks (PSA.md). Returns plain data for `attention({ sparse })`;
 * the values are validated there (or by Attention.create for overrides).
 */
export function progressive(
  options: ProgressiveOptions = {},
): { readonly kind: 'progressive' } & ProgressiveOptions {
  return Object.freeze({ kind: 'progressive' as const, ...options });
}

/** Reports a field error (throws a DslError naming `path`). */
export type FailField = (path: string, message: string, allowed?: string) => never;

function describe(value: unknown): string {
  if (typeof value === 'string') return `'${value.length > 40 ? `${value.slice(0, 40)}…` : value}'`;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (value === undefined || value === null) return String(value);
  if (typeof value === 'function') return 'a function';
  return Array.isArray(value) ? 'an array' : 'an object';
}

function isPlain(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * Validates PSA options (the `sparse` field of a spec, or an override of one) and normalizes
 * them onto `base` (the defaults, or the spec's options for an override). `prefix` is the path
 * of the field, e.g. `sparse`.
 */
export function validateSparse(
  value: unknown,
  fail: FailField,
  prefix = 'sparse',
  base: Omit<SparseSpec, 'kind'> = SPARSE_DEFAULTS,
): SparseSpec {
  if (!isPlain(value))
    fail(
      prefix,
      `expected progressive({ mass, ... }), got ${describe(value)}`,
      `progressive({ ${OPTION_FIELDS.join(', ')} })`,
    );
  for (const key of Object.keys(value))
    if (!(SPARSE_FIELDS as readonly string[]).includes(key))
      fail(`${prefix}.${key.slice(0, 40)}`, 'unknown field', OPTION_FIELDS.join(', '));
  if (value['kind'] !== undefined && value['kind'] !== 'progressive')
    fail(`${prefix}.kind`, `${describe(value['kind'])} is not a sparse kind`, "'progressive'");

  const number = (key: string, lo: number, hi: number, loOpen: boolean, allowed: string): number => {
    const v = value[key];
    if (v === undefined) return base[key as keyof typeof base] as number;
    if (typeof v !== 'number' || !Number.isFinite(v) || (loOpen ? v <= lo : v < lo) || v > hi)
      fail(`${prefix}.${key}`, `${describe(v)} is out of range`, allowed);
    return v;
  };
  const integer = (key: string, hi: number): number => {
    const v = value[key];
    if (v === undefined) return base[key as keyof typeof base] as number;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > hi)
      fail(`${prefix}.${key}`, `${describe(v)} is not an integer in [0, ${hi}]`, `0 to ${hi}`);
    return v;
  };
  const boolean = (key: string): boolean => {
    const v = value[key];
    if (v === undefined) return base[key as keyof typeof base] as boolean;
    if (typeof v !== 'boolean') fail(`${prefix}.${key}`, `${describe(v)} is not a boolean`, 'true, false');
    return v;
  };

  const mass = number('mass', 0, 1, true, 'a number in (0, 1]');
  const kMin = integer('kMin', MAX_SPARSE_CHUNKS);
  const kMax = integer('kMax', MAX_SPARSE_CHUNKS);
  if (kMax < 1) fail(`${prefix}.kMax`, `${kMax} selects no chunk`, `1 to ${MAX_SPARSE_CHUNKS}`);
  if (kMin > kMax) fail(`${prefix}.kMin`, `${kMin} is more than kMax: ${kMax}`, `0 to kMax (${kMax})`);
  return {
    kind: 'progressive',
    mass,
    kMin,
    kMax,
    denseBelowTokens: integer('denseBelowTokens', MAX_SPARSE_TOKENS),
    denseLayers: integer('denseLayers', 4096),
    safetyNet: number('safetyNet', 0, 0.5, false, 'a fraction in [0, 0.5]'),
    recentTokens: integer('recentTokens', MAX_SPARSE_TOKENS),
    box: boolean('box'),
    guard: boolean('guard'),
  };
}
