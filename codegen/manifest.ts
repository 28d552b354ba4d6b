// The record a build leaves next to its module: what was built, from what, how, and what the
// compiler reported. Written last, so a folder with a manifest is a complete module.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KernelPlan } from './plan.ts';
import type { KernelResources } from './ptxas.ts';

export const MANIFEST_FILE = 'manifest.json';
export const LIBRARY_FILE = 'module.so';

/** Symbols every module must export (abi.h). */
export const ABI_SYMBOLS = [
  'ca_abi_version',
  'ca_info',
  'ca_last_error',
  'ca_workspace_bytes',
  'ca_decode',
  'ca_write_kv',
  'ca_copy_chunk',
  'ca_malloc',
  'ca_free',
  'ca_memcpy',
  'ca_memset',
  'ca_synchronize',
  'ca_get_stats',
  'ca_reset_stats',
  'ca_kernel_stats',
] as const;

/** The plan it was built from, plus what the build produced and reported. */
export interface Manifest extends KernelPlan {
  readonly abi: 1;
  readonly toolchain: string;
  /** File names inside the module folder. */
  readonly source: string;
  readonly library: string;
  readonly resources: readonly KernelResources[];
  readonly symbols: readonly string[];
  readonly buildCommand: readonly string[];
  readonly buildSeconds: number;
  readonly builtAt: string;
}

export interface BuiltModule {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly libraryPath: string;
  readonly sourcePath: string;
  /** True when the module came from the cache and nothing was compiled. */
  readonly cached: boolean;
}

/** Reads a module folder; null when it is absent or incomplete. */
export function readModule(dir: string, cached: boolean): BuiltModule | null {
  const path = join(dir, MANIFEST_FILE);
  if (!existsSync(path)) return null;
  const manifest = JSON.parse(readFileSync(path, 'utf8')) as Manifest;
  const libraryPath = join(dir, manifest.library);
  if (!existsSync(libraryPath)) return null;
  return { dir, manifest, libraryPath, sourcePath: join(dir, manifest.source), cached };
}
