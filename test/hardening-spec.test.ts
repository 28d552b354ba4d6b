// Specs that did not come from attention(): JSON copies, plain objects, forged brands, hostile
// values. Each is validated again wherever it enters (plan, Attention.create), C++ is generated
// only from the checked IR, and no path leaves the cache.

import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { findToolchain, moduleDir, PlanError, plan, render } from '../codegen/index.ts';
import { attention, DslError, exprToCpp, type KernelSpec, validateSpec } from '../dsl/index.ts';
import { ArgumentError, Attention, ChunkattnError } from '../index.ts';
import { REPO, runCli } from './cli-harness.ts';

/** Stops Attention.create at the loader: everything before it (validation) has run. */
class LoaderReached extends Error {}

const reachLoader = async (): Promise<never> => {
  throw new LoaderReached();
};

function baseSpec(): KernelSpec {
  return attention({
    name: 'hostile-base',
    heads: { q: 4, kv: 2 },
    headDim: 64,
    dtype: 'f32',
    chunkSize: 16,
    targets: ['cpu'],
    params: { softcap: 5, window: 37 },
    scoreMod: (s, _pos, p) => p.softcap * Math.tanh(s / p.softcap),
    mask: (pos, p) => pos.q - pos.kv < p.window,
  });
}

const INJECTION =
  'score; } }; static int pwned = system("touch PWNED"); struct Y { float f(float score) { return score';

function jsonCopy(spec: KernelSpec): Record<string, unknown> {
  return JSON.parse(JSON.stringify(spec)) as Record<string, unknown>;
}

