// biome-ignore-all lint/correctness: the catalog holds unreachable code, unused and undeclared names on purpose
// biome-ignore-all lint/suspicious/noTemplateCurlyInString: the needle '`${s}`' is source text to find
// biome-ignore-all lint/style/useConst: a `let` binding is one of the bad constructs
// A catalog of specs the DSL must reject, each with the exact field path or the exact
// file:line:col of the offending TypeScript and a key phrase of the message.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tsImport } from 'tsx/esm/api';
import { describe, expect, test } from 'vitest';
import { attention, DslError, formatDslError, type KernelSpec } from '../dsl/index.ts';

const THIS_FILE = 'test/dsl-bad-specs.test.ts';
const FIXTURE = 'test/fixtures/dsl/bad-constructs.ts';
const ownText = readFileSync(fileURLToPath(import.meta.url), 'utf8');

// Bad specs are untyped on purpose: the DSL, not tsc, must catch them.
// biome-ignore lint/suspicious/noExplicitAny: see above
type Loose = any;
const loose = attention as unknown as (input: {
  readonly [field: string]: unknown;
  readonly scoreMod?: (this: Loose, score: Loose, pos: Loose, params: Loose, ...rest: Loose[]) => Loose;
  readonly mask?: (this: Loose, pos: Loose, params: Loose, ...rest: Loose[]) => Loose;
}) => KernelSpec;

const base = {
  name: 'bad',
  heads: { q: 32, kv: 8 },
  headDim: 128,
  dtype: 'f16',
  params: { softcap: 50, window: 4096 },
} as const;
const outerScale = 2;
const helper = (x: number) => x * 2;

/** 1-based line and column of the first `needle` after `anchor` in `text`. */
function positionOf(text: string, anchor: string, needle: string): { line: number; column: number } {
  const from = text.indexOf(anchor);
  if (from < 0) throw new Error(`anchor not found: ${anchor}`);
  const at = text.indexOf(needle, from + anchor.length);
  if (at < 0) throw new Error(`needle not found after ${anchor}: ${needle}`);
  const before = text.slice(0, at).split('\n');
  return { line: before.length, column: before.at(-1)!.length + 1 };
}

function catchDsl(make: () => unknown): DslError {
  try {
    make();
  } catch (error) {
    if (error instanceof DslError) return error;
    throw error;
  }
  throw new Error('expected a DslError, but the spec was accepted');
}

