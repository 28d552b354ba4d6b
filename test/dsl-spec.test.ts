import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';
import { compileExpr } from '../dsl/evaluate.ts';
import {
  attention,
  DslError,
  type Expr,
  evaluateExpr,
  exprToCpp,
  floatLiteral,
  isKernelSpec,
  type KernelSpec,
  loadSpecs,
  type Pos,
  variantFunctions,
  withOverrides,
} from '../dsl/index.ts';
import { referenceDecode } from '../runtime/reference.ts';

const THIS_FILE = 'test/dsl-spec.test.ts';
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const FIXTURES = fileURLToPath(new URL('./fixtures/dsl/', import.meta.url));
const ownText = readFileSync(fileURLToPath(import.meta.url), 'utf8');

/** 1-based line and column of the first `needle` after `anchor` in `text`. */
function positionOf(text: string, anchor: string, needle: string): { line: number; column: number } {
  const from = text.indexOf(anchor);
  if (from < 0) throw new Error(`anchor not found: ${anchor}`);
  const at = text.indexOf(needle, from + anchor.length);
  if (at < 0) throw new Error(`needle not found after ${anchor}: ${needle}`);
  const before = text.slice(0, at).split('\n');
  return { line: before.length, column: before.at(-1)!.length + 1 };
}

function deepFrozen(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return true;
  return Object.isFrozen(value) && Object.values(value).every(deepFrozen);
}

const pos = (q: number, kv: number, qHead = 0, kvHead = 0, seq = 0): Pos => ({ seq, qHead, kvHead, q, kv });

describe('attention() normalizes', () => {
  test('a minimal spec gets every default', () => {
    const spec = attention({ name: 'minimal', heads: { q: 32, kv: 8 }, headDim: 128, dtype: 'bf16' });
    expect(JSON.parse(JSON.stringify(spec))).toEqual({
      name: 'minimal',
      heads: { q: 32, kv: 8 },
      headDim: 128,
      dtype: { q: 'bf16', kv: 'bf16', out: 'bf16' },
      chunkSize: 64,
      partition: 'two-phase',
      softmaxScale: 1 / Math.sqrt(128),
      params: [],
      scoreMod: null,
      mask: null,
      tunables: [],
      targets: ['sm_80', 'sm_90a', 'cpu'],
    });
  });

  test('every field given is kept, params and tunables in declaration order', () => {
    const spec = attention({
      name: 'full_spec-2',
      heads: { q: 16, kv: 1 },
      headDim: 96,
      dtype: { q: 'f16', kv: 'bf16', out: 'f16' },
      chunkSize: 128,
      partition: 'chunk-first',
      softmaxScale: 0.25,
      params: { zeta: 1, alpha: -2.5 },
      tunables: { splitK: { values: [1, 2, 4], default: 2 }, blockN: { values: [64], default: 64 } },
      targets: ['sm_89', 'emu'],
    });
    expect(spec.dtype).toEqual({ q: 'f16', kv: 'bf16', out: 'f16' });
    expect(spec.params).toEqual([
      { name: 'zeta', default: 1 },
      { name: 'alpha', default: -2.5 },
    ]);
    expect(spec.tunables).toEqual([
      { name: 'splitK', values: [1, 2, 4], default: 2 },
      { name: 'blockN', values: [64], default: 64 },
    ]);
    expect([spec.chunkSize, spec.partition, spec.softmaxScale, spec.targets]).toEqual([
      128,
      'chunk-first',
      0.25,
      ['sm_89', 'emu'],
    ]);
  });

  test('f32 is accepted when every target is cpu', () => {
    const spec = attention({
      name: 'f32',
      heads: { q: 4, kv: 4 },
      headDim: 64,
      dtype: 'f32',
      targets: ['cpu'],
    });
    expect(spec.dtype).toEqual({ q: 'f32', kv: 'f32', out: 'f32' });
  });

  test('the spec is deep-frozen plain JSON data that round-trips exactly', () => {
    const spec = attention({
      name: 'frozen',
      heads: { q: 8, kv: 2 },
      headDim: 64,
      dtype: 'f16',
      params: { softcap: 30 },
      scoreMod: (s, p, { softcap }) => softcap * Math.tanh(s / softcap) - Math.PI * (p.q - p.kv),
      mask: (p) => p.kv <= p.q,
    });
    expect(deepFrozen(spec)).toBe(true);
    expect(() => {
      (spec as { name: string }).name = 'x';
    }).toThrow(TypeError);
    const copy = JSON.parse(JSON.stringify(spec)) as KernelSpec;
    expect(copy).toEqual(spec);
    expect(JSON.stringify(copy)).toBe(JSON.stringify(spec));
    expect(Object.keys(spec)).toEqual(Object.keys(copy));
  });

  test('specs carry an invisible brand; their JSON copies do not', () => {
    const spec = attention({ name: 'branded', heads: { q: 8, kv: 8 }, headDim: 64, dtype: 'f16' });
    expect(isKernelSpec(spec)).toBe(true);
    expect(isKernelSpec(JSON.parse(JSON.stringify(spec)))).toBe(false);
    expect(isKernelSpec({ ...spec })).toBe(false);
  });
});

