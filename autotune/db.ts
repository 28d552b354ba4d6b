// The tuning DB: per GPU (or `cpu`) one JSON file of winning tunables, keyed by the decode shape.
//
//   shipped   autotune/db/<gpu>.json, committed with the package (model-derived defaults, and
//             measured entries where someone measured)
//   user      <cache>/autotune/<gpu>.json, written by `chunkattn tune` on this machine
//
// A lookup prefers, among fresh entries for the key: measured over model, then user over
// shipped, then the newest. An entry is stale, and ignored, when the chunkattn version or the
// compiler it was made with differs from the current one (a model entry also when the model
// version changed), or when its key has no head counts (written before the key had them). Writes are incremental merges under a lock, published with one rename, so a
// reader never sees a half-written file and concurrent tuners lose no entries.

import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { cacheDir } from '../codegen/build.ts';
import { PACKAGE_ROOT } from '../codegen/cache-key.ts';
import { acquireLock } from '../codegen/lock.ts';
import type { Toolchain } from '../codegen/toolchain.ts';
import type { BuildTarget, DType } from '../dsl/spec.ts';

export const DB_FORMAT = 1;

/** Batch sizes are bucketed to the next power of two (1, 2, 4, ... 1024). */
export function batchBucket(batch: number): number {
  if (!Number.isInteger(batch) || batch < 1)
    throw new RangeError(`batch must be a positive integer, got ${batch}`);
  return 2 ** Math.ceil(Math.log2(batch));
}

/** Shared prefix lengths (tokens) bucket to 0 (no full shared chunk) or the next power of two. */
export function sharedBucket(sharedTokens: number, chunkSize: number): number {
  if (!Number.isInteger(sharedTokens) || sharedTokens < 0)
    throw new RangeError(`shared tokens must be a non-negative integer, got ${sharedTokens}`);
  if (sharedTokens < chunkSize) return 0;
  return 2 ** Math.ceil(Math.log2(sharedTokens));
}

export interface TuningKey {
  /** A GPU id from gpus.ts, or `cpu`. */
  readonly gpu: string;
  readonly headDim: number;
  /** q/kv/out, e.g. `f16/f16/f16`. */
  readonly dtypes: `${DType}/${DType}/${DType}`;
  /**
   * Query and KV heads: the grids and the split factors depend on them, not on the group alone
   * (entries written before the key had them are stale).
   */
  readonly qHeads: number;
  readonly kvHeads: number;
  readonly chunkSize: number;
  readonly batchBucket: number;
  readonly sharedBucket: number;
}

export interface TuningShape {
  readonly gpu: string;
  readonly headDim: number;
  readonly dtype: { readonly q: DType; readonly kv: DType; readonly out: DType };
  readonly heads: { readonly q: number; readonly kv: number };
  readonly chunkSize: number;
  readonly batch: number;
  readonly sharedTokens: number;
}

export function tuningKey(shape: TuningShape): TuningKey {
  return {
    gpu: shape.gpu,
    headDim: shape.headDim,
    dtypes: `${shape.dtype.q}/${shape.dtype.kv}/${shape.dtype.out}`,
    qHeads: shape.heads.q,
    kvHeads: shape.heads.kv,
    chunkSize: shape.chunkSize,
    batchBucket: batchBucket(shape.batch),
    sharedBucket: sharedBucket(shape.sharedTokens, shape.chunkSize),
  };
}

export function keyString(key: TuningKey): string {
  return `${key.gpu} d${key.headDim} h${key.qHeads}/${key.kvHeads} ${key.dtypes} c${key.chunkSize} b${key.batchBucket} s${key.sharedBucket}`;
}

/** What an entry was made with; a difference from the current one makes it stale. */
export interface DbMeta {
  readonly chunkattn: string;
  /** nvcc's version for GPU entries; g++ and the host CPU for `cpu` entries. */
  readonly compiler: string | null;
  readonly modelVersion: number;
}

export type EntrySource = 'model' | 'measured';

export interface TuningEntry {
  readonly key: TuningKey;
  readonly source: EntrySource;
  readonly tunables: Readonly<Record<string, number>>;
  /** Model time of the winner, µs (model entries; measured entries may carry it beside). */
  readonly predictedUs: number | null;
  /** Measured time of the winner, µs (measured entries only). */
  readonly measuredUs: number | null;
  readonly meta: DbMeta;
  /** ISO time the entry was written. */
  readonly at: string;
}

export interface TuningDb {
  readonly format: typeof DB_FORMAT;
  readonly gpu: string;
  readonly entries: readonly TuningEntry[];
}

