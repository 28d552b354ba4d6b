// Compiler-style rendering of DSL errors:
//
//   examples/my-model.ts:14:22 error: scoreMod may not contain a `for` loop
//     14 |   scoreMod: (s) => { for (let i = 0; i < 3; i++) s *= 2; return s; },
//        |                      ^^^
//     allowed: arithmetic, comparisons, && || !, ?:, numeric literals, pos.*, params.*,
//              Math.exp/log/tanh/abs/min/max/sqrt/pow/floor

import type { DslDiagnostic, DslError } from './errors.ts';
import type { SourceLoc } from './spec.ts';

const ALLOWED_WIDTH = 90;
/** Longest excerpt printed; minified one-line sources are cut around the column. */
const EXCERPT_WIDTH = 120;

export function formatLoc(loc: SourceLoc): string {
  return `${loc.file}:${loc.line}:${loc.column}`;
}

/** `  allowed: a, b, c,` word-wrapped (never inside a `code span`), continuation lines aligned. */
export function formatAllowed(allowed: string): string {
  const head = '  allowed: ';
  const indent = ' '.repeat(head.length);
  const lines: string[] = [];
  let line = head;
  for (const word of allowed.match(/(?:[^\s`]*`[^`]*`[^\s`]*)+|\S+/g) ?? []) {
    if (line.length > head.length && line.length + word.length > ALLOWED_WIDTH) {
      lines.push(line.trimEnd());
      line = indent;
    }
    line += `${word} `;
  }
  lines.push(line.trimEnd());
  return lines.join('\n');
}

function excerpt(d: DslDiagnostic): string {
  const lineNo = String(d.loc.line);
  const gutter = ' '.repeat(lineNo.length);
  let text = d.lineText.replace(/\s+$/, '');
  let column = d.loc.column;
  if (text.length > EXCERPT_WIDTH) {
    const begin = Math.max(0, column - 1 - EXCERPT_WIDTH / 2);
    const end = Math.min(text.length, begin + EXCERPT_WIDTH);
    text = (begin > 0 ? '…' : '') + text.slice(begin, end) + (end < text.length ? '…' : '');
    column = column - begin + (begin > 0 ? 1 : 0);
  }
  const before = text.slice(0, column - 1).replace(/[^\t]/g, ' ');
  const length = Math.max(1, Math.min(d.length, text.length - (column - 1)));
  return `  ${lineNo} | ${text}\n  ${gutter} | ${before}${'^'.repeat(length)}`;
}

export function formatDiagnostic(d: DslDiagnostic): string {
  const parts = [`${formatLoc(d.loc)} error: ${d.message}`];
  if (d.lineText.trim() !== '') parts.push(excerpt(d));
  if (d.allowed) parts.push(formatAllowed(d.allowed));
  return parts.join('\n');
}

export function formatDiagnostics(diagnostics: readonly DslDiagnostic[]): string {
  const text = diagnostics.map(formatDiagnostic).join('\n\n');
  return diagnostics.length > 1 ? `${text}\n\n${diagnostics.length} errors` : text;
}

/** The text to show a user for any DslError: diagnostics with excerpts, or `file:line:col error: path: ...`. */
export function formatDslError(error: DslError): string {
  if (error.diagnostics.length > 0) return formatDiagnostics(error.diagnostics);
  return error.loc ? `${formatLoc(error.loc)} error: ${error.message}` : `error: ${error.message}`;
}