describe('score/mask translation', () => {
  test('the softcap score function becomes IR, C++ and a float64 function', () => {
    const spec = attention({
      name: 'softcap',
      heads: { q: 8, kv: 8 },
      headDim: 64,
      dtype: 'f16',
      params: { softcap: 50 },
      scoreMod: (s, _pos, p) => p.softcap * Math.tanh(s / p.softcap),
    });
    const ir: Expr = {
      kind: 'binary',
      op: '*',
      left: { kind: 'param', name: 'softcap', index: 0 },
      right: {
        kind: 'call',
        fn: 'tanh',
        args: [
          {
            kind: 'binary',
            op: '/',
            left: { kind: 'score' },
            right: { kind: 'param', name: 'softcap', index: 0 },
          },
        ],
      },
    };
    expect(spec.scoreMod?.ir).toEqual(ir);
    expect(spec.scoreMod?.cpp).toBe('(params[0] * tanhf((score / params[0])))');
    expect(spec.scoreMod?.source).toBe('(s, _pos, p) => p.softcap * Math.tanh(s / p.softcap)');
    const fns = variantFunctions(spec);
    expect(fns.params).toEqual([50]);
    expect(fns.scoreMod!(100, pos(3, 1), [50])).toBeCloseTo(50 * Math.tanh(2), 12);
  });

  test('the location of an inline function is this file, line and column', () => {
    const spec = attention({
      name: 'here',
      heads: { q: 8, kv: 8 },
      headDim: 64,
      dtype: 'f16',
      mask: (p) => p.kv <= p.q,
    });
    expect(spec.mask?.loc).toEqual({
      file: THIS_FILE,
      ...positionOf(ownText, "name: 'here'", '(p) => p.kv'),
    });
  });

  test('block bodies inline their const bindings; destructured parameters read pos and params', () => {
    const spec = attention({
      name: 'block',
      heads: { q: 8, kv: 8 },
      headDim: 64,
      dtype: 'f16',
      params: { slope: 0.5 },
      scoreMod: (score, { q, kv: key }, { slope }) => {
        const distance = q - key;
        const bias = slope * distance;
        return score - bias;
      },
    });
    expect(spec.scoreMod?.cpp).toBe('(score - (params[0] * (((float)pos.q) - ((float)pos.kv))))');
  });

  test('`**` is pow, `===` is ==, Math constants are literals, and min/max nest', () => {
    const spec = attention({
      name: 'operators',
      heads: { q: 8, kv: 8 },
      headDim: 64,
      dtype: 'f16',
      scoreMod: (s, p) => (p.q === p.kv ? s ** 2 : Math.max(s, Math.E, -Math.PI)),
    });
    expect(spec.scoreMod?.cpp).toBe(
      `((((float)pos.q) == ((float)pos.kv)) ? powf(score, 2.0f) : fmaxf(fmaxf(score, ${floatLiteral(Math.E)}), (-${floatLiteral(Math.PI)})))`,
    );
  });

  test('a function built by new Function falls back to its own text at <anonymous>', () => {
    const make = new Function(
      'attention',
      "return attention({ name: 'dyn', heads: { q: 8, kv: 8 }, headDim: 64, dtype: 'f16', mask: (pos) => pos.kv <= pos.q })",
    );
    const spec = make(attention) as KernelSpec;
    expect(spec.mask?.loc).toEqual({ file: '<anonymous>', line: 1, column: 1 });
    expect(spec.mask?.cpp).toBe('(((float)pos.kv) <= ((float)pos.q))');
  });

  test('float literals are exact for integers and round-trip for fractions and exponents', () => {
    expect([50, 0.5, 1e-7, 1.5e30, 123456789, 0.1, 2 ** 60].map(floatLiteral)).toEqual([
      '50.0f',
      '0.5f',
      '1e-7f',
      '1.5e+30f',
      '123456789.0f',
      '0.1f',
      '1152921504606846976.0f',
    ]);
    expect(
      exprToCpp({ kind: 'binary', op: '%', left: { kind: 'score' }, right: { kind: 'num', value: 3 } }),
    ).toBe('fmodf(score, 3.0f)');
  });

  test('evaluateExpr and the compiled closures agree on every node kind', () => {
    const ir: Expr = {
      kind: 'cond',
      test: {
        kind: 'binary',
        op: '&&',
        left: {
          kind: 'unary',
          op: '!',
          arg: {
            kind: 'binary',
            op: '>',
            left: { kind: 'pos', field: 'kv' },
            right: { kind: 'pos', field: 'q' },
          },
        },
        right: {
          kind: 'binary',
          op: '!=',
          left: { kind: 'pos', field: 'qHead' },
          right: { kind: 'num', value: 3 },
        },
      },
      // biome-ignore lint/suspicious/noThenProperty: `then` is the Expr field name in spec.ts
      then: {
        kind: 'call',
        fn: 'min',
        args: [
          { kind: 'score' },
          { kind: 'param', name: 'cap', index: 0 },
          { kind: 'binary', op: '%', left: { kind: 'pos', field: 'q' }, right: { kind: 'num', value: 7 } },
        ],
      },
      else: { kind: 'unary', op: '-', arg: { kind: 'call', fn: 'floor', args: [{ kind: 'score' }] } },
    };
    const compiled = compileExpr(ir);
    for (const [score, p] of [
      [2.5, pos(10, 3, 1)],
      [-2.5, pos(10, 30, 1)],
      [9, pos(20, 3, 3)],
      [100, pos(13, 3, 0)],
    ] as const) {
      const env = { score, pos: p, params: [4] };
      expect(compiled(score, p, [4])).toBe(evaluateExpr(ir, env));
    }
    expect(evaluateExpr(ir, { score: 100, pos: pos(13, 3), params: [4] })).toBe(4);
    expect(() => evaluateExpr({ kind: 'score' }, { pos: pos(0, 0), params: [] })).toThrow(/score/);
  });

  test('variantFunctions plug into the float64 reference: a causal mask hides the future', () => {
    const spec = attention({
      name: 'reference',
      heads: { q: 2, kv: 1 },
      headDim: 64,
      dtype: 'f16',
      params: { window: 2 },
      mask: (p, { window }) => p.q - p.kv < window,
    });
    const d = 64;
    const length = 5;
    const q = Array.from({ length: 2 * d }, (_, i) => Math.sin(i));
    const k = Array.from({ length: length * d }, (_, i) => Math.cos(i));
    const v = Array.from({ length: length * d }, (_, i) => (i % d) + Math.floor(i / d) * 100);
    const shape = { qHeads: 2, kvHeads: 1, headDim: d, softmaxScale: spec.softmaxScale };
    const [out] = referenceDecode(shape, [{ seq: 0, q, k, v, length }], variantFunctions(spec));
    // Only tokens 3 and 4 are inside the window of query position 4: v's token index is in the hundreds.
    expect(out![0]).toBeGreaterThan(300);
    expect(out![0]).toBeLessThan(400);
  });
});

