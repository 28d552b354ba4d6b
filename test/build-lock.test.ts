// The build lock is a lease, not a PID check: a builder in another PID namespace (a container
// sharing the cache) keeps its lock while it renews it, a stale lock is taken over whatever PID it
// names, and a takeover never removes a lock it did not judge stale (no read-then-unlink race).

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { describe, expect, test } from 'vitest';
import { acquireLock, type LockOwner, readLock, tryCreateLock, tryTakeOver } from '../codegen/lock.ts';
import { REPO } from './cli-harness.ts';

function owner(id: string, fields: Partial<LockOwner> = {}): LockOwner {
  return {
    id,
    pid: 999_999,
    host: 'another-container',
    pidns: 'pid:[1]',
    since: '2026-01-01T00:00:00.000Z',
    ...fields,
  };
}

function freshLockPath(): string {
  return join(mkdtempSync(join(tmpdir(), 'chunkattn-lock-')), 'key.lease');
}

/** Makes a lock look abandoned: its lease last renewed `ageMs` ago. */
function age(lockPath: string, ageMs: number): void {
  const then = new Date(Date.now() - ageMs);
  utimesSync(join(lockPath, 'owner.json'), then, then);
}

describe('forced interleavings', () => {
  test('two waiters that both judged a lock stale: exactly one takes it over', () => {
    const path = freshLockPath();
    expect(tryCreateLock(path, owner('dead'))).toBe(true);
    age(path, 10 * 60_000);
    const seenByA = readLock(path)!;
    const seenByB = readLock(path)!;
    expect(seenByA.owner!.id).toBe('dead');
    expect(seenByB.owner!.id).toBe('dead');
    expect(tryTakeOver(path, seenByA.owner!.id, owner('A'))).toBe(true);
    expect(tryTakeOver(path, seenByB.owner!.id, owner('B'))).toBe(false);
    expect(readLock(path)!.owner!.id).toBe('A');
  });

  test('a waiter whose stale judgement predates a release and a new holder does not take the new lock', async () => {
    const path = freshLockPath();
    expect(tryCreateLock(path, owner('old'))).toBe(true);
    age(path, 10 * 60_000);
    const judged = readLock(path)!; // waiter W reads "old, stale" ...
    expect(tryTakeOver(path, 'old', owner('A'))).toBe(true); // ... A takes over first,
    // ... A's lock is released and C acquires a fresh one, all before W acts.
    const { rmSync } = await import('node:fs');
    rmSync(path, { recursive: true });
    expect(tryCreateLock(path, owner('C'))).toBe(true);
    expect(tryTakeOver(path, judged.owner!.id, owner('W'))).toBe(false);
    expect(readLock(path)!.owner!.id).toBe('C');
  });

  test('20 concurrent waiters on one stale lock: never two holders at once', async () => {
    const path = freshLockPath();
    expect(tryCreateLock(path, owner('dead'))).toBe(true);
    age(path, 10 * 60_000);
    let holders = 0;
    let most = 0;
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        const release = await acquireLock(path, { staleMs: 5_000 });
        holders++;
        most = Math.max(most, holders);
        await sleep(5);
        holders--;
        release();
      }),
    );
    expect(most).toBe(1);
    expect(existsSync(path)).toBe(false);
  });
});

describe('leases, not PIDs', () => {
  test('a live lock whose PID this process cannot see (another namespace) is waited for, not taken', async () => {
    const path = freshLockPath();
    expect(tryCreateLock(path, owner('foreign'))).toBe(true); // pid 999999: not alive here
    const waits: (LockOwner | null)[] = [];
    const error = await acquireLock(path, { timeoutMs: 1_000, onWait: (o) => waits.push(o) }).catch(
      (e: unknown) => e,
    );
    expect(String(error)).toMatch(
      /timed out waiting for build lock .* \(held by pid 999999 on another-container since 2026-01-01/,
    );
    expect(waits.map((o) => o?.id)).toEqual(['foreign']);
    expect(readLock(path)!.owner!.id).toBe('foreign');
  });

  test('a stale lock naming PID 1 (alive: init or a container entrypoint) is taken over once its lease expires', async () => {
    const path = freshLockPath();
    expect(tryCreateLock(path, owner('entrypoint', { pid: 1, host: hostname() }))).toBe(true);
    age(path, 60_000);
    const started = performance.now();
    const release = await acquireLock(path, { staleMs: 30_000, timeoutMs: 5_000 });
    expect(performance.now() - started).toBeLessThan(2_000);
    expect(readLock(path)!.owner!.pid).toBe(process.pid);
    release();
  });

  test('a builder in another PID namespace keeps its lock while it renews the lease; the waiter gets it after', async () => {
    const path = freshLockPath();
    const done = join(path, '..', 'holder-released');
    const script = join(path, '..', 'holder.mts');
    writeFileSync(
      script,
      `import { writeFileSync } from 'node:fs';\n` +
        `import { acquireLock } from ${JSON.stringify(join(REPO, 'codegen', 'lock.ts'))};\n` +
        `const release = await acquireLock(${JSON.stringify(path)});\n` +
        `console.log('held');\n` +
        `await new Promise((r) => setTimeout(r, 6000));\n` +
        `writeFileSync(${JSON.stringify(done)}, '');\n` +
        `release();\n`,
    );
    // A real PID namespace where unshare works (root); otherwise the same process, whose PID
    // the lease ignores while it is renewed.
    const unshare = spawnSync('unshare', ['-pf', '--mount-proc', 'true']).status === 0;
    const command = unshare
      ? ['unshare', '-pf', '--mount-proc', process.execPath, '--import', 'tsx', script]
      : [process.execPath, '--import', 'tsx', script];
    const holder = execa(command[0]!, command.slice(1), { cwd: REPO, reject: false });
    for (let i = 0; i < 300 && !existsSync(join(path, 'owner.json')); i++) await sleep(50);
    const seen = readLock(path)!;
    if (unshare) expect(seen.owner!.pid).toBeLessThan(10); // its PID inside the new namespace
    // A lease shorter than the hold but longer than the heartbeat: renewals keep it alive.
    const release = await acquireLock(path, { staleMs: 4_000, timeoutMs: 60_000 });
    expect(existsSync(done)).toBe(true);
    release();
    const result = await holder;
    expect(result.exitCode, result.stderr).toBe(0);
  }, 60_000);
});
