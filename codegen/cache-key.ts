// Content addressing: a module's key is a readable name plus a hash of everything that can
// change its bytes — the normalized spec, target, archs, tunables, sanitizer, the compiler's
// own sources (templates, headers, and the TS that renders C++ and picks compiler flags) and
// the toolchain versions.

import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';

/** The package's folder (templates/, runtime/cucpu/ live there), whether this file runs from the
 * sources or from dist/: the package resolves its own name (a self-reference through `exports`). */
export const PACKAGE_ROOT = dirname(createRequire(import.meta.url).resolve('chunkattn/package.json'));
export const PACKAGE_VERSION = (
  JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }
).version;
export const TEMPLATES_DIR = join(PACKAGE_ROOT, 'templates');
export const INCLUDE_DIR = join(TEMPLATES_DIR, 'include');
export const CUCPU_DIR = join(PACKAGE_ROOT, 'runtime', 'cucpu');

/** JSON with object keys sorted, so equal data always hashes equally. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      const sorted: Record<string, unknown> = {};
      for (const k of Object.keys(v).sort()) sorted[k] = (v as Record<string, unknown>)[k];
      return sorted;
    }
    return v;
  });
}

export function sha256(text: string | Buffer): string {
  return createHash('sha256').update(text).digest('hex');
}

function listFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir).sort()) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) out.push(...listFiles(path));
    else if (/\.(h|cuh|hbs)$/.test(entry)) out.push(path);
  }
  return out;
}

/**
 * The TypeScript whose edits change a module's bytes: the renderer, the compiler command lines
 * (build.ts), the plan's launch geometry and the IR → C++ emitter.
 */
export const FINGERPRINTED_SOURCES = [
  'codegen/render.ts',
  'codegen/build.ts',
  'codegen/plan.ts',
  'dsl/emit-cpp.ts',
] as const;

let fingerprint: string | undefined;

/**
 * Hash of the compiler's own sources: any edit to a template, a kernel header, the shim or a
 * FINGERPRINTED_SOURCES file makes new keys. `root` is the package root (tests pass a copy).
 */
export function compilerFingerprint(root: string = PACKAGE_ROOT): string {
  if (fingerprint && root === PACKAGE_ROOT) return fingerprint;
  const hash = createHash('sha256');
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string })
    .version;
  hash.update(`chunkattn ${version}\n`);
  const files = [
    ...listFiles(join(root, relative(PACKAGE_ROOT, TEMPLATES_DIR))),
    ...listFiles(join(root, relative(PACKAGE_ROOT, CUCPU_DIR))),
    ...FINGERPRINTED_SOURCES.map((file) => join(root, file)),
  ];
  for (const file of files) {
    hash.update(relative(root, file));
    hash.update(readFileSync(file));
  }
  const result = `${version}+${hash.digest('hex').slice(0, 12)}`;
  if (root === PACKAGE_ROOT) fingerprint = result;
  return result;
}