describe('withOverrides', () => {
  const base = attention({
    name: 'base',
    heads: { q: 32, kv: 8 },
    headDim: 128,
    dtype: 'f16',
    params: { softcap: 50 },
    scoreMod: (s, _pos, p) => p.softcap * Math.tanh(s / p.softcap),
  });

  test('retargets head dim, chunk size, targets and dtype, and re-derives the default scale', () => {
    const spec = withOverrides(base, {
      headDim: 64,
      chunkSize: 32,
      targets: ['sm_89'],
      dtype: { kv: 'bf16' },
    });
    expect(spec.headDim).toBe(64);
    expect(spec.softmaxScale).toBe(1 / 8);
    expect(spec.chunkSize).toBe(32);
    expect(spec.targets).toEqual(['sm_89']);
    expect(spec.dtype).toEqual({ q: 'f16', kv: 'bf16', out: 'f16' });
    expect(spec.scoreMod).toEqual(base.scoreMod);
    expect(isKernelSpec(spec) && deepFrozen(spec)).toBe(true);
    expect(base.headDim).toBe(128);
  });

  test('keeps an explicit softmax scale', () => {
    const explicit = attention({
      name: 'scaled',
      heads: { q: 8, kv: 8 },
      headDim: 128,
      dtype: 'f16',
      softmaxScale: 0.3,
    });
    expect(withOverrides(explicit, { headDim: 64 }).softmaxScale).toBe(0.3);
  });

  test('validates again: f32 on a GPU, an unsupported head dim, an unknown override', () => {
    expect(() => withOverrides(base, { dtype: 'f32' })).toThrow(/^dtype: 'f32' needs every target to be cpu/);
    expect(withOverrides(base, { dtype: 'f32', targets: ['cpu'] }).dtype.out).toBe('f32');
    expect(() => withOverrides(base, { headDim: 100 })).toThrow(
      /^headDim: 100 is not supported; allowed: 64, 80/,
    );
    expect(() => withOverrides(base, { arch: 'sm_89' } as never)).toThrow(DslError);
  });

  test('works on a spec read back from JSON', () => {
    const copy = JSON.parse(JSON.stringify(base)) as KernelSpec;
    expect(withOverrides(copy, { targets: ['cpu'] })).toEqual({ ...base, targets: ['cpu'] });
  });
});

