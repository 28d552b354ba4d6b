// biome-ignore-all lint/complexity/useArrowFunction: a function expression is one of the constructs under test
// The C++ that every target compiles computes what the JavaScript function computes: each score/mask
// expression goes into one g++ harness, runs on thousands of random inputs, and is compared with the
// original JS function and with evaluateExpr on the IR (float64).

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, test } from 'vitest';
import { attention, evaluateExpr, type KernelSpec, type Pos, variantFunctions } from '../dsl/index.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

interface Params {
  readonly softcap: number;
  readonly window: number;
  readonly slope: number;
  readonly a: number;
  readonly b: number;
}
type ScoreFn = (s: number, pos: Pos, p: Params) => number;
type MaskFn = (pos: Pos, p: Params) => boolean;

const base = {
  name: 'equivalence',
  heads: { q: 32, kv: 8 },
  headDim: 128,
  dtype: 'f16',
  params: { softcap: 50, window: 64, slope: 0.5, a: 3, b: -2 },
  targets: ['cpu'],
} as const;

const scoreMods: readonly ScoreFn[] = [
  (s, _pos, p) => p.softcap * Math.tanh(s / p.softcap),
  (s, pos) => s - 0.5 * (pos.q - pos.kv),
  (s, pos, p) => s - p.slope * 2 ** (-(pos.qHead + 1) / 8) * (pos.q - pos.kv),
  (s, pos) => (pos.kv <= pos.q ? s : -1e30),
  (s, pos, p) => (pos.q - pos.kv < p.window ? s : -1e30),
  // biome-ignore lint/style/useExponentiationOperator: Math.pow is the construct under test
  (s) => Math.pow(s, 2) / 10,
  (s) => s ** 3 * 0.001,
  (s) => Math.floor(s * 4) / 4,
  (s, pos) => s + ((pos.q - pos.kv) % 7),
  (s) => s % 3.5,
  (s, _pos, p) => Math.min(Math.max(s, -p.softcap), p.softcap),
  (s, pos) => Math.max(s, pos.kvHead, -3),
  (s, pos, p) => Math.min(s, p.a, pos.qHead, 10),
  (s) => Math.log(1 + Math.exp(s / 10)),
  (s) => Math.sqrt(Math.abs(s)) * (s < 0 ? -1 : 1),
  (s, pos) => (pos.kv <= pos.q && (pos.qHead % 2 === 0 || pos.kv % 3 !== 0) ? s : 0),
  (s, pos) => (pos.kv === pos.q ? s * 2 : pos.kv > pos.q - 4 ? s : s / 2),
  (s, { q, kv }, { slope }) => {
    const distance = q - kv;
    const bias = slope * Math.log(1 + Math.abs(distance));
    return s - bias;
  },
  (s) => -(-s) + +2,
  (s) => s * Math.PI - Math.E,
  (s, _pos, p) => (s > p.a ? s - p.a : p.b),
  (s, pos) => s + pos.seq * 0.125,
  (s, pos) => (pos.q > 10 === pos.kv > 10 ? s : -s),
  (s, pos) => (!(pos.kv > pos.q) ? s : 0),
  (s, pos) => s / (1 + pos.q - pos.kv),
  (s) => s * 1.5e-3 + 2e2,
  (s) => 30 * Math.tanh(s),
  (s, pos) => Math.floor((pos.q - pos.kv) / 16) * s,
  (s) => s + 0x10 - 1_000,
  (s, pos, p) => s * Math.exp(-(pos.q - pos.kv) / p.window),
  function (s, pos, p) {
    const t = s / p.softcap;
    return p.softcap * Math.tanh(t) + (pos.kv <= pos.q ? 0 : -1e4);
  },
];

