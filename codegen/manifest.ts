// The record a build leaves next to its module: what was built, from what, how, and what the
// compiler reported. Written last, so a folder with a manifest is a complete module. Nothing
// stored is trusted: the library's size and sha256 are checked against the manifest before it
// is ever handed to dlopen (a truncated .so mapped by dlopen dies with SIGBUS, not an error).

import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { KernelPlan } from './plan.ts';
import type { KernelResources } from './ptxas.ts';

/** CA_ABI_VERSION of templates/include/chunkattn/abi.h: a manifest of another ABI is stale. */
export const MANIFEST_ABI = 2;
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
  'ca_copy_chunks',
  'ca_malloc',
  'ca_free',
  'ca_memcpy',
  'ca_memset',
  'ca_stream_create',
  'ca_stream_destroy',
  'ca_synchronize',
  'ca_get_stats',
  'ca_kernel_stats',
  'ca_reset_stats',
  'ca_kernel_stats',
] as const;

/** The plan it was built from, plus what the build produced and reported. */
export interface Manifest extends KernelPlan {
  readonly abi: typeof MANIFEST_ABI;
  readonly toolchain: string;
  /** File names inside the module folder. */
  readonly source: string;
  readonly library: string;
  /** Size in bytes and sha256 of `library`, checked before every load. */
  readonly librarySize: number;
  readonly librarySha256: string;
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

export function fileSha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** What a cache folder holds: nothing, a verified module, or something damaged (with why). */
export type ModuleCheck =
  | { readonly status: 'absent' }
  | { readonly status: 'ok'; readonly module: BuiltModule }
  | { readonly status: 'damaged'; readonly reason: string };

const SOURCE_FILES = ['kernel.cu', 'kernel.cpp'];

/** Verifies a module folder: manifest shape, file names confined to the folder, library size and hash. */
export function checkModule(dir: string, cached: boolean): ModuleCheck {
  if (!existsSync(dir)) return { status: 'absent' };
  const damaged = (reason: string): ModuleCheck => ({ status: 'damaged', reason });
  const path = join(dir, MANIFEST_FILE);
  if (!existsSync(path)) return damaged(`no ${MANIFEST_FILE}`);
  let manifest: Manifest;
  try {
    manifest = JSON.parse(readFileSync(path, 'utf8')) as Manifest;
  } catch (error) {
    return damaged(`${MANIFEST_FILE} is not JSON (${(error as Error).message})`);
  }
  if (typeof manifest !== 'object' || manifest === null || Array.isArray(manifest))
    return damaged(`${MANIFEST_FILE} is not an object`);
  if (manifest.abi !== MANIFEST_ABI)
    return damaged(`${MANIFEST_FILE} has abi ${String(manifest.abi)}, not ${MANIFEST_ABI}`);
  // Only the names a build writes: a manifest cannot point outside its folder.
  if (manifest.library !== LIBRARY_FILE)
    return damaged(`library ${JSON.stringify(manifest.library)} is not ${LIBRARY_FILE}`);
  if (!SOURCE_FILES.includes(manifest.source))
    return damaged(`source ${JSON.stringify(manifest.source)} is not a generated file name`);
  if (!Number.isSafeInteger(manifest.librarySize) || typeof manifest.librarySha256 !== 'string')
    return damaged(`${MANIFEST_FILE} records no library size and sha256`);
  if (typeof manifest.spec !== 'object' || manifest.spec === null || typeof manifest.key !== 'string')
    return damaged(`${MANIFEST_FILE} lacks its spec or key`);
  const libraryPath = join(dir, LIBRARY_FILE);
  let size: number;
  try {
    const stat = statSync(libraryPath);
    if (!stat.isFile()) return damaged(`${LIBRARY_FILE} is not a regular file`);
    size = stat.size;
  } catch {
    return damaged(`no ${LIBRARY_FILE}`);
  }
  if (size !== manifest.librarySize)
    return damaged(`${LIBRARY_FILE} has ${size} bytes, the manifest says ${manifest.librarySize}`);
  if (fileSha256(libraryPath) !== manifest.librarySha256)
    return damaged(`${LIBRARY_FILE} does not match the manifest's sha256`);
  return {
    status: 'ok',
    module: { dir, manifest, libraryPath, sourcePath: join(dir, manifest.source), cached },
  };
}

/** Reads a module folder; null when it is absent, incomplete or damaged. */
export function readModule(dir: string, cached: boolean): BuiltModule | null {
  const check = checkModule(dir, cached);
  return check.status === 'ok' ? check.module : null;
}
