// ts-morph, loaded on first use: its import costs ~0.5 s, which specs without score/mask functions
// never pay. `attention()` is synchronous (example files `export default attention({...})`), so
// the lazy load is a synchronous require of the CommonJS package rather than a dynamic import.
//
// Parsing is syntax-only: one in-memory project, no lib files, never type-checked.

import { createRequire } from 'node:module';
import type { Project, SourceFile } from 'ts-morph';

export type TsMorph = typeof import('ts-morph');

let loaded: TsMorph | undefined;
let project: Project | undefined;
let anonymousCount = 0;

export function tsMorph(): TsMorph {
  loaded ??= createRequire(import.meta.url)('ts-morph') as TsMorph;
  return loaded;
}

function getProject(): Project {
  const { Project } = tsMorph();
  project ??= new Project({
    useInMemoryFileSystem: true,
    skipLoadingLibFiles: true,
    compilerOptions: { allowJs: true, noResolve: true },
  });
  return project;
}

const parsed = new Map<string, { readonly text: string; readonly file: SourceFile }>();

/** Parses `text` as the file `path` (cached while the text is unchanged). */
export function parseFile(path: string, text: string): SourceFile {
  const hit = parsed.get(path);
  if (hit && hit.text === text) return hit.file;
  const virtualPath = /\.[cm]?[jt]sx?$/.test(path) ? path : `${path}.ts`;
  const file = getProject().createSourceFile(virtualPath, text, { overwrite: true });
  parsed.set(path, { text, file });
  return file;
}

/** Parses a snippet (e.g. `fn.toString()`) as its own throwaway file. */
export function parseSnippet(text: string): SourceFile {
  anonymousCount++;
  const file = getProject().createSourceFile(`/__chunkattn_snippet_${anonymousCount}.ts`, text, {
    overwrite: true,
  });
  return file;
}

export function forgetSnippet(file: SourceFile): void {
  getProject().removeSourceFile(file);
}