const masks: readonly MaskFn[] = [
  (pos) => pos.kv <= pos.q,
  (pos, p) => pos.q - pos.kv < p.window,
  (pos, p) => pos.kv < 4 || pos.q - pos.kv < p.window,
  (pos) => Math.floor(pos.q / 64) === Math.floor(pos.kv / 64),
  (pos) => (pos.qHead % 2 === 0 ? pos.kv <= pos.q : pos.q - pos.kv < 32),
  (pos) => pos.seq % 3 !== 1 && pos.kv <= pos.q,
  () => true,
  (pos) => !(pos.kv > pos.q),
  (pos) => pos.kvHead === pos.qHead % 8 || pos.kv % 2 === 0,
  (pos) => (pos.q - pos.kv) % 4 === 0,
  (pos) => pos.kv <= pos.q === (pos.kv % 2 === 0),
  (pos, p) => pos.q - pos.kv <= p.a * 10 && pos.kv >= 0,
  ({ q, kv }, { window }) => {
    const distance = q - kv;
    return distance >= 0 && distance < window;
  },
];

const PARAM_NAMES = ['softcap', 'window', 'slope', 'a', 'b'] as const;

/** Deterministic inputs: float-exact scores and params, integer positions (exact in float). */
function* inputs(count: number): Generator<{ score: number; pos: Pos; params: number[] }> {
  let state = 0x9e3779b9;
  const random = () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  for (let i = 0; i < count; i++) {
    const q = i % 2 === 0 ? int(0, 300) : int(0, 5000);
    const qHead = int(0, 31);
    yield {
      score: Math.fround((random() - 0.5) * 60),
      pos: { seq: int(0, 100), qHead, kvHead: Math.floor(qHead / 4), q, kv: int(0, q + 5) },
      params: [
        Math.fround(10 + random() * 50),
        int(1, 200),
        Math.fround(0.01 + random()),
        int(-5, 5),
        Math.fround((random() - 0.5) * 6),
      ],
    };
  }
}

function harnessSource(scores: readonly KernelSpec[], maskSpecs: readonly KernelSpec[]): string {
  const lines = ['#include <cmath>', '#include <cstdio>', '#include <chunkattn/variant.h>', ''];
  scores.forEach((spec, i) => {
    lines.push(
      `static float f_${i}([[maybe_unused]] float score, [[maybe_unused]] ca::Pos pos, [[maybe_unused]] const float* params) {`,
      `  return ${spec.scoreMod!.cpp};`,
      '}',
    );
  });
  maskSpecs.forEach((spec, i) => {
    lines.push(
      `static bool m_${i}([[maybe_unused]] ca::Pos pos, [[maybe_unused]] const float* params) {`,
      `  return ${spec.mask!.cpp};`,
      '}',
    );
  });
  const calls = [
    ...scores.map((_, i) => `std::printf(" %.9g", (double)f_${i}(score, pos, params));`),
    ...maskSpecs.map((_, i) => `std::printf(" %d", m_${i}(pos, params) ? 1 : 0);`),
  ];
  lines.push(
    'int main() {',
    '  float score;',
    '  float params[5];',
    '  ca::Pos pos;',
    '  while (std::scanf("%f %d %d %d %d %d %f %f %f %f %f", &score, &pos.seq, &pos.q_head, &pos.kv_head, &pos.q,',
    '                    &pos.kv, &params[0], &params[1], &params[2], &params[3], &params[4]) == 11) {',
    ...calls.map((c) => `    ${c}`),
    '    std::printf("\\n");',
    '  }',
    '  return 0;',
    '}',
  );
  return `${lines.join('\n')}\n`;
}

function parseCpp(text: string): number {
  if (text === 'nan' || text === '-nan') return Number.NaN;
  if (text === 'inf') return Number.POSITIVE_INFINITY;
  if (text === '-inf') return Number.NEGATIVE_INFINITY;
  return Number(text);
}

function closeEnough(cpp: number, js: number): boolean {
  if (Number.isNaN(js) || Number.isNaN(cpp)) return Number.isNaN(js) && Number.isNaN(cpp);
  if (!Number.isFinite(js) || !Number.isFinite(cpp)) return cpp === js;
  return Math.abs(cpp - js) <= 1e-5 * Math.max(1, Math.abs(js));
}