describe('a spec of any origin is validated again', () => {
  test("a JSON spec named '../../escaped' is refused by Attention.create; nothing is written outside the cache", async () => {
    const root = mkdtempSync(join(tmpdir(), 'chunkattn-escape-'));
    const cache = join(root, 'a', 'b', 'cache');
    const saved = process.env.CHUNKATTN_CACHE;
    process.env.CHUNKATTN_CACHE = cache;
    try {
      const spec = { ...jsonCopy(baseSpec()), name: '../../escaped' };
      const error = await Attention.create(spec as never, {
        layers: 1,
        capacityTokens: 64,
        target: 'cpu',
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(DslError);
      expect((error as DslError).path).toBe('name');
      expect(readdirSync(root)).toEqual([]);
      expect(() => moduleDir(cache, '../escaped')).toThrow(/leaves the cache folder/);
    } finally {
      process.env.CHUNKATTN_CACHE = saved;
    }
  });

  test('a stored scoreMod.cpp is never used: the C++ comes from the IR', async () => {
    const toolchain = await findToolchain();
    const spec = jsonCopy(baseSpec());
    const scoreMod = spec['scoreMod'] as { cpp: string; ir: never };
    scoreMod.cpp = INJECTION;
    const p = plan(spec as never, { target: 'cpu' }, toolchain);
    const source = render(p).source;
    expect(source).not.toContain('system(');
    expect(source).toContain(exprToCpp(scoreMod.ir));
    expect(p.spec.scoreMod!.cpp).toBe(exprToCpp(scoreMod.ir));
  });

  test('an IR that the translator could not have produced is refused, with its path', () => {
    const spec = jsonCopy(baseSpec());
    const bad = [
      { kind: 'call', fn: 'system', args: [{ kind: 'score' }] },
      { kind: 'param', name: 'softcap', index: 7 },
      { kind: 'param', name: 'toString', index: 0 },
      { kind: 'binary', op: ';', left: { kind: 'score' }, right: { kind: 'score' } },
      { kind: 'num', value: 1e300 },
      { kind: 'bool', value: true }, // a scoreMod must yield a number
      { kind: 'score', extra: 1 },
    ];
    for (const ir of bad) {
      const copy = { ...spec, scoreMod: { ...(spec['scoreMod'] as object), ir } };
      expect(() => validateSpec(copy), JSON.stringify(ir)).toThrow(DslError);
    }
    const file = {
      ...spec,
      mask: { ...(spec['mask'] as object), loc: { file: 'x.ts\nsystem("x")', line: 1, column: 1 } },
    };
    expect(() => validateSpec(file)).toThrow(/^mask\.loc\.file/);
  });

  test('the JSON specs in generated/ validate to exactly themselves', async () => {
    const generated = await import('../generated/index.ts');
    for (const kernel of Object.values(generated)) {
      const spec = (kernel as { spec: KernelSpec }).spec;
      expect(JSON.stringify(validateSpec(spec))).toBe(JSON.stringify(spec));
    }
  });

  test('a forged brand does not skip validation', async () => {
    const toolchain = await findToolchain();
    const forged = { ...jsonCopy(baseSpec()), heads: { q: 4, kv: 3 } };
    Object.defineProperty(forged, Symbol.for('chunkattn.KernelSpec'), { value: true });
    expect(() => plan(forged as never, { target: 'cpu' }, toolchain)).toThrow(
      /^heads\.kv: 3 does not divide/,
    );
  });
});

describe('DSL bounds', () => {
  test('a 10⁹-head spec fails at once with a short message (no divisor list in memory)', () => {
    const started = performance.now();
    const error = (() => {
      try {
        attention({ name: 'huge', heads: { q: 1000000007, kv: 2 }, headDim: 64, dtype: 'f16' });
      } catch (e) {
        return e;
      }
    })() as DslError;
    expect(error).toBeInstanceOf(DslError);
    expect(error.path).toBe('heads.q');
    expect(error.message.length).toBeLessThan(200);
    expect(performance.now() - started).toBeLessThan(1000);
  });

  test('heads above the addon limit (4096), 1e300 heads and a 5,000-character name are refused', () => {
    const base = { headDim: 64, dtype: 'f16' } as const;
    expect(() => attention({ ...base, name: 'big', heads: { q: 4096, kv: 1 } })).toThrow(
      /^heads\.q: 4096 is more than 1024/,
    );
    expect(() => attention({ ...base, name: 'big', heads: { q: 1e300, kv: 1 } })).toThrow(/^heads\.q/);
    const long = 'n'.repeat(5000);
    let message = '';
    try {
      attention({ ...base, name: long, heads: { q: 4, kv: 4 } });
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/^name: .* is longer than 64 characters/);
    expect(message.length).toBeLessThan(200);
  });
});

describe('runtime options are validated at create, with typed errors', () => {
  const spec = baseSpec();
  const create = (options: Record<string, unknown>) =>
    Attention.create(spec, {
      layers: 1,
      capacityTokens: 64,
      target: 'cpu',
      loader: reachLoader,
      ...options,
    } as never).catch((e: unknown) => e);

  test.each([
    [
      'params.softcap = "abc"',
      { params: { softcap: 'abc' } },
      /params\.softcap: 'abc' is not a finite number/,
    ],
    ['params.softcap = null', { params: { softcap: null } }, /params\.softcap: null is not a finite number/],
    ['params.softcap = NaN', { params: { softcap: Number.NaN } }, /is not a finite number/],
    [
      'a param named toString',
      { params: { toString: 1 } },
      /params\.toString: spec "hostile-base" declares softcap, window/,
    ],
    ['params = 5', { params: 5 }, /params must be an object/],
    ["mode: 'fast'", { mode: 'fast' }, /mode must be one of/],
    ['maxRunChunks: 0', { maxRunChunks: 0 }, /maxRunChunks must be an integer ≥ 1/],
    ["target: 'gpu'", { target: 'gpu' }, /target must be one of auto, cuda, emu, cpu/],
    ["target: 'emu' for a cpu-only spec", { target: 'emu' }, /target emu: spec "hostile-base" targets cpu/],
    ['layers: 1e9', { layers: 1e9 }, /layers must be an integer in \[1, 4096\]/],
  ])('%s → ArgumentError', async (_name, options, message) => {
    const error = await create(options);
    expect(error).toBeInstanceOf(ArgumentError);
    expect((error as Error).message).toMatch(message);
  });

  test('a param that does not exist on the object prototype chain is read as given, defaults otherwise', async () => {
    expect(await create({ params: { softcap: 3 } })).toBeInstanceOf(LoaderReached);
    expect(await create({ params: Object.create(null) })).toBeInstanceOf(LoaderReached);
  });
});

// ── fuzz ───────────────────────────────────────────────────────────────────────

const HOSTILE_STRINGS = [
  '../../escaped',
  '/tmp/escaped',
  'a\n}; system("touch PWNED"); //',
  ')json"; system("touch PWNED"); R"json(',
  '__proto__',
  'constructor',
  'toString',
  'x'.repeat(5000),
  '',
  '\u2028',
  'sm_80',
  'cpu',
  'emu',
  'f16',
  'two-phase',
  INJECTION,
];
const HOSTILE_NUMBERS = [
  1e300,
  -1,
  0,
  1000000007,
  4096,
  1024,
  3,
  2,
  64,
  16,
  1.5,
  -0,
  2 ** 31,
  Number.MAX_SAFE_INTEGER,
  3.5e38,
];

const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(...HOSTILE_STRINGS),
  fc.constantFrom(...HOSTILE_NUMBERS),
  fc.constant(null),
  fc.boolean(),
  fc.jsonValue({ maxDepth: 2 }),
  fc.array(fc.constantFrom<unknown>(...HOSTILE_STRINGS, ...HOSTILE_NUMBERS), { maxLength: 4 }),
  fc.constant({ kind: 'call', fn: 'system', args: [] }),
);

/** Every path (as keys) in a JSON value, for picking what to mutate. */
function paths(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = [prefix];
  if (typeof value === 'object' && value !== null)
    for (const [key, child] of Object.entries(value))
      out.push(...paths(child, [...prefix, Array.isArray(value) ? Number(key) : key]));
  return out;
}

function setPath(root: Record<string, unknown>, path: (string | number)[], value: unknown): void {
  let node = root as Record<string | number, unknown>;
  for (const key of path.slice(0, -1)) node = node[key] as Record<string | number, unknown>;
  node[path.at(-1)!] = value;
}

const BASE_JSON = jsonCopy(baseSpec());
const BASE_PATHS = paths(BASE_JSON).filter((p) => p.length > 0);

/** Valid specs carrying an injected `cpp` and a new name: they must plan, with C++ from the IR. */
const validWithInjection: fc.Arbitrary<unknown> = fc
  .stringMatching(/^[A-Za-z][A-Za-z0-9_-]{0,20}$/)
  .map((name) => {
    const spec = structuredClone(BASE_JSON);
    spec['name'] = name;
    (spec['scoreMod'] as Record<string, unknown>)['cpp'] = INJECTION;
    (spec['mask'] as Record<string, unknown>)['cpp'] = INJECTION;
    return spec;
  });

const hostileSpec: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 1, arbitrary: hostileValue.map((value) => structuredClone(value)) },
  { weight: 1, arbitrary: validWithInjection },
  {
    weight: 9,
    arbitrary: fc
      .tuple(
        fc.array(fc.tuple(fc.constantFrom(...BASE_PATHS), hostileValue), { minLength: 1, maxLength: 3 }),
        fc.boolean(),
        fc.option(fc.tuple(fc.constantFrom(...HOSTILE_STRINGS), hostileValue)),
      )
      .map(([mutations, injectCpp, extra]) => {
        const spec = structuredClone(BASE_JSON);
        for (const [path, value] of mutations) {
          try {
            setPath(spec, path, structuredClone(value)); // never share (or mutate) a generated value
          } catch {
            // the path's parent was replaced by an earlier mutation
          }
        }
        if (injectCpp && typeof spec['scoreMod'] === 'object' && spec['scoreMod'] !== null)
          (spec['scoreMod'] as Record<string, unknown>)['cpp'] = INJECTION;
        if (extra) spec[extra[0]] = structuredClone(extra[1]);
        return spec;
      }),
  },
);

