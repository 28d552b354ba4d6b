import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, test } from 'vitest';
import {
  batchBucket,
  type DbMeta,
  hasLegacyKey,
  isStale,
  keyString,
  loadDbs,
  lookup,
  mergeDb,
  readDb,
  sharedBucket,
  type TuningDb,
  type TuningEntry,
  tuningKey,
  updateDb,
  userDbPath,
  writeDbAtomic,
} from '../autotune/db.ts';

const META: DbMeta = { chunkattn: '0.1.0', compiler: 'release 13.0, V13.0.88', modelVersion: 1 };

const key = (batch: number, sharedTokens = 0) =>
  tuningKey({
    gpu: 'a100-80',
    headDim: 128,
    dtype: { q: 'f16', kv: 'f16', out: 'f16' },
    heads: { q: 32, kv: 32 },
    chunkSize: 64,
    batch,
    sharedTokens,
  });

const entry = (overrides: Partial<TuningEntry> = {}): TuningEntry => ({
  key: key(32, 1024),
  source: 'model',
  tunables: { phase1Rows: 64 },
  predictedUs: 50,
  measuredUs: null,
  meta: META,
  at: '2026-12-01T00:00:00.000Z',
  ...overrides,
});

const emptyDb = (gpu = 'a100-80'): TuningDb => ({ format: 1, gpu, entries: [] });
const tempDir = () => mkdtempSync(join(tmpdir(), 'chunkattn-db-'));

describe('keys', () => {
  test('batch and shared length fall into power-of-two buckets', () => {
    expect([1, 2, 3, 17, 32, 33, 1000].map(batchBucket)).toEqual([1, 2, 4, 32, 32, 64, 1024]);
    // Below one chunk nothing is shared by a full chunk: bucket 0.
    expect([0, 63, 64, 65, 2048, 2049].map((t) => sharedBucket(t, 64))).toEqual([0, 0, 64, 128, 2048, 4096]);
    expect(() => batchBucket(0)).toThrow(/positive integer/);
    expect(() => sharedBucket(-1, 64)).toThrow(/non-negative/);
  });

  test('shapes in one bucket share a key; others do not', () => {
    expect(keyString(key(17, 1500))).toBe(keyString(key(32, 2048)));
    expect(keyString(key(17, 1500))).toBe('a100-80 d128 h32/32 f16/f16/f16 c64 b32 s2048');
    expect(keyString(key(33, 1500))).not.toBe(keyString(key(32, 1500)));
  });
});

