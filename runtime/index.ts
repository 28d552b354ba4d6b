// runtime: the prefix tree, kernel contexts and the Attention API over compiled modules.

export {
  Attention,
  type AttentionOptions,
  type AttentionStats,
  type RuntimeTarget,
  type SpecSource,
} from './attention.ts';
export { ChunkPool } from './chunk-pool.ts';
export * from './errors.ts';
export { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, fromHost, toHost } from './half.ts';
export {
  buildKernelContext,
  ioRowMap,
  type KernelContext,
  type KernelContextOptions,
} from './kernel-context.ts';
export { bytesPerChunk, bytesPerToken, type KvShape, type KvStats, kvStats } from './kv-stats.ts';
export {
  gpuPresent,
  type LoadableModule,
  type ModuleLoader,
  setDefaultModuleLoader,
} from './module-loader.ts';
export {
  type HostData,
  type KernelFigures,
  type KernelStats,
  NativeModule,
  sectorEfficiency,
} from './native-module.ts';
export {
  type AppendResult,
  type ChunkCopy,
  type ForkResult,
  type InsertResult,
  PrefixTree,
} from './prefix-tree.ts';