/** The rendered C++ holds no text from outside the IR, and the module folder stays in the cache. */
function checkRendered(spec: KernelSpec, source: string, cache: string, buildId: string): void {
  // A stored location is printed in a comment, reduced to path characters: it may still spell a
  // word, but can never form code. Everything outside comments must be free of the payload.
  for (const fn of [spec.scoreMod, spec.mask])
    if (fn && /[^\w./@+-]/.test(fn.loc.file)) expect(source).not.toContain(fn.loc.file);
  const code = source.replace(/\/\/.*$/gm, '');
  expect(code).not.toContain('PWNED');
  expect(source).not.toContain('system(');
  if (spec.scoreMod) expect(source).toContain(exprToCpp(spec.scoreMod.ir));
  if (spec.mask) expect(source).toContain(exprToCpp(spec.mask.ir));
  expect(moduleDir(cache, buildId).startsWith(cache)).toBe(true);
}

test('fuzz: 1,000 hostile spec objects through Attention.create and plan/render end in a typed error or safe C++', async () => {
  const toolchain = await findToolchain();
  const root = mkdtempSync(join(tmpdir(), 'chunkattn-fuzz-'));
  const cache = join(root, 'cache');
  const saved = process.env.CHUNKATTN_CACHE;
  process.env.CHUNKATTN_CACHE = cache;
  const outcomes = { typed: 0, planned: 0 };
  const typed = (e: unknown) =>
    e instanceof DslError || e instanceof ChunkattnError || e instanceof PlanError;
  try {
    await fc.assert(
      fc.asyncProperty(hostileSpec, async (input) => {
        // Attention.create: validation, then the loader (which plans and renders, without g++).
        const created = await Attention.create(input as never, {
          layers: 1,
          capacityTokens: 64,
          target: 'cpu',
          loader: async (spec, target) => {
            const p = plan(spec, { target }, toolchain);
            checkRendered(p.spec, render(p).source, cache, p.buildId);
            throw new LoaderReached();
          },
        }).catch((e: unknown) => e);
        expect(created instanceof LoaderReached || typed(created), String(created)).toBe(true);
        // The compile path: plan + render.
        try {
          const p = plan(input as never, { target: 'cpu' }, toolchain);
          checkRendered(p.spec, render(p).source, cache, p.buildId);
          outcomes.planned++;
        } catch (e) {
          expect(typed(e), String(e)).toBe(true);
          outcomes.typed++;
        }
      }),
      { numRuns: 1000 },
    );
  } finally {
    process.env.CHUNKATTN_CACHE = saved;
  }
  expect(outcomes.typed + outcomes.planned).toBe(1000);
  expect(outcomes.typed).toBeGreaterThan(100);
  expect(outcomes.planned).toBeGreaterThan(0); // some mutations stay valid and reach the renderer
  expect(readdirSync(root).filter((e) => e !== 'cache')).toEqual([]);
  expect(existsSync(join(REPO, 'PWNED'))).toBe(false);
});