describe('loadSpecs', () => {
  test('loads the three examples', async () => {
    const [llama2] = await loadSpecs(join(ROOT, 'examples/llama2-7b.ts'));
    const [llama3] = await loadSpecs(join(ROOT, 'examples/llama3-8b.ts'));
    const [softcap] = await loadSpecs(join(ROOT, 'examples/softcap-window.ts'));
    expect(llama2).toMatchObject({
      name: 'llama2-7b',
      heads: { q: 32, kv: 32 },
      headDim: 128,
      chunkSize: 64,
    });
    expect(llama2!.dtype.q).toBe('f16');
    expect(llama2!.partition).toBe('two-phase');
    expect(llama3).toMatchObject({ name: 'llama3-8b', heads: { q: 32, kv: 8 }, headDim: 128 });
    expect(llama3!.dtype.kv).toBe('bf16');
    expect(softcap!.params).toEqual([
      { name: 'softcap', default: 50 },
      { name: 'window', default: 4096 },
    ]);
    expect(softcap!.scoreMod?.cpp).toBe('(params[0] * tanhf((score / params[0])))');
    expect(softcap!.mask?.cpp).toBe('((((float)pos.q) - ((float)pos.kv)) < params[1])');
    const exampleText = readFileSync(join(ROOT, 'examples/softcap-window.ts'), 'utf8');
    expect(softcap!.mask?.loc).toEqual({
      file: 'examples/softcap-window.ts',
      ...positionOf(exampleText, 'mask:', '(pos, p)'),
    });
    for (const spec of [llama2, llama3, softcap])
      expect(spec!.targets).toEqual(['sm_80', 'sm_90a', 'emu', 'cpu']);
    const fns = variantFunctions(softcap!);
    expect(fns.mask!(pos(5000, 903), fns.params)).toBe(false);
    expect(fns.mask!(pos(5000, 905), fns.params)).toBe(true);
  });

  test('collects default, named and array exports once each, default first', async () => {
    const specs = await loadSpecs(join(FIXTURES, 'multi-export.ts'));
    expect(specs.map((s) => s.name)).toEqual(['causal', 'small-chunks', 'nested', 'mqa']);
  });

  test('applies overrides to every spec', async () => {
    const specs = await loadSpecs(join(FIXTURES, 'multi-export.ts'), { headDim: 64, targets: ['sm_89'] });
    expect(specs.every((s) => s.headDim === 64 && s.targets.join() === 'sm_89')).toBe(true);
  });

  test('a default export loads from a folder that is not "type": "module" (CommonJS interop)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'chunkattn-cjs-spec-'));
    writeFileSync(join(dir, 'package.json'), '{}');
    const file = join(dir, 'my-model.ts');
    writeFileSync(
      file,
      `import { attention } from '${join(ROOT, 'dsl', 'index.ts')}';\n` +
        "export default attention({ name: 'cjs-default', heads: { q: 8, kv: 2 }, headDim: 64, dtype: 'f16' });\n",
    );
    expect((await loadSpecs(file)).map((s) => s.name)).toEqual(['cjs-default']);
  });

  test('reads functions through consts, declarations, shorthand, methods, config objects and aliases', async () => {
    const file = join(FIXTURES, 'sources.ts');
    const text = readFileSync(file, 'utf8');
    const specs = await loadSpecs(file);
    const byName = new Map(specs.map((s) => [s.name, s]));
    const file_ = 'test/fixtures/dsl/sources.ts';
    expect(byName.get('via-const')?.scoreMod?.loc).toEqual({
      file: file_,
      ...positionOf(text, 'const softcap =', '(s: number'),
    });
    expect(byName.get('via-const')?.scoreMod?.cpp).toBe('(params[0] * tanhf((score / params[0])))');
    expect(byName.get('via-declaration')?.mask?.loc).toEqual({
      file: file_,
      ...positionOf(text, '', 'function slidingWindow'),
    });
    expect(byName.get('via-declaration')?.mask?.cpp).toBe('((((float)pos.q) - ((float)pos.kv)) < params[1])');
    expect(byName.get('via-shorthand')?.mask?.loc).toEqual({
      file: file_,
      ...positionOf(text, 'const mask =', '(pos:'),
    });
    expect(byName.get('via-method')?.scoreMod?.loc).toEqual({
      file: file_,
      ...positionOf(text, "'via-method'", 'scoreMod('),
    });
    expect(byName.get('via-method')?.scoreMod?.cpp).toBe(
      '((params[0] * tanhf((score / params[0]))) - (0.125f * (((float)pos.q) - ((float)pos.kv))))',
    );
    expect(byName.get('from-config')?.scoreMod?.loc).toEqual({
      file: file_,
      ...positionOf(text, "'from-config'", '(s: number)'),
    });
    expect(byName.get('via-function-expression')?.mask?.loc).toEqual({
      file: file_,
      ...positionOf(text, "'via-function-expression'", 'function (pos)'),
    });
  });

  test('errors clearly for a missing file, a file without specs, and two specs with one name', async () => {
    await expect(loadSpecs(join(FIXTURES, 'does-not-exist.ts'))).rejects.toThrow(
      /does-not-exist\.ts: no such file/,
    );
    await expect(loadSpecs(join(FIXTURES, 'no-specs.ts'))).rejects.toThrow(
      /no-specs\.ts: exports no KernelSpec/,
    );
    await expect(loadSpecs(join(FIXTURES, 'duplicate-names.ts'))).rejects.toThrow(
      /two different specs are named 'twin'/,
    );
  });

  test('a DslError thrown inside a loaded file is still instanceof DslError', async () => {
    const file = join(tmpdir(), `chunkattn-dsl-bad-${process.pid}.mts`);
    writeFileSync(
      file,
      `import { attention } from ${JSON.stringify(join(ROOT, 'dsl/index.ts'))};\n` +
        "export default attention({ name: 'bad', heads: { q: 32, kv: 5 }, headDim: 128, dtype: 'f16' });\n",
    );
    const error = await loadSpecs(file).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DslError);
    expect((error as DslError).path).toBe('heads.kv');
  });
});