describe('field errors name the path and what is allowed', () => {
  const cases: { input: unknown; path: string; message: string | RegExp }[] = [
    {
      input: { ...base, heads: { q: 32, kv: 5 } },
      path: 'heads.kv',
      message: 'heads.kv: 5 does not divide heads.q: 32; allowed: 1, 2, 4, 8, 16, 32',
    },
    {
      input: { ...base, dtype: { q: 'fp16', kv: 'f16', out: 'f16' } },
      path: 'dtype.q',
      message: "dtype.q: 'fp16' is not a dtype; allowed: f16, bf16, f32",
    },
    {
      input: { ...base, dtype: 'half' },
      path: 'dtype',
      message: "dtype: 'half' is not a dtype; allowed: f16, bf16, f32",
    },
    {
      input: { ...base, dtype: { q: 'f16', kv: 'f16' } },
      path: 'dtype.out',
      message: 'dtype.out: missing; allowed: f16, bf16, f32',
    },
    {
      input: { ...base, headDim: 100 },
      path: 'headDim',
      message: 'headDim: 100 is not supported; allowed: 64, 80, 96, 128, 192, 256',
    },
    {
      input: { ...base, scoremod: (s: number) => s },
      path: 'scoremod',
      message: /^scoremod: unknown field \(did you mean scoreMod\?\); allowed: name, heads, headDim/,
    },
    {
      input: { ...base, chunk_size: 64 },
      path: 'chunk_size',
      message: /^chunk_size: unknown field \(did you mean chunkSize\?\)/,
    },
    {
      input: { ...base, heads: { q: 32, kv: 8, k: 8 } },
      path: 'heads.k',
      message: 'heads.k: unknown field (did you mean kv?); allowed: q, kv',
    },
    {
      input: { ...base, dtype: 'f32' },
      path: 'dtype',
      message: /^dtype: 'f32' needs every target to be cpu, but targets include sm_80, sm_90a/,
    },
    {
      input: { ...base, dtype: { q: 'f16', kv: 'f16', out: 'f32' }, targets: ['emu', 'cpu'] },
      path: 'dtype.out',
      message: /^dtype\.out: 'f32' needs every target to be cpu, but targets include emu/,
    },
    {
      input: { ...base, tunables: { blockN: { values: [32, 64], default: 48 } } },
      path: 'tunables.blockN.default',
      message: 'tunables.blockN.default: 48 is not among values; allowed: 32, 64',
    },
    {
      input: { ...base, tunables: { blockN: { values: [], default: 48 } } },
      path: 'tunables.blockN.values',
      message: /^tunables\.blockN\.values: \[\] is not a non-empty array of finite numbers/,
    },
    {
      input: { ...base, tunables: { blockN: { values: [32, Number.NaN], default: 32 } } },
      path: 'tunables.blockN.values[1]',
      message: /^tunables\.blockN\.values\[1\]: NaN is not a finite number/,
    },
    {
      input: { ...base, tunables: { blockN: { values: [32, 32], default: 32 } } },
      path: 'tunables.blockN.values[1]',
      message: /^tunables\.blockN\.values\[1\]: duplicate 32/,
    },
    {
      input: { ...base, tunables: { blockN: { values: [32], defualt: 32 } } },
      path: 'tunables.blockN.defualt',
      message: /^tunables\.blockN\.defualt: unknown field \(did you mean default\?\)/,
    },
    { input: { ...base, name: undefined }, path: 'name', message: /^name: missing/ },
    {
      input: { ...base, name: 'my model' },
      path: 'name',
      message: "name: 'my model' is not a valid name; allowed: a letter, then letters, digits, _ or -",
    },
    {
      input: { ...base, heads: { q: 0, kv: 8 } },
      path: 'heads.q',
      message: /^heads\.q: 0 is not a positive integer/,
    },
    {
      input: { ...base, heads: { q: 32, kv: 2.5 } },
      path: 'heads.kv',
      message: /^heads\.kv: 2\.5 is not a positive integer/,
    },
    { input: { ...base, heads: 32 }, path: 'heads', message: /^heads: expected \{ q, kv \}, got 32/ },
    {
      input: { ...base, chunkSize: 48 },
      path: 'chunkSize',
      message: 'chunkSize: 48 is not supported; allowed: 16, 32, 64, 128',
    },
    {
      input: { ...base, partition: 'two_phase' },
      path: 'partition',
      message: "partition: 'two_phase' is not a partition; allowed: two-phase, sequence-first, chunk-first",
    },
    {
      input: { ...base, softmaxScale: 0 },
      path: 'softmaxScale',
      message: /^softmaxScale: 0 is not a finite number > 0/,
    },
    {
      input: { ...base, softmaxScale: Number.POSITIVE_INFINITY },
      path: 'softmaxScale',
      message: /^softmaxScale: Infinity is not a finite number > 0/,
    },
    {
      input: { ...base, params: { '2x': 1 } },
      path: 'params.2x',
      message: /^params\.2x: '2x' is not an identifier/,
    },
    {
      input: { ...base, params: { softcap: 'fifty' } },
      path: 'params.softcap',
      message: /^params\.softcap: 'fifty' is not a finite number/,
    },
    {
      input: { ...base, targets: [] },
      path: 'targets',
      message: /^targets: must not be empty; allowed: sm_80, sm_86, sm_89, sm_90a, emu, cpu/,
    },
    {
      input: { ...base, targets: ['sm_80', 'sm_70'] },
      path: 'targets[1]',
      message: "targets[1]: 'sm_70' is not a target; allowed: sm_80, sm_86, sm_89, sm_90a, emu, cpu",
    },
    {
      input: { ...base, targets: ['cpu', 'emu', 'cpu'] },
      path: 'targets[2]',
      message: /^targets\[2\]: duplicate 'cpu'/,
    },
    {
      input: { ...base, targets: 'sm_80' },
      path: 'targets',
      message: /^targets: expected an array of targets, got 'sm_80'/,
    },
    {
      input: { ...base, scoreMod: 5 },
      path: 'scoreMod',
      message: /^scoreMod: expected a function \(score, pos, params\) => number, got 5/,
    },
    {
      input: { ...base, mask: 'causal' },
      path: 'mask',
      message: /^mask: expected a function \(pos, params\) => boolean, got 'causal'/,
    },
    {
      input: { ...base, scoreMod: Math.tanh },
      path: 'scoreMod',
      message: /^scoreMod: cannot read the source of this function/,
    },
    { input: 'llama', path: 'attention', message: /^attention: expected an object/ },
  ];

  test.each(cases)('$path: $message', ({ input, path, message }) => {
    const error = catchDsl(() => loose(input as Loose));
    expect(error.path).toBe(path);
    if (typeof message === 'string') expect(error.message).toBe(message);
    else expect(error.message).toMatch(message);
  });

  test('a field error points at the attention() call', () => {
    const error = catchDsl(() => loose({ ...base, headDim: 100 }));
    const loc = {
      file: THIS_FILE,
      ...positionOf(ownText, 'a field error points at the attention() call', 'loose('),
    };
    expect(error.loc).toEqual(loc);
    expect(formatDslError(error)).toBe(
      `${THIS_FILE}:${loc.line}:${loc.column} error: headDim: 100 is not supported; allowed: 64, 80, 96, 128, 192, 256`,
    );
  });
});

