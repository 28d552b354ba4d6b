// runtime: the prefix tree, kernel contexts and the Attention API over compiled modules.

export {
  type AttendRows,
  Attention,
  type AttentionOptions,
  type AttentionStats,
  type RuntimeTarget,
  type SpecSource,
} from './attention.ts';
export {
  type Capacity,
  type CapacityOptions,
  contextWordsBound,
  resolveCapacity,
  type ScratchBounds,
  scratchBounds,
  workspaceBound,
} from './capacity.ts';
export { ChunkMetadata, type ChunkMetadataStats } from './chunk-metadata.ts';
export { ChunkPool } from './chunk-pool.ts';
export {
  type DispatchChoice,
  Dispatcher,
  type DispatchRules,
  type DispatchRulesSource,
  type DispatchShape,
  type KernelTunables,
  setDefaultDispatchRules,
  sharedPrefixTokens,
  tunablesId,
  twoPhaseKilled,
} from './dispatch.ts';
export * from './errors.ts';
export { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, fromHost, toHost } from './half.ts';
export {
  buildKernelContext,
  type ContextFields,
  ContextPlanner,
  ioRowMap,
  type KernelContext,
  type KernelContextOptions,
  packContext,
} from './kernel-context.ts';
export type { KvReadback } from './kv-readback.ts';
export { bytesPerChunk, bytesPerToken, type KvShape, type KvStats, kvStats } from './kv-stats.ts';
export {
  gpuPresent,
  type LoadableModule,
  type ModuleLoader,
  setDefaultModuleLoader,
} from './module-loader.ts';
export {
  DeviceTensor,
  type HostData,
  type KernelFigures,
  type KernelStats,
  NativeModule,
  sectorEfficiency,
  type TensorData,
} from './native-module.ts';
export {
  type AppendResult,
  type ChunkCopy,
  type ForkResult,
  type InsertResult,
  PrefixTree,
  type RollbackResult,
} from './prefix-tree.ts';
export type { SparseOverride } from './psa-options.ts';
export { expandQueryRows, type QueryRows } from './query-rows.ts';
export {
  type ReferenceRow,
  type ReferenceShape,
  type ReferenceVariant,
  referenceDecode,
  relativeError,
  TOLERANCE,
} from './reference.ts';
export type { SparseSelection } from './sparse-decode.ts';
