#!/usr/bin/env node
// clang-format over the project's C++ (config: .clang-format). --check fails on any diff;
// --fix rewrites files in place.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = join(import.meta.dirname, '..');
const roots = ['templates/include', 'runtime/native', 'runtime/cucpu', 'test'];
const skip = new Set(['node_modules', 'build', '.cache']);
const files = [];
function walk(dir) {
  for (const entry of readdirSync(dir)) {
    if (skip.has(entry)) continue;
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) walk(path);
    else if (/\.(h|hpp|cuh|cu|cc|cpp)$/.test(entry)) files.push(path);
  }
}
for (const dir of roots) {
  try {
    walk(join(root, dir));
  } catch {
    // a folder that does not exist yet has nothing to format
  }
}
const fix = process.argv.includes('--fix');
const binary = join(root, 'node_modules', '.bin', 'clang-format');
const args = fix ? ['-i', ...files] : ['--dry-run', '-Werror', ...files];
const result = spawnSync(binary, args, { stdio: 'inherit' });
if (result.status !== 0) {
  if (!fix) console.error('clang-format: run `npm run format` to fix the files above');
  process.exit(result.status ?? 1);
}
console.log(
  `clang-format: ${files.length} files ${fix ? 'formatted' : 'clean'} (${roots.map((r) => relative(root, join(root, r))).join(', ')})`,
);