export class TuningDbError extends Error {
  override name = 'TuningDbError';
}

export const SHIPPED_DB_DIR = join(PACKAGE_ROOT, 'autotune', 'db');

export function shippedDbPath(gpu: string): string {
  return join(SHIPPED_DB_DIR, `${gpu}.json`);
}

export function userDbPath(gpu: string, cacheRoot = cacheDir()): string {
  return join(cacheRoot, 'autotune', `${gpu}.json`);
}

/** The metadata current entries carry for a build target. */
export function currentMeta(target: BuildTarget, toolchain: Toolchain, modelVersion: number): DbMeta {
  const version = (
    JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }
  ).version;
  const compiler =
    target === 'cpu'
      ? `${toolchain.gxx?.version ?? 'no g++'} / ${toolchain.hostCpu}`
      : (toolchain.nvcc?.version ?? null);
  return { chunkattn: version, compiler, modelVersion };
}

/** Whether an entry's key predates the head counts (it then says nothing about this spec's heads). */
export function hasLegacyKey(entry: TuningEntry): boolean {
  return !Number.isInteger(entry.key.qHeads) || !Number.isInteger(entry.key.kvHeads);
}

export function isStale(entry: TuningEntry, current: DbMeta): boolean {
  if (hasLegacyKey(entry)) return true;
  if (entry.meta.chunkattn !== current.chunkattn || entry.meta.compiler !== current.compiler) return true;
  return entry.source === 'model' && entry.meta.modelVersion !== current.modelVersion;
}

// --- reading ------------------------------------------------------------------------------------

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
const isNumberOrNull = (v: unknown) => v === null || (typeof v === 'number' && Number.isFinite(v));

function checkEntry(value: unknown, where: string): TuningEntry {
  const fail = (what: string): never => {
    throw new TuningDbError(`${where}: ${what}`);
  };
  if (!isObject(value)) return fail('not an object');
  const { key, source, tunables, predictedUs, measuredUs, meta, at } = value;
  if (!isObject(key)) return fail('key is not an object');
  for (const field of ['headDim', 'chunkSize', 'batchBucket', 'sharedBucket'])
    if (!Number.isInteger(key[field])) fail(`key.${field} must be an integer`);
  // Head counts: absent in entries written before the key had them (read, then stale: isStale).
  for (const field of ['qHeads', 'kvHeads'])
    if (key[field] !== undefined && !Number.isInteger(key[field])) fail(`key.${field} must be an integer`);
  if (typeof key.gpu !== 'string') fail('key.gpu must be a string');
  if (typeof key.dtypes !== 'string' || !/^(f16|bf16|f32)\/(f16|bf16|f32)\/(f16|bf16|f32)$/.test(key.dtypes))
    fail('key.dtypes must be q/kv/out dtypes, e.g. f16/f16/f16');
  if (source !== 'model' && source !== 'measured')
    fail(`source must be model or measured, got ${String(source)}`);
  if (
    !isObject(tunables) ||
    !Object.values(tunables).every((v) => typeof v === 'number' && Number.isFinite(v))
  )
    fail('tunables must map names to numbers');
  if (!isNumberOrNull(predictedUs) || !isNumberOrNull(measuredUs))
    fail('predictedUs/measuredUs must be numbers or null');
  if (source === 'measured' && measuredUs === null) fail('a measured entry needs measuredUs');
  if (!isObject(meta) || typeof meta.chunkattn !== 'string' || !Number.isInteger(meta.modelVersion))
    return fail('meta must have chunkattn (string) and modelVersion (integer)');
  if (meta.compiler !== null && typeof meta.compiler !== 'string')
    fail('meta.compiler must be a string or null');
  if (typeof at !== 'string' || Number.isNaN(Date.parse(at))) fail('at must be an ISO date');
  return value as unknown as TuningEntry;
}

/** Reads a DB file; a missing file is an empty DB. Malformed content throws naming the file. */
export function readDb(path: string, gpu: string): TuningDb {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { format: DB_FORMAT, gpu, entries: [] };
    throw error;
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new TuningDbError(`${path}: not valid JSON (${(error as Error).message})`);
  }
  if (!isObject(data) || data.format !== DB_FORMAT)
    throw new TuningDbError(`${path}: expected {"format": ${DB_FORMAT}, ...}; delete or regenerate the file`);
  if (data.gpu !== gpu)
    throw new TuningDbError(`${path}: holds entries for '${String(data.gpu)}', not '${gpu}'`);
  if (!Array.isArray(data.entries)) throw new TuningDbError(`${path}: entries must be an array`);
  const entries = data.entries.map((e, i) => checkEntry(e, `${path}: entries[${i}]`));
  for (const entry of entries)
    if (entry.key.gpu !== gpu)
      throw new TuningDbError(`${path}: an entry for '${entry.key.gpu}' in the ${gpu} DB`);
  return { format: DB_FORMAT, gpu, entries };
}

