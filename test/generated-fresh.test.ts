import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { GENERATED_DIR, generatedFiles } from '../codegen/generate.ts';

test('generated/ matches what `npm run generate` renders from examples/ (not stale)', async () => {
  const files = await generatedFiles();
  const stale: string[] = [];
  for (const [path, content] of files) {
    const full = join(GENERATED_DIR, path);
    if (!existsSync(full) || readFileSync(full, 'utf8') !== content) stale.push(path);
  }
  expect(stale, 'run `npm run generate` and commit generated/').toEqual([]);
  expect(files.has('index.ts')).toBe(true);
});
