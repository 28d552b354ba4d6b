// npm run generate: rewrites generated/ from examples/ (files are written only when they change,
// and files that no longer belong are removed).

import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { GENERATED_DIR, generatedFiles } from '../codegen/generate.ts';

function listFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((entry) => {
    const path = join(dir, entry);
    return statSync(path).isDirectory() ? listFiles(path) : [relative(GENERATED_DIR, path)];
  });
}

const files = await generatedFiles();
let written = 0;
for (const [path, content] of files) {
  const full = join(GENERATED_DIR, path);
  if (existsSync(full) && readFileSync(full, 'utf8') === content) continue;
  mkdirSync(dirname(full), { recursive: true });
  writeFileSync(full, content);
  written++;
}
let removed = 0;
for (const path of listFiles(GENERATED_DIR)) {
  if (files.has(path) || path === 'README.md') continue;
  rmSync(join(GENERATED_DIR, path));
  removed++;
}
console.log(`generated/: ${files.size} files, ${written} written, ${removed} removed`);