describe('cost', () => {
  test('a spec without functions never loads ts-morph; one with functions does', () => {
    const script = join(tmpdir(), `chunkattn-dsl-timing-${process.pid}.mts`);
    writeFileSync(
      script,
      `import { createRequire } from 'node:module';
import { loadSpecs } from ${JSON.stringify(join(ROOT, 'dsl/index.ts'))};
const loaded = () => Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('/ts-morph/'));
const t0 = performance.now();
await loadSpecs(${JSON.stringify(join(ROOT, 'examples/llama3-8b.ts'))});
const t1 = performance.now();
const plain = loaded();
await loadSpecs(${JSON.stringify(join(ROOT, 'examples/softcap-window.ts'))});
const t2 = performance.now();
console.log(JSON.stringify({ plain, withFunctions: loaded(), plainMs: t1 - t0, functionsMs: t2 - t1 }));
`,
    );
    const out = execFileSync(process.execPath, ['--import', 'tsx', script], { cwd: ROOT, encoding: 'utf8' });
    const result = JSON.parse(out.trim().split('\n').at(-1)!);
    console.log(
      `load without functions ${result.plainMs.toFixed(0)} ms, with functions ${result.functionsMs.toFixed(0)} ms`,
    );
    expect(result.plain).toBe(false);
    expect(result.withFunctions).toBe(true);
  });
});
