// A cross-process build lock, one per cache key, judged by a lease and never by PID liveness
// (a builder in another container shares the cache but not our PID namespace).
//
// The lock is a directory holding `owner.json` ({ id, pid, host, since }). It appears at its
// path complete, by renaming a prepared folder there (a rename onto an existing lock fails), and
// its holder touches owner.json every HEARTBEAT_MS: a lock whose owner.json is older than
// `staleMs` has a dead holder. PID liveness is consulted only as a shortcut, when the owner
// recorded our host and our PID namespace (/proc/self/ns/pid), where a PID means the same
// process; a live PID never extends a lease. Taking over a stale lock never deletes or replaces it by path,
// which could remove a newer holder's lock (the read-then-unlink race): the waiter creates
// `takeover-<stale id>` inside it with mkdir (exactly one waiter succeeds), then re-reads the
// owner; only if that is still the stale id does it write itself as owner. A waiter that raced
// with a release and a new holder finds another id and goes back to waiting.

import {
  mkdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const OWNER_FILE = 'owner.json';
const HEARTBEAT_MS = 2_000;
export const DEFAULT_STALE_MS = 30_000;

export interface LockOwner {
  readonly id: string;
  readonly pid: number;
  readonly host: string;
  /** The owner's PID namespace, e.g. "pid:[4026531836]" ('' where unknown). */
  readonly pidns: string;
  readonly since: string;
}

export interface LockState {
  readonly owner: LockOwner | null;
  /** Milliseconds since the holder last renewed its lease. */
  readonly ageMs: number;
}

export interface LockOptions {
  readonly timeoutMs?: number;
  /** A lease not renewed for this long is taken over. */
  readonly staleMs?: number;
  /** Told once, when the lock is held by someone else: whom we wait for and since when. */
  readonly onWait?: (owner: LockOwner | null) => void;
}

function pidNamespace(): string {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return '';
  }
}

/** Whether the owner provably died: same host and PID namespace, and its PID is gone. */
function ownerGone(owner: LockOwner | null): boolean {
  if (!owner || owner.host !== hostname() || !owner.pidns || owner.pidns !== pidNamespace()) return false;
  if (owner.pid === process.pid) return false;
  try {
    process.kill(owner.pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

function newOwner(): LockOwner {
  return {
    id: `${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`,
    pid: process.pid,
    host: hostname(),
    pidns: pidNamespace(),
    since: new Date().toISOString(),
  };
}

/** Writes owner.json inside `dir` atomically (temp file + rename). */
function writeOwner(dir: string, owner: LockOwner): void {
  const tmp = join(dir, `.${owner.id}.tmp`);
  writeFileSync(tmp, JSON.stringify(owner));
  renameSync(tmp, join(dir, OWNER_FILE));
}

/** The lock's current owner and lease age; null when no lock exists at the path. */
export function readLock(lockPath: string): LockState | null {
  try {
    const file = join(lockPath, OWNER_FILE);
    const ageMs = Date.now() - statSync(file).mtimeMs;
    let owner: LockOwner | null = null;
    try {
      owner = JSON.parse(readFileSync(file, 'utf8')) as LockOwner;
    } catch {
      owner = null;
    }
    return { owner, ageMs };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      try {
        // A lock folder without owner.json (never written by this code): age by the folder.
        return { owner: null, ageMs: Date.now() - statSync(lockPath).mtimeMs };
      } catch {
        return null;
      }
    }
    throw error;
  }
}

/** One attempt to create the lock; true when this owner now holds it. */
export function tryCreateLock(lockPath: string, owner: LockOwner): boolean {
  const prepared = `${lockPath}.${owner.id}.new`;
  mkdirSync(prepared);
  writeOwner(prepared, owner);
  try {
    renameSync(prepared, lockPath);
    return true;
  } catch (error) {
    rmSync(prepared, { recursive: true, force: true });
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' || code === 'ENOTEMPTY' || code === 'ENOTDIR' || code === 'EISDIR') return false;
    throw error;
  }
}

/**
 * Takes over the lock from `staleId` (the owner id a waiter judged stale, or '' for a lock with no
 * readable owner). True only for the one waiter that wins, and only if the lock is still that one.
 */
export function tryTakeOver(lockPath: string, staleId: string, owner: LockOwner): boolean {
  const marker = join(lockPath, `takeover-${staleId.replace(/[^A-Za-z0-9-]/g, '_') || 'unowned'}`);
  try {
    mkdirSync(marker);
  } catch {
    return false; // another waiter won, or the lock is gone
  }
  const now = readLock(lockPath);
  if (!now || (now.owner?.id ?? '') !== staleId) {
    rmSync(marker, { recursive: true, force: true });
    return false;
  }
  writeOwner(lockPath, owner);
  return true;
}

/**
 * Waits until this process holds `lockPath`; returns the release function. A number as the
 * second argument is the timeout in ms (the earlier signature).
 */
export async function acquireLock(
  lockPath: string,
  optionsOrTimeoutMs: LockOptions | number = {},
): Promise<() => void> {
  const options =
    typeof optionsOrTimeoutMs === 'number' ? { timeoutMs: optionsOrTimeoutMs } : optionsOrTimeoutMs;
  const timeoutMs = options.timeoutMs ?? 30 * 60_000;
  const staleMs = options.staleMs ?? DEFAULT_STALE_MS;
  const deadline = Date.now() + timeoutMs;
  const owner = newOwner();
  let told = false;
  for (;;) {
    if (tryCreateLock(lockPath, owner)) break;
    const state = readLock(lockPath);
    if (state === null) continue; // released between our attempt and the read
    const stale = state.ageMs > staleMs || ownerGone(state.owner);
    if (stale && tryTakeOver(lockPath, state.owner?.id ?? '', owner)) break;
    if (!told) {
      told = true;
      options.onWait?.(state.owner);
    }
    if (Date.now() > deadline) {
      const who = state.owner
        ? `pid ${state.owner.pid} on ${state.owner.host} since ${state.owner.since}`
        : 'an unknown owner';
      throw new Error(`timed out waiting for build lock ${lockPath} (held by ${who})`);
    }
    await sleep(50 + Math.random() * 100);
  }
  const ownerFile = join(lockPath, OWNER_FILE);
  const heartbeat = setInterval(() => {
    try {
      const now = new Date();
      utimesSync(ownerFile, now, now);
    } catch {
      // released or taken over: nothing left to renew
    }
  }, HEARTBEAT_MS);
  heartbeat.unref();
  return () => {
    clearInterval(heartbeat);
    // Remove only our own lock: move it aside under a unique name first, so the path is free at once.
    const state = readLock(lockPath);
    if (state?.owner?.id !== owner.id) return;
    const gone = `${lockPath}.${owner.id}.released`;
    try {
      renameSync(lockPath, gone);
      rmSync(gone, { recursive: true, force: true });
    } catch {
      // already gone: nothing to release
    }
  };
}
