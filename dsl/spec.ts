// The normalized kernel description. Plain, readonly, JSON-serializable data: every later stage
// (plan, manifest, cache key) is a function of it, so it can be printed, diffed and hashed.

import type { SparseSpec } from './sparse.ts';

export const DTYPES = ['f16', 'bf16', 'f32'] as const;
export type DType = (typeof DTYPES)[number];

export const HEAD_DIMS = [64, 80, 96, 128, 192, 256] as const;
export type HeadDim = (typeof HEAD_DIMS)[number];

export const CHUNK_SIZES = [16, 32, 64, 128] as const;
export type ChunkSize = (typeof CHUNK_SIZES)[number];

export const PARTITIONS = ['two-phase', 'sequence-first', 'chunk-first'] as const;
export type Partition = (typeof PARTITIONS)[number];

/** GPU architectures we build cubins for (`-gencode arch=compute_XX,code=sm_XX`). */
export const ARCHS = ['sm_80', 'sm_86', 'sm_89', 'sm_90a'] as const;
export type Arch = (typeof ARCHS)[number];

/** What a spec may name in `targets`: a GPU arch, the CUDA-on-CPU emulator, or the native CPU target. */
export const TARGETS = [...ARCHS, 'emu', 'cpu'] as const;
export type Target = (typeof TARGETS)[number];

/** How a module is built: nvcc for GPUs (all archs in one fatbin), g++ + cucpu for `emu`, g++ for `cpu`. */
export type BuildTarget = 'cuda' | 'emu' | 'cpu';

/** Fields of `pos` that score/mask functions may read. All are integers. */
export const POS_FIELDS = ['seq', 'qHead', 'kvHead', 'q', 'kv'] as const;
export type PosField = (typeof POS_FIELDS)[number];
export type Pos = { readonly [F in PosField]: number };

/** Expression IR of a translated score/mask function. Every node keeps its source location. */
export type Expr =
  | { readonly kind: 'num'; readonly value: number }
  | { readonly kind: 'bool'; readonly value: boolean }
  | { readonly kind: 'score' }
  | { readonly kind: 'pos'; readonly field: PosField }
  | { readonly kind: 'param'; readonly name: string; readonly index: number }
  | { readonly kind: 'unary'; readonly op: '-' | '+' | '!'; readonly arg: Expr }
  | {
      readonly kind: 'binary';
      readonly op: '+' | '-' | '*' | '/' | '%' | '<' | '<=' | '>' | '>=' | '==' | '!=' | '&&' | '||';
      readonly left: Expr;
      readonly right: Expr;
    }
  | { readonly kind: 'cond'; readonly test: Expr; readonly then: Expr; readonly else: Expr }
  | { readonly kind: 'call'; readonly fn: MathFn; readonly args: readonly Expr[] };

export const MATH_FNS = ['exp', 'log', 'tanh', 'abs', 'min', 'max', 'sqrt', 'pow', 'floor'] as const;
export type MathFn = (typeof MATH_FNS)[number];

/** Number of arguments each Math function takes: exactly n, or at least 2 for min/max. */
export const MATH_ARITY: Readonly<Record<MathFn, number | 'variadic'>> = {
  exp: 1,
  log: 1,
  tanh: 1,
  abs: 1,
  sqrt: 1,
  floor: 1,
  pow: 2,
  min: 'variadic',
  max: 'variadic',
};

/** The largest finite float32: literals beyond it are rejected (they would become inf in C++). */
export const FLOAT_MAX = 3.4028234663852886e38;

/** Bounds every target can hold (the native addon checks modules against the same limits). */
export const MAX_HEADS = 1024;
export const MAX_NAME_LENGTH = 64;
export const MAX_PARAMS = 64;
export const MAX_TUNABLES = 32;
export const MAX_TUNABLE_VALUES = 64;

export interface SourceLoc {
  readonly file: string;
  readonly line: number;
  readonly column: number;
}

/** A translated user function: its IR, the C++ expression every target shares, and where it came from. */
export interface VariantFn {
  readonly source: string;
  readonly loc: SourceLoc;
  readonly ir: Expr;
  /** C++ expression over `score` (float), `pos` (ca::Pos) and `params` (const float*). */
  readonly cpp: string;
}

export interface ParamSpec {
  readonly name: string;
  readonly default: number;
}

export interface TunableSpec {
  readonly name: string;
  readonly values: readonly number[];
  readonly default: number;
}

export interface KernelSpec {
  readonly name: string;
  readonly heads: { readonly q: number; readonly kv: number };
  readonly headDim: HeadDim;
  readonly dtype: { readonly q: DType; readonly kv: DType; readonly out: DType };
  readonly chunkSize: ChunkSize;
  readonly partition: Partition;
  readonly softmaxScale: number;
  /** Named scalar parameters, in declaration order; `params[i]` in C++. */
  readonly params: readonly ParamSpec[];
  readonly scoreMod: VariantFn | null;
  readonly mask: VariantFn | null;
  readonly tunables: readonly TunableSpec[];
  readonly targets: readonly Target[];
  /** Progressive sparse attention (dsl/sparse.ts); absent: dense. */
  readonly sparse?: SparseSpec;
}