describe('unsupported TypeScript is reported at its line and column', () => {
  // Each case: `make` holds exactly one construct at `at` (the first occurrence after the case's name).
  const cases: { name: string; make: () => unknown; at: string; offset?: number; phrase: string }[] = [
    {
      name: 'for loop',
      make: () =>
        loose({
          ...base,
          scoreMod: (s) => {
            for (let i = 0; i < 3; i++) s *= 2;
            return s;
          },
        }),
      at: 'for (',
      phrase: 'scoreMod may not contain a `for` loop',
    },
    {
      name: 'do-while loop',
      make: () =>
        loose({
          ...base,
          scoreMod: (s) => {
            do {
              s = s / 2;
            } while (s > 1);
            return s;
          },
        }),
      at: 'do {',
      phrase: 'may not contain a `do`-`while` loop',
    },
    {
      name: 'closure',
      make: () => loose({ ...base, scoreMod: (s) => s * outerScale }),
      at: 'outerScale',
      phrase: 'scoreMod may not read `outerScale`, a variable from outside the function',
    },
    {
      name: 'unknown call',
      make: () => loose({ ...base, scoreMod: (s) => helper(s) }),
      at: 'helper(s)',
      phrase: 'scoreMod may not call `helper`',
    },
    {
      name: 'Math.random',
      make: () => loose({ ...base, mask: () => Math.random() < 0.5 }),
      at: 'Math.random',
      phrase: 'mask may not call `Math.random`',
    },
    {
      name: 'Math.sin',
      make: () => loose({ ...base, scoreMod: (s) => Math.sin(s) }),
      at: 'Math.sin',
      phrase: 'may not call `Math.sin`',
    },
    {
      name: 'Math constant',
      // @ts-expect-error: no such Math constant, on purpose
      make: () => loose({ ...base, scoreMod: (s) => s * Math.TAU }),
      at: 'Math.TAU',
      phrase: 'may not use `Math.TAU`',
    },
    {
      name: 'string literal',
      make: () => loose({ ...base, scoreMod: (s) => s + '!' }),
      at: "'!'",
      phrase: 'may not contain a string literal',
    },
    {
      name: 'template literal',
      make: () => loose({ ...base, scoreMod: (s) => `${s}` }),
      at: '`${s}`',
      phrase: 'may not contain a template literal',
    },
    {
      name: 'unknown pos field',
      make: () => loose({ ...base, mask: (pos) => pos.query <= pos.kv }),
      at: 'query',
      phrase: '`pos.query` is not a field of pos',
    },
    {
      name: 'unknown destructured pos field',
      make: () => loose({ ...base, mask: ({ q, key }) => key <= q }),
      at: 'key }',
      phrase: '`key` is not a field of pos',
    },
    {
      name: 'undeclared param',
      make: () => loose({ ...base, scoreMod: (s, _pos, p) => s * p.temperature }),
      at: 'temperature',
      phrase: '`p.temperature` is not a declared param (declared: softcap, window)',
    },
    {
      name: 'assignment',
      make: () => loose({ ...base, scoreMod: (s) => (s = s * 2) }),
      at: '= s * 2',
      phrase: 'may not contain an assignment (`=`)',
    },
    {
      name: 'increment',
      make: () => loose({ ...base, scoreMod: (s) => s++ }),
      at: 's++',
      phrase: 'an increment or decrement (`++`)',
    },
    {
      name: 'new',
      // @ts-expect-error: arithmetic on a Number object, on purpose
      make: () => loose({ ...base, scoreMod: (s) => s * new Number(2) }),
      at: 'new Number',
      phrase: 'an object construction (`new`)',
    },
    {
      name: 'object literal',
      make: () => loose({ ...base, scoreMod: (s) => ({ s }).s }),
      at: '{ s }',
      phrase: 'may not contain an object literal',
    },
    {
      name: 'array literal',
      make: () => loose({ ...base, mask: (pos) => [pos.q].length > 0 }),
      at: '[pos.q]',
      phrase: 'may not contain an array literal',
    },
    {
      name: 'this',
      make: () =>
        loose({
          ...base,
          scoreMod: function (s) {
            return s * this.scale;
          },
        }),
      at: 'this.scale',
      phrase: 'may not contain `this`',
    },
    {
      name: 'nested function',
      make: () =>
        loose({
          ...base,
          scoreMod: (s) => {
            // @ts-expect-error: an untyped nested function, on purpose
            const double = (x) => x * 2;
            return double(s);
          },
        }),
      at: '(x) =>',
      phrase: 'may not contain a nested function',
    },
    {
      name: 'async and await',
      make: () => loose({ ...base, scoreMod: async (s) => await s }),
      at: 'async (s)',
      phrase: 'may not contain an `async` function',
    },
    {
      name: 'generator and yield',
      make: () =>
        loose({
          ...base,
          scoreMod: function* (s) {
            yield s;
          },
        }),
      at: '* (s)',
      phrase: 'may not contain a generator function',
    },
    {
      name: 'arity of exp',
      // @ts-expect-error: Math.exp takes one argument, on purpose
      make: () => loose({ ...base, scoreMod: (s) => Math.exp(s, 2) }),
      at: 'Math.exp(s, 2)',
      phrase: '`Math.exp` takes 1 argument, got 2',
    },
    {
      name: 'arity of min',
      make: () => loose({ ...base, scoreMod: (s) => Math.min(s) }),
      at: 'Math.min(s)',
      phrase: '`Math.min` takes at least 2 arguments, got 1',
    },
    {
      name: 'mask returns a number',
      make: () => loose({ ...base, mask: (pos) => pos.q - pos.kv }),
      at: 'pos.q - pos.kv',
      phrase: 'mask must return a boolean, but this is a number',
    },
    {
      name: 'scoreMod returns a boolean',
      make: () => loose({ ...base, scoreMod: (s) => s > 0 }),
      at: 's > 0',
      phrase: 'scoreMod must return a number, but this is a boolean',
    },
    {
      name: '&& on numbers',
      make: () => loose({ ...base, mask: (pos) => pos.q && pos.kv }),
      at: '&&',
      phrase: '`&&` needs booleans, but both operands are numbers',
    },
    {
      name: '|| with a number',
      make: () => loose({ ...base, mask: (pos) => pos.kv <= pos.q || pos.seq }),
      at: 'pos.seq',
      phrase: '`||` needs booleans, but its right operand is a number',
    },
    {
      name: 'arithmetic on a boolean',
      make: () => loose({ ...base, scoreMod: (s, pos) => s + (pos.kv <= pos.q) }),
      at: '(pos.kv <= pos.q)',
      phrase: '`+` needs numbers, but its right operand is a boolean',
    },
    {
      name: 'ternary branch types',
      make: () => loose({ ...base, scoreMod: (s, pos) => (pos.kv <= pos.q ? s : false) }),
      at: 'false',
      phrase: 'the branches of `?:` have different types: number and boolean',
    },
    {
      name: 'ternary condition type',
      make: () => loose({ ...base, scoreMod: (s) => (s ? s : 0) }),
      at: 's ?',
      phrase: 'the condition of `?:` must be a boolean, but it is a number',
    },
    {
      name: '! on a number',
      make: () => loose({ ...base, mask: (pos) => !pos.q }),
      at: 'pos.q',
      phrase: '`!` needs a boolean, but its operand is a number',
    },
    {
      name: '=== across types',
      // @ts-expect-error: comparing a boolean with a number, on purpose
      make: () => loose({ ...base, mask: (pos) => pos.q > 0 === 1 }),
      at: '===',
      phrase: '`===` compares a boolean with a number',
    },
    {
      name: 'bigint literal',
      make: () => loose({ ...base, scoreMod: (s) => s * 2n }),
      at: '2n',
      phrase: 'may not contain a bigint literal (`2n`)',
    },
    {
      name: 'regex literal',
      make: () => loose({ ...base, mask: (pos) => pos.q > /q/ }),
      at: '/q/',
      phrase: 'may not contain a regular expression literal',
    },
    {
      name: 'optional chaining',
      make: () => loose({ ...base, mask: (pos) => pos?.q > 0 }),
      at: '?.',
      phrase: 'may not contain optional chaining (`?.`)',
    },
    {
      name: 'spread argument',
      make: () => loose({ ...base, scoreMod: (s) => Math.max(...[s, 0]) }),
      at: '...[s',
      phrase: 'may not contain a spread argument',
    },
    {
      name: 'too many parameters',
      make: () => loose({ ...base, scoreMod: (s, pos, p, extra) => s }),
      at: 'extra',
      phrase: 'scoreMod takes at most 3 parameters (score, pos, params), got 4',
    },
    {
      name: 'rest parameter',
      make: () => loose({ ...base, scoreMod: (...args) => args[0] }),
      at: '...args',
      phrase: 'may not contain a rest parameter',
    },
    {
      name: 'parameter default',
      make: () => loose({ ...base, scoreMod: (s = 1) => s }),
      at: '1) =>',
      phrase: 'may not contain a parameter default value',
    },
    {
      name: 'let binding',
      make: () =>
        loose({
          ...base,
          scoreMod: (s) => {
            let t = s * 2;
            return t;
          },
        }),
      at: 'let t',
      phrase: 'may not contain a `let` binding; use `const`',
    },
    {
      name: 'use before declaration',
      make: () =>
        loose({
          ...base,
          scoreMod: (s) => {
            // @ts-expect-error: b is used before its declaration, on purpose
            const a = b * 2;
            const b = s;
            return a;
          },
        }),
      at: 'b * 2',
      phrase: '`b` is used before its declaration',
    },
    {
      name: 'missing return',
      make: () =>
        loose({
          ...base,
          scoreMod: (s) => {
            const t = s;
          },
        }),
      at: '(s) => {',
      offset: 7,
      phrase: 'scoreMod must end with `return <expression>`',
    },
    {
      name: 'code after return',
      make: () =>
        loose({
          ...base,
          scoreMod: (s) => {
            return s;
            const t = 1;
          },
        }),
      at: 'const t = 1',
      phrase: 'may not contain code after `return`',
    },
    {
      name: 'computed access',
      make: () => loose({ ...base, mask: (pos) => pos['q'] > 0 }),
      at: "pos['q']",
      phrase: 'may not contain a computed property access',
    },
    {
      name: 'typeof',
      make: () => loose({ ...base, mask: (pos) => typeof pos.q === 'number' }),
      at: 'typeof',
      phrase: 'may not contain `typeof`',
    },
    {
      name: 'bitwise and',
      make: () => loose({ ...base, scoreMod: (s, pos) => s * (pos.q & 1) }),
      at: '& 1',
      phrase: 'may not contain the bitwise operator `&`',
    },
    {
      name: 'nullish coalescing',
      make: () => loose({ ...base, scoreMod: (s) => s ?? 0 }),
      at: '??',
      phrase: 'may not contain the `??` operator',
    },
    {
      name: 'Infinity',
      make: () => loose({ ...base, scoreMod: (s) => Math.min(s, Infinity) }),
      at: 'Infinity',
      phrase: 'may not contain `Infinity`',
    },
    {
      name: 'non-finite literal',
      make: () => loose({ ...base, scoreMod: (s) => s * 1e999 }),
      at: '1e999',
      phrase: 'numeric literal 1e999 is not finite',
    },
    {
      name: 'float overflow',
      make: () => loose({ ...base, scoreMod: (s) => s * 1e39 }),
      at: '1e39',
      phrase: 'numeric literal 1e39 does not fit in a float',
    },
    {
      name: 'pos as a value',
      make: () => loose({ ...base, mask: (pos) => pos > 0 }),
      at: 'pos >',
      phrase: '`pos` (pos) must be read through one of its fields',
    },
    {
      name: 'if statement',
      make: () =>
        loose({
          ...base,
          scoreMod: (s) => {
            if (s > 0) return s;
            return 0;
          },
        }),
      at: 'if (',
      phrase: 'may not contain an `if` statement; use `cond ? a : b`',
    },
  ];

  test.each(cases)('$name', ({ name, make, at, offset = 0, phrase }) => {
    const error = catchDsl(make);
    const found = positionOf(ownText, `name: '${name}'`, at);
    const loc = { file: THIS_FILE, line: found.line, column: found.column + offset };
    expect(error.diagnostics[0]?.loc, formatDslError(error)).toEqual(loc);
    expect(error.diagnostics[0]?.message).toContain(phrase);
    expect(error.message.startsWith(`${THIS_FILE}:${loc.line}:${loc.column} error: `)).toBe(true);
    expect(error.loc).toEqual(loc);
  });

  test('the message is a compiler diagnostic: location, excerpt, caret and what is allowed', () => {
    const error = catchDsl(() =>
      loose({
        ...base,
        scoreMod: (s) => {
          while (s > 1) s = s / 2;
          return s;
        },
      }),
    );
    const { line, column } = positionOf(ownText, 'the message is a compiler diagnostic', 'while (');
    const lineText = ownText.split('\n')[line - 1]!;
    expect(error.message).toBe(
      [
        `${THIS_FILE}:${line}:${column} error: scoreMod may not contain a \`while\` loop`,
        `  ${line} | ${lineText}`,
        `  ${' '.repeat(String(line).length)} | ${' '.repeat(column - 1)}^^^^^`,
        '  allowed: arithmetic, comparisons, && || !, ?:, numeric literals, pos.*, params.*,',
        '           Math.exp/log/tanh/abs/min/max/sqrt/pow/floor',
      ].join('\n'),
    );
  });

  test('every unsupported construct of one function is reported, in source order', () => {
    const error = catchDsl(() =>
      loose({ ...base, scoreMod: (s, pos, p) => s * outerScale + p.nope + pos.query }),
    );
    expect(error.diagnostics.map((d) => d.message)).toEqual([
      'scoreMod may not read `outerScale`, a variable from outside the function',
      '`p.nope` is not a declared param (declared: softcap, window)',
      '`pos.query` is not a field of pos',
    ]);
    expect(error.message).toMatch(/\n\n3 errors$/);
  });

  test('code made by new Function is reported against its own text at <anonymous>', () => {
    const make = new Function(
      'attention',
      'base',
      'return attention({ ...base, mask: (pos) => pos.q > limit })',
    );
    const error = catchDsl(() => make(attention, base));
    expect(error.diagnostics[0]?.loc).toEqual({ file: '<anonymous>', line: 1, column: 18 });
    expect(error.message).toContain('mask may not read `limit`');
  });
});