describe('read and write', () => {
  test('a missing file is an empty DB; a written DB reads back equal, with no temporary left', () => {
    const dir = tempDir();
    const path = join(dir, 'a100-80.json');
    expect(readDb(path, 'a100-80')).toEqual(emptyDb());
    const db: TuningDb = { format: 1, gpu: 'a100-80', entries: [entry()] };
    writeDbAtomic(path, db);
    expect(readDb(path, 'a100-80')).toEqual(db);
    expect(readdirSync(dir)).toEqual(['a100-80.json']);
  });

  test('malformed files fail naming the file and the field', () => {
    const path = join(tempDir(), 'a100-80.json');
    writeFileSync(path, '{ not json');
    expect(() => readDb(path, 'a100-80')).toThrow(/a100-80\.json: not valid JSON/);
    writeFileSync(path, JSON.stringify({ format: 2, gpu: 'a100-80', entries: [] }));
    expect(() => readDb(path, 'a100-80')).toThrow(/expected \{"format": 1/);
    writeFileSync(path, JSON.stringify({ format: 1, gpu: 'l4', entries: [] }));
    expect(() => readDb(path, 'a100-80')).toThrow(/holds entries for 'l4'/);
    const bad = { ...entry(), key: { ...entry().key, headDim: 'x' } };
    writeFileSync(path, JSON.stringify({ format: 1, gpu: 'a100-80', entries: [entry(), bad] }));
    expect(() => readDb(path, 'a100-80')).toThrow(/entries\[1\]: key\.headDim must be an integer/);
    const unmeasured = entry({ source: 'measured', measuredUs: null });
    writeFileSync(path, JSON.stringify({ format: 1, gpu: 'a100-80', entries: [unmeasured] }));
    expect(() => readDb(path, 'a100-80')).toThrow(/a measured entry needs measuredUs/);
  });
});

describe('merge', () => {
  test('adds new keys, replaces the same key and source, keeps model and measured side by side', () => {
    const base = mergeDb(emptyDb(), [entry()], META).db;
    const newer = entry({ tunables: { phase1Rows: 32 }, predictedUs: 40, at: '2026-12-02T00:00:00.000Z' });
    const measured = entry({ source: 'measured', measuredUs: 44, at: '2026-12-02T00:00:00.000Z' });
    const other = entry({ key: key(8, 1024) });
    const result = mergeDb(base, [newer, measured, other], META);
    expect(result).toMatchObject({ added: 2, replaced: 1, droppedStale: 0 });
    expect(result.db.entries).toHaveLength(3);
    expect(result.db.entries.find((e) => e.source === 'model' && e.key.batchBucket === 32)?.tunables).toEqual(
      {
        phase1Rows: 32,
      },
    );
  });

  test('stale entries are dropped on merge', () => {
    const oldVersion = entry({ key: key(1), meta: { ...META, chunkattn: '0.0.9' } });
    const oldModel = entry({ key: key(2), meta: { ...META, modelVersion: 0 } });
    const otherNvcc = entry({
      key: key(4),
      source: 'measured',
      measuredUs: 5,
      meta: { ...META, compiler: 'release 12.4' },
    });
    const fresh = entry({ key: key(8) });
    const db: TuningDb = { format: 1, gpu: 'a100-80', entries: [oldVersion, oldModel, otherNvcc, fresh] };
    const result = mergeDb(db, [], META);
    expect(result.droppedStale).toBe(3);
    expect(result.db.entries).toEqual([fresh]);
  });

  test('entries whose key has no head counts (written before it had them) read, then count as stale: dropped, never looked up', () => {
    const { qHeads: _q, kvHeads: _kv, ...legacyKey } = key(32, 1024);
    const legacy = { ...entry(), key: { ...legacyKey, group: 1 } } as unknown as TuningEntry;
    const path = join(tempDir(), 'a100-80.json');
    writeFileSync(path, JSON.stringify({ format: 1, gpu: 'a100-80', entries: [legacy] }));
    const db = readDb(path, 'a100-80');
    expect(hasLegacyKey(db.entries[0]!)).toBe(true);
    expect(isStale(db.entries[0]!, META)).toBe(true);
    expect(lookup({ shipped: db }, key(32, 1024), META)).toBeNull();
    expect(mergeDb(db, [entry({ key: key(8) })], META)).toMatchObject({ droppedStale: 1, added: 1 });
    // Head counts are part of the key: another head count is another kernel.
    const llama3 = tuningKey({
      gpu: 'a100-80',
      headDim: 128,
      dtype: { q: 'f16', kv: 'f16', out: 'f16' },
      heads: { q: 32, kv: 8 },
      chunkSize: 64,
      batch: 32,
      sharedTokens: 1024,
    });
    expect(keyString(llama3)).not.toBe(keyString(key(32, 1024)));
    expect(lookup({ shipped: { format: 1, gpu: 'a100-80', entries: [entry()] } }, llama3, META)).toBeNull();
    const half = { ...entry(), key: { ...key(32, 1024), kvHeads: 'x' } };
    writeFileSync(path, JSON.stringify({ format: 1, gpu: 'a100-80', entries: [half] }));
    expect(() => readDb(path, 'a100-80')).toThrow(/key\.kvHeads must be an integer/);
  });

  test('an entry for another GPU is refused', () => {
    expect(() => mergeDb(emptyDb('l4'), [entry()], META)).toThrow(/'a100-80' into the l4 DB/);
  });

  test('incremental updates from concurrent processes lose no entry', async () => {
    // Separate processes, so the lock (not the event loop) is what serializes read-merge-write.
    const path = join(tempDir(), 'a100-80.json');
    // Each writes 30 entries starting at one moment, after all have loaded.
    const startAt = Date.now() + 4000;
    const writer = (first: number) =>
      execa(
        process.execPath,
        [
          '--import',
          'tsx',
          '--input-type=module',
          '-e',
          `import { updateDb, tuningKey } from './autotune/db.ts';
           const meta = ${JSON.stringify(META)};
           while (Date.now() < ${startAt}) await new Promise((r) => setTimeout(r, 5));
           for (let kv = ${first}; kv < ${first + 30}; kv++) {
             const key = tuningKey({ gpu: 'a100-80', headDim: 128, dtype: { q: 'f16', kv: 'f16', out: 'f16' },
                                     heads: { q: kv, kv }, chunkSize: 64, batch: 1, sharedTokens: 0 });
             await updateDb(${JSON.stringify(path)}, 'a100-80', [{ key, source: 'model', tunables: {},
               predictedUs: 1, measuredUs: null, meta, at: new Date().toISOString() }], meta);
           }`,
        ],
        { cwd: join(import.meta.dirname, '..') },
      );
    await Promise.all([writer(1), writer(31), writer(61)]);
    const groups = readDb(path, 'a100-80').entries.map((e) => e.key.kvHeads);
    expect(groups.sort((x, y) => x - y)).toEqual(Array.from({ length: 90 }, (_, i) => i + 1));
    const again = await updateDb(path, 'a100-80', [entry({ key: key(1, 0), predictedUs: 1 })], META);
    expect(again).toEqual({ added: 0, replaced: 1, droppedStale: 0 });
    expect(JSON.parse(readFileSync(path, 'utf8')).entries).toHaveLength(90);
  });
});

describe('invalidation and lookup', () => {
  test('the chunkattn version and the compiler invalidate every entry; the model version only model entries', () => {
    expect(isStale(entry(), META)).toBe(false);
    expect(isStale(entry(), { ...META, chunkattn: '0.2.0' })).toBe(true);
    expect(isStale(entry(), { ...META, compiler: 'release 12.4' })).toBe(true);
    expect(isStale(entry(), { ...META, modelVersion: 2 })).toBe(true);
    const measured = entry({ source: 'measured', measuredUs: 10 });
    expect(isStale(measured, { ...META, modelVersion: 2 })).toBe(false);
  });

  test('measured beats model, user beats shipped, newer beats older; stale entries are never returned', () => {
    const shippedModel = entry({ tunables: { pick: 1 } });
    const userModel = entry({ tunables: { pick: 2 } });
    const shippedMeasured = entry({ source: 'measured', measuredUs: 9, tunables: { pick: 3 } });
    const db = (entries: TuningEntry[]): TuningDb => ({ format: 1, gpu: 'a100-80', entries });
    const k = key(32, 1024);
    expect(lookup({ shipped: db([shippedModel]) }, k, META)?.entry.tunables).toEqual({ pick: 1 });
    expect(lookup({ shipped: db([shippedModel]), user: db([userModel]) }, k, META)).toMatchObject({
      origin: 'user',
      entry: { tunables: { pick: 2 } },
    });
    // A measurement wins over a model guess wherever it lives.
    expect(
      lookup({ shipped: db([shippedModel, shippedMeasured]), user: db([userModel]) }, k, META)?.entry
        .tunables,
    ).toEqual({ pick: 3 });
    const olderUser = entry({
      source: 'measured',
      measuredUs: 8,
      tunables: { pick: 4 },
      at: '2026-11-01T00:00:00Z',
    });
    const newerUser = entry({
      source: 'measured',
      measuredUs: 8,
      tunables: { pick: 5 },
      at: '2026-12-02T00:00:00Z',
    });
    expect(lookup({ user: db([olderUser, newerUser]) }, k, META)?.entry.tunables).toEqual({ pick: 5 });
    // Stale: a new chunkattn version ignores them all.
    expect(
      lookup({ shipped: db([shippedModel, shippedMeasured]) }, k, { ...META, chunkattn: '9.9.9' }),
    ).toBeNull();
    // Another bucket finds nothing.
    expect(lookup({ shipped: db([shippedModel]) }, key(64, 1024), META)).toBeNull();
  });

  test('the user DB lives in the cache folder and overrides the shipped one', async () => {
    const cache = tempDir();
    const path = userDbPath('a100-80', cache);
    expect(path).toBe(join(cache, 'autotune', 'a100-80.json'));
    await updateDb(path, 'a100-80', [entry({ tunables: { pick: 7 } })], META);
    const dbs = loadDbs('a100-80', cache);
    const shipped: TuningDb = {
      ...dbs.shipped,
      entries: [...dbs.shipped.entries, entry({ tunables: { pick: 6 } })],
    };
    expect(lookup({ ...dbs, shipped }, key(32, 1024), META)).toMatchObject({
      origin: 'user',
      entry: { tunables: { pick: 7 } },
    });
  });
});
