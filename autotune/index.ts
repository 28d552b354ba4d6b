// autotune: GPU table, occupancy, tuning DB and the static performance model.

export {
  batchBucket,
  currentMeta,
  type DbMeta,
  type DbOrigin,
  type EntrySource,
  isStale,
  keyString,
  loadDbs,
  lookup,
  mergeDb,
  readDb,
  SHIPPED_DB_DIR,
  sharedBucket,
  shippedDbPath,
  type TuningDb,
  TuningDbError,
  type TuningEntry,
  type TuningHit,
  type TuningKey,
  type TuningShape,
  tuningKey,
  updateDb,
  userDbPath,
  writeDbAtomic,
} from './db.ts';
export {
  ARCH_LIMITS,
  type ArchLimits,
  findGpu,
  GPU_IDS,
  GPUS,
  type GpuId,
  type GpuSpec,
  UnknownGpuError,
} from './gpus.ts';
export {
  type BlockWork,
  type Bound,
  type LaunchPrediction,
  type LaunchWork,
  type ModelConstants,
  ModelError,
  type Prediction,
  predict,
  predictLaunch,
} from './model.ts';
export { constantsFor, loadModelParams, type ModelParams } from './model-params.ts';
export {
  type KernelOccupancy,
  kernelOccupancy,
  moduleOccupancy,
  type Occupancy,
  type OccupancyInput,
  type OccupancyLimiter,
  occupancy,
  pruneReason,
} from './occupancy.ts';
export { type Table3Model, table3Model } from './table3.ts';
