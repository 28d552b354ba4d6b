// codegen: KernelSpec → KernelPlan → rendered source → built module in the cache.

import type { Arch, BuildTarget, KernelSpec } from '../dsl/spec.ts';
import { build } from './build.ts';
import type { BuiltModule } from './manifest.ts';
import { type KernelPlan, type PlanOptions, plan } from './plan.ts';
import { findToolchain } from './toolchain.ts';

export { build, buildCommand, cacheDir, moduleDir, resourceViolations } from './build.ts';
export {
  type BuildProgress,
  type BuildStart,
  describeBuild,
  type ProgressStream,
  setBuildProgress,
  streamBuildProgress,
} from './build-progress.ts';
export {
  type CacheEntry,
  cleanCache,
  listCache,
  type PruneResult,
  pruneCache,
} from './cache-admin.ts';
export { canonicalJson, compilerFingerprint, FINGERPRINTED_SOURCES, PACKAGE_VERSION } from './cache-key.ts';
export { BuildError, ResourceError, ToolchainError } from './errors.ts';
export {
  type BuiltModule,
  checkModule,
  type Manifest,
  type ModuleCheck,
  readModule,
} from './manifest.ts';
export {
  buildTargetsOf,
  type KernelLaunchPlan,
  type KernelPlan,
  PlanError,
  plan,
  type Sanitizer,
} from './plan.ts';
export { type KernelResources, parsePtxasReport } from './ptxas.ts';
export { moduleInfo, render } from './render.ts';
export { TARGET_TUNABLES, type TargetTunable, tunablesFor } from './target-tunables.ts';
export { findToolchain, type Toolchain } from './toolchain.ts';

export interface BuildModuleOptions extends Omit<PlanOptions, 'target'> {
  readonly target: BuildTarget;
  readonly archs?: readonly Arch[];
}

/** Plans and builds one module (a cache hit when an identical one exists). */
export async function buildModule(spec: KernelSpec, options: BuildModuleOptions): Promise<BuiltModule> {
  const toolchain = await findToolchain();
  return build(plan(spec, options, toolchain), toolchain);
}

/** Plans without building (for `chunkattn inspect`). */
export async function planModule(spec: KernelSpec, options: BuildModuleOptions): Promise<KernelPlan> {
  return plan(spec, options, await findToolchain());
}
