// The public DSL: describe an attention kernel with `attention({...})`, load specs from files,
// retarget them, and inspect what score/mask functions became (IR, C++, float64 evaluation).
//
// dsl/ imports nothing else of chunkattn's: only node built-ins, ts-morph (lazily) and tsx.

export {
  type AttentionInput,
  attention,
  DEFAULT_CHUNK_SIZE,
  DEFAULT_PARTITION,
  DEFAULT_TARGETS,
  isKernelSpec,
  type ParamValues,
  type SpecOverrides,
  validateSpec,
  withOverrides,
} from './attention.ts';
export { exprToCpp, floatLiteral } from './emit-cpp.ts';
export { type DslDiagnostic, DslError } from './errors.ts';
export { type EvalEnv, evaluateExpr, type VariantFunctions, variantFunctions } from './evaluate.ts';
export { formatDiagnostic, formatDslError, formatLoc } from './format-error.ts';
export { loadSpecs } from './load-specs.ts';
export {
  MAX_SPARSE_CHUNKS,
  type ProgressiveOptions,
  progressive,
  SPARSE_DEFAULTS,
  type SparseSpec,
  validateSparse,
} from './sparse.ts';
export * from './spec.ts';
