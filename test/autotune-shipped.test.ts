// The shipped model-derived DBs (autotune/db/<gpu>.json, scripts/ship-dbs.ts) cover every example
// spec on every GPU of the table: dispatch finds a fresh entry of its own bucket for every shipped
// shape (SHIPPED_SHAPES), keyed by the spec's heads, and serves every other bucket of the tune
// command's GPU shapes from the nearest tuned one.

import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { readDb, shippedDbPath } from '../autotune/db.ts';
import { dbDispatchRules } from '../autotune/dispatch.ts';
import { GPU_IDS } from '../autotune/gpus.ts';
import { loadModelParams } from '../autotune/model-params.ts';
import { loadSpecsWithFlags } from '../cli/commands/compile.ts';
import { gpuShapes, SHIPPED_SHAPES } from '../cli/commands/tune.ts';
import { findToolchain } from '../codegen/index.ts';

const EXAMPLES = readdirSync('examples')
  .filter((f) => f.endsWith('.ts'))
  .sort()
  .map((f) => join('examples', f));

describe('shipped tuning DBs', () => {
  test('there are example specs with different heads to cover', async () => {
    const specs = await Promise.all(EXAMPLES.map(async (f) => (await loadSpecsWithFlags(f, {}))[0]!));
    expect(new Set(specs.map((s) => `${s.heads.q}/${s.heads.kv}/${s.dtype.kv}`)).size).toBe(specs.length);
    expect(specs.length).toBeGreaterThanOrEqual(3);
  });

  test.each(EXAMPLES)('%s: every GPU of the table, every bucket, its own fresh model entry', async (file) => {
    const [spec] = await loadSpecsWithFlags(file, {});
    const toolchain = await findToolchain();
    const modelVersion = loadModelParams().modelVersion;
    for (const gpu of GPU_IDS) {
      const db = readDb(shippedDbPath(gpu), gpu);
      const mine = db.entries.filter(
        (e) =>
          e.key.qHeads === spec!.heads.q &&
          e.key.kvHeads === spec!.heads.kv &&
          e.key.headDim === spec!.headDim &&
          e.key.chunkSize === spec!.chunkSize &&
          e.key.dtypes === `${spec!.dtype.q}/${spec!.dtype.kv}/${spec!.dtype.out}`,
      );
      expect(mine.length, `${gpu}: ${spec!.name}`).toBeGreaterThanOrEqual(SHIPPED_SHAPES.length);
      for (const e of mine) {
        expect(e.source).toBe('model');
        expect(e.meta.modelVersion).toBe(modelVersion);
        expect(e.predictedUs).toBeGreaterThan(0);
      }
      // Dispatch reads them (as on a machine with the nvcc they were made with, which this one
      // has when it has nvcc at all: the entries are stale under another compiler by design).
      const compiler = mine[0]!.meta.compiler;
      const sameNvcc = { ...toolchain, nvcc: { path: 'nvcc', version: compiler! } } as typeof toolchain;
      const rules = await dbDispatchRules(spec!, 'cuda', {
        gpu,
        toolchain: sameNvcc,
        dbs: { shipped: db },
      });
      expect(rules, `${gpu}: ${spec!.name}`).not.toBeNull();
      for (const shape of gpuShapes()) {
        const choice = rules!.choose(shape);
        expect(choice.reason, `${gpu} ${spec!.name} b=${shape.batch} s=${shape.sharedTokens}`).toMatch(
          / model \(shipped DB/,
        );
        // Its own bucket where one ships; the others from the nearest tuned one.
        const shipped = SHIPPED_SHAPES.some(
          (s) => s.batch === shape.batch && s.sharedTokens === shape.sharedTokens,
        );
        if (shipped) expect(choice.reason).not.toMatch(/nearest/);
      }
    }
  });
});