describe('unsupported TypeScript in a file loaded with tsImport', () => {
  const fixtureText = readFileSync(
    fileURLToPath(new URL('./fixtures/dsl/bad-constructs.ts', import.meta.url)),
    'utf8',
  );
  const cases = [
    { factory: 'whileLoop', at: 'while (', phrase: 'scoreMod may not contain a `while` loop' },
    {
      factory: 'closure',
      at: 'counter',
      phrase: 'scoreMod may not read `counter`, a variable from outside the function',
    },
    { factory: 'posField', at: 'token', phrase: '`pos.token` is not a field of pos' },
    {
      factory: 'paramName',
      at: 'softCap',
      phrase: '`p.softCap` is not a declared param (declared: softcap)',
    },
    { factory: 'newObject', at: 'new Number', phrase: 'an object construction (`new`)' },
    { factory: 'ifStatement', at: 'if (', phrase: 'an `if` statement' },
    { factory: 'tooManyParams', at: 'extra', phrase: 'mask takes at most 2 parameters (pos, params), got 3' },
  ];

  test.each(cases)('$factory', async ({ factory, at, phrase }) => {
    const module = (await tsImport(
      new URL('./fixtures/dsl/bad-constructs.ts', import.meta.url).href,
      import.meta.url,
    )) as Record<string, () => unknown>;
    const error = catchDsl(module[factory]!);
    const loc = { file: FIXTURE, ...positionOf(fixtureText, `export const ${factory} =`, at) };
    expect(error.diagnostics[0]?.loc, formatDslError(error)).toEqual(loc);
    expect(error.diagnostics[0]?.message).toContain(phrase);
  });
});