test('fuzz through `chunkattn compile`: forged-brand hostile specs exit 0 or 1 with one JSON line', async () => {
  const root = mkdtempSync(join(tmpdir(), 'chunkattn-fuzz-cli-'));
  const cache = join(root, 'cache');
  const samples = fc.sample(hostileSpec, { numRuns: 8, seed: 10 });
  for (const [i, input] of samples.entries()) {
    const file = join(root, `spec-${i}.ts`);
    writeFileSync(
      file,
      `const spec = ${JSON.stringify(input)};\n` +
        `if (typeof spec === 'object' && spec !== null) Object.defineProperty(spec, Symbol.for('chunkattn.KernelSpec'), { value: true });\n` +
        'export default spec;\n',
    );
    const result = await runCli(['compile', file, '--target', 'cpu', '--json'], { CHUNKATTN_CACHE: cache });
    expect([0, 1], result.stderr).toContain(result.exitCode);
    expect((result.json as { ok: boolean }).ok).toBe(result.exitCode === 0);
    expect(result.stderr).not.toMatch(/\n\s+at /);
  }
  expect(readdirSync(root).filter((e) => e !== 'cache' && !e.startsWith('spec-'))).toEqual([]);
});

test('a stored source location holding C++ reaches the generated source only as path characters', async () => {
  // Found by the fuzz: loc.file was printed verbatim into a comment of the generated C++.
  const toolchain = await findToolchain();
  const spec = jsonCopy(baseSpec()) as { mask: { loc: { file: string } } };
  spec.mask.loc.file = 'x; } }; static int pwned = system("touch PWNED"); struct Y {';
  const source = render(plan(spec as never, { target: 'cpu' }, toolchain)).source;
  expect(source).not.toContain(spec.mask.loc.file);
  expect(source).toContain(`// ${spec.mask.loc.file.replace(/[^\w./@+-]/g, '_')}:`);
});
