#!/usr/bin/env node
// The `chunkattn` executable. An installed package runs the compiled CLI from dist/ (its .ts
// sources are not shipped); a source checkout, where cli/main.ts sits beside this file, runs the
// TypeScript through tsx so edits need no rebuild. Either way, users' spec files load through tsx.
import { existsSync } from 'node:fs';

if (existsSync(new URL('./main.ts', import.meta.url))) {
  const { register } = await import('tsx/esm/api');
  register();
  await import('./main.ts');
} else {
  await import('../dist/cli/main.js');
}