describe('score/mask C++ matches JavaScript', () => {
  const scoreSpecs = scoreMods.map((f) => attention({ ...base, scoreMod: f }));
  const maskSpecs = masks.map((f) => attention({ ...base, mask: f }));
  const cases = [...inputs(4000)];
  let rows: string[][] = [];

  beforeAll(() => {
    const source = harnessSource(scoreSpecs, maskSpecs);
    const key = createHash('sha256').update(source).digest('hex').slice(0, 16);
    const dir = join(process.env.CHUNKATTN_CACHE ?? tmpdir(), 'dsl-cpp-equivalence', key);
    const binary = join(dir, 'harness');
    if (!existsSync(binary)) {
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'harness.cpp'), source);
      const partial = `${binary}.${process.pid}`;
      execFileSync(
        'g++',
        [
          '-O1',
          '-std=c++20',
          '-DCA_TARGET_CPU',
          '-Wall',
          '-Wextra',
          '-Wdouble-promotion',
          '-Wfloat-conversion',
          '-Werror',
          '-I',
          join(ROOT, 'templates/include'),
          join(dir, 'harness.cpp'),
          '-o',
          partial,
        ],
        { stdio: 'pipe' },
      );
      renameSync(partial, binary);
    }
    const input = cases.map((c) =>
      [c.score, c.pos.seq, c.pos.qHead, c.pos.kvHead, c.pos.q, c.pos.kv, ...c.params].join(' '),
    );
    const out = execFileSync(binary, {
      input: `${input.join('\n')}\n`,
      encoding: 'utf8',
      maxBuffer: 256 << 20,
    });
    rows = out
      .trim()
      .split('\n')
      .map((line) => line.trim().split(/\s+/));
  }, 120_000);

  test(`${scoreMods.length} score functions and ${masks.length} masks were translated`, () => {
    expect(scoreMods.length + masks.length).toBeGreaterThanOrEqual(30);
    expect(rows.length).toBe(cases.length);
  });

  test.each(scoreMods.map((f, i) => ({ i, f, source: scoreSpecs[i]!.scoreMod!.cpp })))(
    'scoreMod #$i: $source',
    ({ i, f }) => {
      const ir = scoreSpecs[i]!.scoreMod!.ir;
      const mismatches: string[] = [];
      cases.forEach((c, row) => {
        const named = Object.fromEntries(PARAM_NAMES.map((n, k) => [n, c.params[k]!])) as unknown as Params;
        const js = f(c.score, c.pos, named);
        const viaIr = evaluateExpr(ir, c);
        if (!Object.is(js, viaIr)) mismatches.push(`IR ${viaIr} != JS ${js} at ${JSON.stringify(c)}`);
        const cpp = parseCpp(rows[row]![i]!);
        if (!closeEnough(cpp, js)) mismatches.push(`C++ ${cpp} != JS ${js} at ${JSON.stringify(c)}`);
      });
      expect(mismatches.slice(0, 5)).toEqual([]);
    },
  );

  test.each(masks.map((f, i) => ({ i, f, source: maskSpecs[i]!.mask!.cpp })))(
    'mask #$i: $source',
    ({ i, f }) => {
      const ir = maskSpecs[i]!.mask!.ir;
      const column = scoreMods.length + i;
      const mismatches: string[] = [];
      let kept = 0;
      cases.forEach((c, row) => {
        const named = Object.fromEntries(PARAM_NAMES.map((n, k) => [n, c.params[k]!])) as unknown as Params;
        const js = f(c.pos, named);
        kept += js ? 1 : 0;
        const viaIr = evaluateExpr(ir, c);
        if (viaIr !== js) mismatches.push(`IR ${viaIr} != JS ${js} at ${JSON.stringify(c)}`);
        const cpp = rows[row]![column] === '1';
        if (cpp !== js) mismatches.push(`C++ ${cpp} != JS ${js} at ${JSON.stringify(c)}`);
      });
      expect(mismatches.slice(0, 5)).toEqual([]);
      if (i !== 6) expect(kept, 'the inputs exercise both outcomes').toBeLessThan(cases.length);
      expect(kept).toBeGreaterThan(0);
    },
  );

  test('variantFunctions agree with evaluateExpr on the declared defaults', () => {
    const fns = variantFunctions(scoreSpecs[0]!);
    expect(fns.params).toEqual([50, 64, 0.5, 3, -2]);
    const p = { seq: 0, qHead: 0, kvHead: 0, q: 10, kv: 3 };
    expect(fns.scoreMod!(20, p, fns.params)).toBe(
      evaluateExpr(scoreSpecs[0]!.scoreMod!.ir, { score: 20, pos: p, params: fns.params }),
    );
  });
});
