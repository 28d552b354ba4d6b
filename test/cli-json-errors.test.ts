// The CLI's error contract: with --json, every failing run prints exactly one JSON object as its
// last stdout line, { ok: false, error: { kind, message, file?, line?, column? } }; user errors
// exit 1 and never show a stack trace (only --verbose does, for internal errors).

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { REPO, runCli } from './cli-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'chunkattn-cli-json-'));
const DSL = JSON.stringify(join(REPO, 'dsl', 'index.ts'));

function spec(name: string, body: string): string {
  const file = join(dir, `${name}.ts`);
  writeFileSync(file, `import { attention } from ${DSL};\n${body}\n`);
  return file;
}

const throwsAtImport = spec('throws', "throw new Error('spec file exploded');");
const syntaxError = spec('syntax', 'export default attention({ name: "x", heads: { q: 8, kv: 8 ');
const hugeHeads = spec(
  'huge',
  "export default attention({ name: 'x', heads: { q: 1e300, kv: 1 }, headDim: 64, dtype: 'f16' });",
);
const billionHeads = spec(
  'billion',
  "export default attention({ name: 'x', heads: { q: 1000000007, kv: 2 }, headDim: 64, dtype: 'f16' });",
);
const longName = spec(
  'long',
  `export default attention({ name: '${'n'.repeat(5000)}', heads: { q: 4, kv: 4 }, headDim: 64, dtype: 'f16' });`,
);
const noSpecs = spec('empty', 'export const x = 1;');
const badMask = spec(
  'mask',
  "export default attention({ name: 'x', heads: { q: 4, kv: 4 }, headDim: 64, dtype: 'f16',\n  mask: (pos) => { for (;;) {} } });",
);
const good = spec(
  'good',
  "export default attention({ name: 'good', heads: { q: 4, kv: 4 }, headDim: 64, dtype: 'f16', targets: ['cpu'] });",
);

const CASES: [string, string[], string, { file?: string; line?: number }?][] = [
  ['a missing spec file', ['compile', join(dir, 'nope.ts')], 'spec'],
  ['README.md as the spec', ['compile', join(REPO, 'README.md')], 'spec'],
  ['a spec that throws at import', ['compile', throwsAtImport], 'spec', { line: 2 }],
  ['a spec with a syntax error', ['compile', syntaxError], 'spec'],
  ['heads 1e300', ['compile', hugeHeads], 'spec'],
  ['heads 1000000007', ['compile', billionHeads], 'spec'],
  ['a 5,000-character name', ['compile', longName], 'spec'],
  ['a file that exports no spec', ['compile', noSpecs], 'spec'],
  ['a mask with a loop', ['compile', badMask], 'spec', { line: 3 }],
  ['an unknown command', ['frobnicate'], 'usage'],
  ['an unknown flag', ['compile', good, '--frob'], 'usage'],
  ['a missing argument', ['compile'], 'usage'],
  ['--target tpu', ['compile', good, '--target', 'tpu'], 'usage'],
  ['--arch sm_70', ['compile', good, '--arch', 'sm_70'], 'usage'],
  ['--arch with --target cpu', ['compile', good, '--arch', 'sm_80', '--target', 'cpu'], 'usage'],
  ['--sanitize with --target cpu', ['compile', good, '--sanitize', 'address', '--target', 'cpu'], 'usage'],
  ['--sanitize bogus', ['compile', good, '--sanitize', 'bogus', '--target', 'emu'], 'usage'],
  ['--head-dim abc', ['compile', good, '--head-dim', 'abc'], 'usage'],
  ['--head-dim 100', ['compile', good, '--head-dim', '100'], 'spec'],
  ['--chunk-size 7', ['inspect', good, '--chunk-size', '7'], 'spec'],
  ['inspect a missing file', ['inspect', join(dir, 'nope.ts')], 'spec'],
  ['bench of an unknown report', ['bench', 'nope'], 'usage'],
  ['demo --batch 0', ['demo', '--batch', '0'], 'usage'],
  ['demo --batch x', ['demo', '--batch', 'x'], 'usage'],
  ['cache of an unknown action', ['cache', 'explode'], 'usage'],
  ['cache prune --older-than soon', ['cache', 'prune', '--older-than', 'soon'], 'usage'],
  ['doctor with an unknown flag', ['doctor', '--frob'], 'usage'],
];

test.each(CASES)(
  '%s: exit 1, one JSON error object last, no stack trace',
  async (_name, args, kind, where) => {
    const result = await runCli([...args, '--json'], { CHUNKATTN_CACHE: join(dir, 'cache') });
    expect(result.exitCode, result.stderr).toBe(1);
    const lines = result.stdout.trim().split('\n');
    const json = JSON.parse(lines.at(-1)!) as { ok: boolean; error: Record<string, unknown> };
    expect(lines.filter((line) => line.startsWith('{'))).toHaveLength(1);
    expect(json.ok).toBe(false);
    expect(json.error['kind']).toBe(kind);
    expect(String(json.error['message']).length).toBeGreaterThan(0);
    expect(String(json.error['message']).length).toBeLessThan(2000);
    if (where?.line !== undefined) {
      expect(json.error['line']).toBe(where.line);
      expect(String(json.error['file'])).toMatch(/\.ts$/);
    }
    expect(result.stderr).not.toMatch(/\n\s+at .*:\d+:\d+/);
    expect(result.stderr).not.toMatch(/^internal error/m);
  },
);

test('a success under --json ends with { ok: true, ... }', async () => {
  const result = await runCli(['inspect', good, '--json']);
  expect(result.exitCode, result.stderr).toBe(0);
  expect((result.json as { ok: boolean }).ok).toBe(true);
});
