// Content addressing: a module's key is a readable name plus a hash of everything that can
// change its bytes — the normalized spec, target, archs, tunables, sanitizer, the compiler's
// own sources (templates and headers) and the toolchain versions.

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

let fingerprint: string | undefined;

/** Hash of the compiler's own sources: any edit to a template or kernel header makes new keys. */
export function compilerFingerprint(): string {
  if (fingerprint) return fingerprint;
  const hash = createHash('sha256');
  const version = PACKAGE_VERSION;
  hash.update(`chunkattn ${version}\n`);
  for (const dir of [TEMPLATES_DIR, CUCPU_DIR]) {
    for (const file of listFiles(dir)) {
      hash.update(relative(PACKAGE_ROOT, file));
      hash.update(readFileSync(file));
    }
  }
  fingerprint = `${version}+${hash.digest('hex').slice(0, 12)}`;
  return fingerprint;
}
