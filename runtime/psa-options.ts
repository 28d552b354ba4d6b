// PSA options at run time: the spec's `sparse` options with Attention.create's overrides, and the
// config array ca_psa_decode takes (its order is PsaConfigField in runtime/native/src/core_psa.cc).

import { DslError } from '../dsl/errors.ts';
import { type ProgressiveOptions, SPARSE_DEFAULTS, type SparseSpec, validateSparse } from '../dsl/sparse.ts';
import type { KernelSpec } from '../dsl/spec.ts';
import { ArgumentError } from './errors.ts';

/** `sparse` of AttentionOptions: options over the spec's (or the defaults), or false for dense. */
export type SparseOverride = ProgressiveOptions | false;

/**
 * The PSA options a runtime uses: undefined (dense) when neither the spec nor the override asks
 * for PSA or the override is `false`. Bad values throw ArgumentError naming `options.sparse.*`.
 */
export function resolveSparse(
  spec: KernelSpec,
  override: SparseOverride | undefined,
): SparseSpec | undefined {
  if (override === false) return undefined;
  if (override === undefined) return spec.sparse;
  const { kind: _kind, ...base } = spec.sparse ?? { kind: 'progressive', ...SPARSE_DEFAULTS };
  try {
    return validateSparse(
      override,
      (path, message, allowed) => {
        throw new DslError(`${path}: ${message}${allowed ? `; allowed: ${allowed}` : ''}`, { path });
      },
      'options.sparse',
      base,
    );
  } catch (error) {
    if (error instanceof DslError) throw new ArgumentError(error.message);
    throw error;
  }
}

/** Chunks of the recent window: ⌈recentTokens / chunkSize⌉. */
export function recentChunks(sparse: SparseSpec, chunkSize: number): number {
  return Math.ceil(sparse.recentTokens / chunkSize);
}

/** ca_psa_decode's config for one call (maxChunks: the longest row's chunk count). */
export function psaConfig(sparse: SparseSpec, chunkSize: number, maxChunks: number): Float64Array {
  return Float64Array.from([
    sparse.mass,
    sparse.kMin,
    sparse.kMax,
    recentChunks(sparse, chunkSize),
    sparse.safetyNet,
    sparse.box ? 1 : 0,
    Math.min(sparse.denseBelowTokens, 2 ** 31 - 1),
    sparse.guard ? 1 : 0,
    Math.max(1, maxChunks),
  ]);
}