// --- merging and writing ------------------------------------------------------------------------

const entryId = (e: TuningEntry) => `${keyString(e.key)} ${e.source}`;

export interface MergeResult {
  readonly db: TuningDb;
  readonly added: number;
  readonly replaced: number;
  readonly droppedStale: number;
}

/**
 * Incoming entries replace existing ones with the same key and source; stale existing entries
 * are dropped. The result is sorted, so the file diffs cleanly.
 */
export function mergeDb(existing: TuningDb, incoming: readonly TuningEntry[], current: DbMeta): MergeResult {
  const byId = new Map<string, TuningEntry>();
  let droppedStale = 0;
  for (const entry of existing.entries) {
    if (isStale(entry, current)) droppedStale++;
    else byId.set(entryId(entry), entry);
  }
  let added = 0;
  let replaced = 0;
  for (const entry of incoming) {
    if (entry.key.gpu !== existing.gpu)
      throw new TuningDbError(`cannot merge an entry for '${entry.key.gpu}' into the ${existing.gpu} DB`);
    if (byId.has(entryId(entry))) replaced++;
    else added++;
    byId.set(entryId(entry), entry);
  }
  const entries = [...byId.values()].sort((a, b) =>
    entryId(a) < entryId(b) ? -1 : entryId(a) > entryId(b) ? 1 : 0,
  );
  return { db: { format: DB_FORMAT, gpu: existing.gpu, entries }, added, replaced, droppedStale };
}

/** Writes a temporary file beside `path` and renames it over: readers see old or new, never half. */
export function writeDbAtomic(path: string, db: TuningDb): void {
  mkdirSync(dirname(path), { recursive: true });
  const temporary = `${path}.${process.pid}-${Math.random().toString(36).slice(2)}.tmp`;
  writeFileSync(temporary, JSON.stringify(db, null, 2) + '\n');
  renameSync(temporary, path);
}

/** Read, merge and write back under a lock, so concurrent tuners of one GPU lose nothing. */
export async function updateDb(
  path: string,
  gpu: string,
  incoming: readonly TuningEntry[],
  current: DbMeta,
): Promise<Omit<MergeResult, 'db'>> {
  mkdirSync(dirname(path), { recursive: true });
  const release = await acquireLock(`${path}.lock`, 60_000);
  try {
    const { db, ...counts } = mergeDb(readDb(path, gpu), incoming, current);
    writeDbAtomic(path, db);
    return counts;
  } finally {
    release();
  }
}

// --- lookup -------------------------------------------------------------------------------------

export type DbOrigin = 'user' | 'shipped';

export interface TuningHit {
  readonly entry: TuningEntry;
  readonly origin: DbOrigin;
}

/** The best fresh entry for a key: measured over model, user over shipped, newest first. */
export function lookup(
  dbs: Readonly<Partial<Record<DbOrigin, TuningDb>>>,
  key: TuningKey,
  current: DbMeta,
): TuningHit | null {
  const wanted = keyString(key);
  const rank = (hit: TuningHit) =>
    [
      hit.entry.source === 'measured' ? 0 : 1,
      hit.origin === 'user' ? 0 : 1,
      -Date.parse(hit.entry.at),
    ] as const;
  let best: TuningHit | null = null;
  for (const origin of ['user', 'shipped'] as const) {
    for (const entry of dbs[origin]?.entries ?? []) {
      if (keyString(entry.key) !== wanted || isStale(entry, current)) continue;
      const hit = { entry, origin };
      if (!best) best = hit;
      else {
        const [a, b] = [rank(hit), rank(best)];
        const better = a[0] !== b[0] ? a[0] < b[0] : a[1] !== b[1] ? a[1] < b[1] : a[2] < b[2];
        if (better) best = hit;
      }
    }
  }
  return best;
}

/** Both DBs of a GPU: the shipped one and this user's (in the cache folder). */
export function loadDbs(gpu: string, cacheRoot = cacheDir()): Record<DbOrigin, TuningDb> {
  return { user: readDb(userDbPath(gpu, cacheRoot), gpu), shipped: readDb(shippedDbPath(gpu), gpu) };
}
