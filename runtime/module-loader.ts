// How the runtime gets a compiled module without depending on the compiler: a loader turns a
// spec + target into a library path. The package entry (index.ts) registers codegen's builder
// as the default; callers may pass their own (e.g. prebuilt modules).

import { existsSync } from 'node:fs';
import type { BuildTarget, KernelSpec } from '../dsl/spec.ts';
import { ModuleError } from './errors.ts';

export interface LoadableModule {
  readonly libraryPath: string;
  readonly manifest: { readonly key: string; readonly target: BuildTarget; readonly spec: KernelSpec };
}

/** `tunables`: build-time tunable overrides (a dispatch instance); absent: the defaults. */
export type ModuleLoader = (
  spec: KernelSpec,
  target: BuildTarget,
  tunables?: Readonly<Record<string, number>>,
) => Promise<LoadableModule>;

let defaultLoader: ModuleLoader | undefined;

export function setDefaultModuleLoader(loader: ModuleLoader): void {
  defaultLoader = loader;
}

export function resolveLoader(loader: ModuleLoader | undefined): ModuleLoader {
  const chosen = loader ?? defaultLoader;
  if (!chosen)
    throw new ModuleError(
      "no module loader: import from the package entry ('chunkattn'), which builds specs with codegen, or pass { loader }",
    );
  return chosen;
}

/** Whether this machine has an NVIDIA GPU the cuda target could use. */
export function gpuPresent(): boolean {
  return existsSync('/dev/nvidia0') || existsSync('/dev/nvidiactl');
}
