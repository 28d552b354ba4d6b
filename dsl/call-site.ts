// Where `attention({...})` was called, from `new Error().stack`.
//
// The stack is read as text, so whoever maps it wins: under `tsx` and vitest, frames already point
// at the original .ts file, line and column (1-based). Code imported with tsx's `tsImport` inside
// vitest keeps generated positions and a `file://...?tsx-namespace=...` URL; those are mapped here
// with node's `findSourceMap`. A frame from `new Function`/`eval` has no file: translation then
// falls back to the function's own text.

import { findSourceMap } from 'node:module';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The caller's position. `file` is absolute; line and column are 1-based. */
export interface CallSite {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  /** False when the position is known to refer to generated code (then only the file is useful). */
  readonly exact: boolean;
}

const DSL_DIR = fileURLToPath(new URL('.', import.meta.url));

/** The stack of the current call, taken cheaply; resolve it with `callSiteFromStack` only when needed. */
export function captureStack(): string {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = Math.max(limit, 30);
  const stack = new Error().stack ?? '';
  Error.stackTraceLimit = limit;
  return stack;
}

interface Frame {
  readonly location: string;
  readonly line: number;
  readonly column: number;
}

function parseFrame(text: string): Frame | undefined {
  const m = /^\s*at (?:.*? \()?(.+?):(\d+):(\d+)\)?$/.exec(text);
  if (!m) return undefined;
  return { location: m[1]!, line: Number(m[2]), column: Number(m[3]) };
}

function stripQuery(url: string): string {
  return url.replace(/[?#].*$/, '');
}

/** The first frame outside `dsl/`, as a file position (undefined for eval'd code or no stack). */
export function callSiteFromStack(stack: string): CallSite | undefined {
  for (const text of stack.split('\n').slice(1)) {
    if (text.includes('eval at ')) return undefined;
    const frame = parseFrame(text);
    if (!frame) continue;
    const site = resolveFrame(frame);
    if (site === 'skip') continue;
    return site;
  }
  return undefined;
}

function resolveFrame(frame: Frame): CallSite | 'skip' | undefined {
  const { location } = frame;
  if (location.startsWith('node:') || location === 'native' || location.startsWith('<anonymous>')) {
    return 'skip';
  }
  if (location.startsWith('data:')) {
    // tsx's CommonJS-in-ESM wrapper: the file is in a `filePath=` parameter, positions are generated.
    const m = /[?&]filePath=([^&:]+)/.exec(location);
    if (!m) return undefined;
    const file = stripQuery(decodeURIComponent(m[1]!));
    return isInDsl(file) ? 'skip' : { file, line: frame.line, column: frame.column, exact: false };
  }
  if (location.startsWith('file://')) {
    const file = fileURLToPath(stripQuery(location));
    if (isInDsl(file)) return 'skip';
    const map = findSourceMap(location);
    if (map) {
      const origin = map.findOrigin(frame.line, frame.column);
      if ('lineNumber' in origin) {
        const source = origin.fileName.startsWith('file://')
          ? fileURLToPath(stripQuery(origin.fileName))
          : resolve(origin.fileName);
        return { file: source, line: origin.lineNumber, column: origin.columnNumber, exact: true };
      }
      return { file, line: frame.line, column: frame.column, exact: false };
    }
    return { file, line: frame.line, column: frame.column, exact: true };
  }
  const file = resolve(stripQuery(location));
  return isInDsl(file) ? 'skip' : { file, line: frame.line, column: frame.column, exact: true };
}

function isInDsl(file: string): boolean {
  return file.startsWith(DSL_DIR);
}

/** How a file is named in messages and in `SourceLoc.file`: relative to the working directory when inside it. */
export function displayPath(file: string): string {
  if (!isAbsolute(file)) return file;
  const rel = relative(process.cwd(), file);
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) return file;
  return rel.split(sep).join('/');
}
