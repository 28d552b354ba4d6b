// Loads the KernelSpecs a .ts file exports: the default export, named exports, and arrays of specs.
// The file is imported with tsx's `tsImport`, so this works from plain node as well as under tsx.

import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { isKernelSpec, type SpecOverrides, validateSpec, withOverrides } from './attention.ts';
import { displayPath } from './call-site.ts';
import { DslError } from './errors.ts';
import type { KernelSpec } from './spec.ts';

const SPEC_EXTENSIONS = ['.ts', '.mts', '.cts', '.js', '.mjs', '.cjs'];

/**
 * The first `line:column` in an error's text that follows the spec file's path (a file URL, or a
 * data URL's encoded `filePath=` when tsx loaded the file as CommonJS).
 */
function locationIn(text: string, path: string): { line: number; column: number } | undefined {
  let decoded = text;
  try {
    decoded = decodeURIComponent(text);
  } catch {
    // not URL-encoded: search the text as it is
  }
  const escaped = path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const match = new RegExp(`${escaped}(?:\\?[^\\s:]*)?:(\\d+):(\\d+)`).exec(decoded);
  return match ? { line: Number(match[1]), column: Number(match[2]) } : undefined;
}

function collect(value: unknown, out: KernelSpec[], depth: number): void {
  if (isKernelSpec(value)) out.push(value);
  else if (Array.isArray(value) && depth < 4) for (const item of value) collect(item, out, depth + 1);
}

/**
 * A spec file outside a `"type": "module"` package loads as CommonJS, so its `export default`
 * arrives as `default.default` (module.exports = { __esModule: true, default: spec }).
 */
function unwrapCommonJs(value: unknown): unknown {
  const exports = value as { __esModule?: unknown; default?: unknown } | null;
  return typeof exports === 'object' &&
    exports !== null &&
    exports.__esModule === true &&
    'default' in exports
    ? exports.default
    : value;
}

/**
 * Every KernelSpec `file` exports (default first, then named exports in name order), each with
 * `overrides` applied. The same spec exported twice counts once; two different specs with one
 * name are an error.
 */
export async function loadSpecs(file: string, overrides?: SpecOverrides): Promise<KernelSpec[]> {
  const path = resolve(file);
  const shown = displayPath(path);
  if (!existsSync(path) || !statSync(path).isFile()) {
    throw new DslError(`${shown}: no such file`, {
      path: 'file',
      allowed: 'a .ts file that exports attention({...}) specs',
    });
  }
  if (!SPEC_EXTENSIONS.some((ext) => path.endsWith(ext))) {
    throw new DslError(`${shown}: not a spec module (${SPEC_EXTENSIONS.join(', ')})`, {
      path: 'file',
      allowed: 'a .ts file that exports attention({...}) specs',
    });
  }
  const { tsImport } = await import('tsx/esm/api');
  let module: Record<string, unknown>;
  try {
    module = (await tsImport(pathToFileURL(path).href, import.meta.url)) as Record<string, unknown>;
  } catch (error) {
    // A DslError from attention() keeps its own location; anything else the file threw or
    // failed to parse is the spec file's error, located where its message or stack says.
    if (error instanceof DslError) throw error;
    const text = error instanceof Error ? `${error.message}\n${error.stack ?? ''}` : String(error);
    const loc = locationIn(text, path);
    const first = (error instanceof Error ? error.message : String(error)).split('\n')[0]!.slice(0, 500);
    throw new DslError(`${shown}: importing the spec failed: ${first}`, {
      path: 'file',
      ...(loc && { loc: { file: shown, ...loc } }),
    });
  }
  // A file outside an ESM package loads as CommonJS: its exports arrive as the default export.
  const inner = module['default'] as Record<string, unknown> | undefined;
  if (typeof inner === 'object' && inner !== null && inner['__esModule'] === true) module = inner;
  const found: KernelSpec[] = [];
  if ('default' in module) collect(unwrapCommonJs(module['default']), found, 0);
  for (const key of Object.keys(module).sort()) if (key !== 'default') collect(module[key], found, 0);

  const specs: KernelSpec[] = [];
  const byName = new Map<string, string>();
  for (const spec of found) {
    if (specs.includes(spec)) continue;
    const json = JSON.stringify(spec);
    const seen = byName.get(spec.name);
    if (seen === json) continue;
    if (seen !== undefined) {
      throw new DslError(`${shown}: two different specs are named '${spec.name}'`, {
        path: 'name',
        allowed: 'one spec per name',
      });
    }
    byName.set(spec.name, json);
    specs.push(spec);
  }
  if (specs.length === 0) {
    throw new DslError(`${shown}: exports no KernelSpec`, {
      path: 'file',
      allowed: 'export default attention({...}), named exports of specs, or arrays of specs',
    });
  }
  // A brand can be forged by any file: every spec is validated again before it is used.
  const checked = specs.map((s) => validateSpec(s));
  return overrides ? checked.map((s) => withOverrides(s, overrides)) : checked;
}
