// `sparse: progressive({...})`: validation with located errors, normalization, the spec's JSON and
// cache key, and the per-Attention.create overrides.

import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { planModule } from '../codegen/index.ts';
import { attention } from '../dsl/attention.ts';
import { DslError, progressive, SPARSE_DEFAULTS, validateSpec, withOverrides } from '../dsl/index.ts';
import { ArgumentError, Attention } from '../index.ts';
import { resolveSparse } from '../runtime/psa-options.ts';

const base = {
  name: 'psa-dsl',
  heads: { q: 8, kv: 2 },
  headDim: 64,
  dtype: 'f32',
  chunkSize: 16,
  targets: ['cpu'],
} as const;

function rejects(sparse: unknown): DslError {
  try {
    attention({ ...base, sparse } as never);
  } catch (error) {
    expect(error).toBeInstanceOf(DslError);
    return error as DslError;
  }
  throw new Error('accepted');
}

describe('sparse: progressive()', () => {
  test('normalizes every option, with the defaults filled in', () => {
    const spec = attention({ ...base, sparse: progressive({ mass: 0.9, kMax: 64 }) });
    expect(spec.sparse).toEqual({ ...SPARSE_DEFAULTS, kind: 'progressive', mass: 0.9, kMax: 64 });
    expect(attention(base).sparse).toBeUndefined();
    expect(Object.isFrozen(spec.sparse)).toBe(true);
  });

  test.each([
    [{ mass: 0 }, 'sparse.mass', 'out of range'],
    [{ mass: 1.5 }, 'sparse.mass', 'out of range'],
    [{ mass: Number.NaN }, 'sparse.mass', 'out of range'],
    [{ mass: '0.9' }, 'sparse.mass', 'out of range'],
    [{ kMin: 9, kMax: 8 }, 'sparse.kMin', 'more than kMax'],
    [{ kMax: 0 }, 'sparse.kMax', 'selects no chunk'],
    [{ kMin: 1.5 }, 'sparse.kMin', 'not an integer'],
    [{ denseLayers: -1 }, 'sparse.denseLayers', 'not an integer'],
    [{ safetyNet: 0.9 }, 'sparse.safetyNet', 'out of range'],
    [{ guard: 1 }, 'sparse.guard', 'not a boolean'],
    [{ mas: 0.9 }, 'sparse.mas', 'unknown field'],
    [{ kind: 'quest' }, 'sparse.kind', 'not a sparse kind'],
  ])('rejects %j at %s, at the attention() call site', (options, path, phrase) => {
    const error = rejects({ kind: 'progressive', ...options });
    expect(error.path).toBe(path);
    expect(error.message).toContain(phrase);
    expect(error.message).toContain('allowed:');
    expect(error.loc?.file).toMatch(/dsl-sparse\.test\.ts$/);
  });

  test('rejects a value that is not progressive(...)', () => {
    expect(rejects(0.9).path).toBe('sparse');
    expect(rejects([0.9]).path).toBe('sparse');
  });

  test('survives JSON and withOverrides, and enters the cache key', async () => {
    const spec = attention({ ...base, sparse: progressive({ mass: 0.9 }) });
    expect(validateSpec(JSON.parse(JSON.stringify(spec))).sparse).toEqual(spec.sparse);
    expect(withOverrides(spec, { headDim: 128 }).sparse).toEqual(spec.sparse);
    const key = async (s: typeof spec) => (await planModule(s, { target: 'cpu' })).key;
    const dense = attention(base);
    const other = attention({ ...base, sparse: progressive({ mass: 0.8 }) });
    const keys = await Promise.all([
      key(spec),
      key(dense),
      key(other),
      key(attention({ ...base, sparse: progressive({ mass: 0.9 }) })),
    ]);
    expect(new Set(keys.slice(0, 3)).size).toBe(3);
    expect(keys[3]).toBe(keys[0]);
  });

  test('Attention.create overrides validate the same way (fast-check) and reject before building', async () => {
    const spec = attention({ ...base, sparse: progressive({ mass: 0.9, kMax: 32 }) });
    fc.assert(
      fc.property(
        fc.double({ min: 0.01, max: 1, noNaN: true }),
        fc.integer({ min: 1, max: 1000 }),
        (mass, kMax) => {
          const resolved = resolveSparse(spec, { mass, kMax });
          expect(resolved).toEqual({ ...spec.sparse, mass, kMax });
        },
      ),
    );
    expect(resolveSparse(spec, false)).toBeUndefined();
    expect(resolveSparse(attention(base), { mass: 0.5 })).toEqual({
      ...SPARSE_DEFAULTS,
      kind: 'progressive',
      mass: 0.5,
    });
    let loaded = false;
    const loader = async () => {
      loaded = true;
      throw new Error('not reached');
    };
    await expect(
      Attention.create(spec, { layers: 1, capacityTokens: 64, sparse: { mass: 2 }, loader }),
    ).rejects.toThrow(ArgumentError);
    await expect(
      Attention.create(spec, { layers: 1, capacityTokens: 64, sparse: { mass: 2 }, loader }),
    ).rejects.toThrow(/options\.sparse\.mass/);
    expect(loaded).toBe(false);
  });
});
