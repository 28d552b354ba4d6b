// Looking after the build cache: list its entries, prune what is damaged or left over, clean it.
// Only names this package writes are ever deleted (module folders, .tmp, .failed, .trash, locks),
// so a cache root pointed at a shared folder loses nothing else.

import { readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { cacheDir, discardEntry } from './build.ts';
import { readLock } from './lock.ts';
import { checkModule } from './manifest.ts';

/** `<name>-<target>[-<sanitizer>]-<16 hex>.<8 hex>`: the folder of one build (see plan.ts). */
const ENTRY_RE = /^[A-Za-z][A-Za-z0-9_-]*-[0-9a-f]{16}\.[0-9a-f]{8}$/;
const LOCK_RE = /^[A-Za-z][A-Za-z0-9_-]*-[0-9a-f]{16}\.[0-9a-f]{8}\.(lock|lease)$/;
const WORK_FOLDERS = ['.tmp', '.failed', '.trash'];

export interface CacheEntry {
  readonly buildId: string;
  readonly status: 'ok' | 'damaged';
  /** Why the entry is damaged (absent when ok). */
  readonly reason?: string;
  readonly name?: string;
  readonly target?: string;
  readonly bytes: number;
  readonly builtAt?: string;
}

function folderBytes(path: string): number {
  try {
    const stat = statSync(path);
    if (!stat.isDirectory()) return stat.size;
    return readdirSync(path).reduce((sum, entry) => sum + folderBytes(join(path, entry)), 0);
  } catch {
    return 0;
  }
}

function entries(root: string): string[] {
  try {
    return readdirSync(root).sort();
  } catch {
    return [];
  }
}

export function listCache(root: string = cacheDir()): CacheEntry[] {
  const out: CacheEntry[] = [];
  for (const name of entries(root)) {
    if (!ENTRY_RE.test(name)) continue;
    const dir = join(root, name);
    const check = checkModule(dir, true);
    if (check.status === 'absent') continue;
    const bytes = folderBytes(dir);
    if (check.status === 'damaged')
      out.push({ buildId: name, status: 'damaged', reason: check.reason, bytes });
    else {
      const { manifest } = check.module;
      out.push({
        buildId: name,
        status: 'ok',
        name: manifest.name,
        target: manifest.target,
        bytes,
        builtAt: manifest.builtAt,
      });
    }
  }
  return out;
}

export interface PruneResult {
  /** Paths removed, relative to the cache root. */
  readonly removed: string[];
  readonly bytesFreed: number;
}

/**
 * Removes damaged entries, entries built before `olderThanMs` ago (when given), leftovers of
 * killed or failed builds, and stale locks. Live builds (fresh locks) are left alone.
 */
export function pruneCache(options: { olderThanMs?: number; root?: string } = {}): PruneResult {
  const root = options.root ?? cacheDir();
  const removed: string[] = [];
  let bytesFreed = 0;
  const cutoff = options.olderThanMs === undefined ? undefined : Date.now() - options.olderThanMs;
  const building = new Set<string>();
  for (const name of entries(root)) {
    if (!LOCK_RE.test(name)) continue;
    const state = readLock(join(root, name));
    const buildId = name.replace(/\.(lock|lease)$/, '');
    if (state && state.ageMs < 60_000) building.add(buildId);
    else {
      // Moved aside first: a builder may create a new lock at this path at any moment.
      bytesFreed += folderBytes(join(root, name));
      discardEntry(root, join(root, name));
      removed.push(name);
    }
  }
  for (const entry of listCache(root)) {
    const old = cutoff !== undefined && (entry.builtAt === undefined || Date.parse(entry.builtAt) < cutoff);
    if ((entry.status === 'damaged' || old) && !building.has(entry.buildId)) {
      discardEntry(root, join(root, entry.buildId));
      bytesFreed += entry.bytes;
      removed.push(entry.buildId);
    }
  }
  for (const folder of WORK_FOLDERS) {
    for (const name of entries(join(root, folder))) {
      if ([...building].some((id) => name.startsWith(id))) continue;
      const path = join(root, folder, name);
      bytesFreed += folderBytes(path);
      rmSync(path, { recursive: true, force: true });
      removed.push(join(folder, name));
    }
  }
  return { removed, bytesFreed };
}

/** Removes every module and work folder this package wrote under the cache root. */
export function cleanCache(root: string = cacheDir()): PruneResult {
  const removed: string[] = [];
  let bytesFreed = 0;
  for (const name of entries(root)) {
    if (!ENTRY_RE.test(name) && !LOCK_RE.test(name) && !WORK_FOLDERS.includes(name)) continue;
    const path = join(root, name);
    bytesFreed += folderBytes(path);
    if (ENTRY_RE.test(name)) discardEntry(root, path);
    else rmSync(path, { recursive: true, force: true });
    removed.push(name);
  }
  rmSync(join(root, '.trash'), { recursive: true, force: true });
  return { removed, bytesFreed };
}
