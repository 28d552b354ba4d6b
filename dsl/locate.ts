// Finds the TypeScript source of a score/mask function.
//
// 1. The `attention(...)` call at the call site's position, its `scoreMod`/`mask` property (through
//    `const` objects, spreads of `const` objects, and identifiers naming a `const` arrow function or
//    a function declaration in the same file).
// 2. Otherwise any call in that file whose `scoreMod`/`mask` property is the same function.
// 3. Otherwise the function's own text, `fn.toString()`, at `<anonymous>:line:col`.
//
// "The same function" is checked, not assumed: the identifiers and literal values of the source
// found must equal those of `fn.toString()` (what actually runs, after tsx/esbuild stripped types
// and whitespace). A stale or mis-mapped position therefore falls through to the next step.

import { readFileSync } from 'node:fs';
import type {
  ArrowFunction,
  CallExpression,
  Expression,
  FunctionDeclaration,
  FunctionExpression,
  MethodDeclaration,
  Node,
  ObjectLiteralExpression,
  SourceFile,
  ts as TsNamespace,
} from 'ts-morph';
import type { CallSite } from './call-site.ts';
import { displayPath } from './call-site.ts';
import { DslError } from './errors.ts';
import { forgetSnippet, parseFile, parseSnippet, tsMorph } from './ts-morph.ts';

export type FunctionNode = ArrowFunction | FunctionExpression | MethodDeclaration | FunctionDeclaration;

export interface Position {
  readonly line: number;
  readonly column: number;
  readonly lineText: string;
}

/** A function's syntax tree and how to turn its node positions into file positions. */
export interface FunctionSource {
  readonly node: FunctionNode;
  /** As shown in messages: a cwd-relative path, or `<anonymous>` for a function's own text. */
  readonly file: string;
  /** The function as written. */
  readonly text: string;
  position(pos: number): Position;
  /** Releases a throwaway parse (no-op for files, which stay cached). */
  dispose(): void;
}

export type VariantKind = 'scoreMod' | 'mask';

export function locateFunction(
  kind: VariantKind,
  fn: (...args: never[]) => unknown,
  site: CallSite | undefined,
): FunctionSource {
  const fnText = Function.prototype.toString.call(fn);
  if (/\{\s*\[native code\]\s*\}\s*$/.test(fnText)) {
    throw new DslError(
      `${kind}: cannot read the source of this function (a bound or built-in function); write it inline`,
      { path: kind, allowed: 'an arrow function, e.g. (score, pos, params) => ...' },
    );
  }
  const snippet = snippetSource(fnText);
  if (!site || !snippet) return snippet ?? unparsable(kind, fnText);
  let text: string;
  try {
    text = readFileSync(site.file, 'utf8');
  } catch {
    return snippet;
  }
  const file = parseFile(site.file, text);
  const expected = signature(snippet.node);
  const fromFile = findInFile(file, kind, site, expected);
  if (!fromFile) return snippet;
  snippet.dispose();
  return fileSource(file, fromFile, displayPath(site.file));
}

function unparsable(kind: VariantKind, fnText: string): never {
  throw new DslError(`${kind}: cannot parse the source of this function: ${fnText.slice(0, 80)}`, {
    path: kind,
    allowed: 'an arrow function, e.g. (score, pos, params) => ...',
  });
}

interface FileIndex {
  readonly calls: readonly CallExpression[];
  /** Per kind: every call's function for that property, with its signature (computed once per file). */
  readonly candidates: Map<VariantKind, readonly { node: FunctionNode; line: number; signature: string }[]>;
}

const indexes = new WeakMap<SourceFile, FileIndex>();

function indexOf(file: SourceFile): FileIndex {
  let index = indexes.get(file);
  if (!index) {
    index = { calls: file.getDescendantsOfKind(tsMorph().SyntaxKind.CallExpression), candidates: new Map() };
    indexes.set(file, index);
  }
  return index;
}

function candidatesOf(file: SourceFile, kind: VariantKind) {
  const index = indexOf(file);
  let list = index.candidates.get(kind);
  if (!list) {
    list = index.calls.flatMap((call) => {
      const node = functionInCall(call.getArguments()[0], kind);
      return node ? [{ node, line: call.getStartLineNumber(), signature: signature(node) }] : [];
    });
    index.candidates.set(kind, list);
  }
  return list;
}

function findInFile(
  file: SourceFile,
  kind: VariantKind,
  site: CallSite,
  expected: string,
): FunctionNode | undefined {
  if (site.exact) {
    const pos = positionOf(file, site.line, site.column);
    if (pos !== undefined) {
      let best: CallExpression | undefined;
      for (const call of indexOf(file).calls) {
        const callee = call.getExpression();
        const hit = (callee.getStart() <= pos && pos <= callee.getEnd()) || call.getStart() === pos;
        if (hit && (!best || call.getWidth() < best.getWidth())) best = call;
      }
      const node = best && functionInCall(best.getArguments()[0], kind);
      if (node && signature(node) === expected) return node;
    }
  }
  let best: { node: FunctionNode; distance: number } | undefined;
  for (const candidate of candidatesOf(file, kind)) {
    if (candidate.signature !== expected) continue;
    const distance = Math.abs(candidate.line - site.line);
    if (!best || distance < best.distance) best = { node: candidate.node, distance };
  }
  return best?.node;
}

function positionOf(file: SourceFile, line: number, column: number): number | undefined {
  try {
    return file.compilerNode.getPositionOfLineAndCharacter(line - 1, column - 1);
  } catch {
    return undefined;
  }
}

/** Strips parentheses and type-only wrappers (`as`, `satisfies`, `<T>x`, `x!`). */
export function unwrap(node: Node): Node {
  const { Node } = tsMorph();
  let n = node;
  for (;;) {
    if (
      Node.isParenthesizedExpression(n) ||
      Node.isAsExpression(n) ||
      Node.isSatisfiesExpression(n) ||
      Node.isTypeAssertion(n) ||
      Node.isNonNullExpression(n)
    ) {
      n = n.getExpression();
    } else {
      return n;
    }
  }
}

function functionInCall(arg: Node | undefined, kind: VariantKind): FunctionNode | undefined {
  const object = arg && resolveObject(arg, 0);
  if (!object) return undefined;
  const init = findProperty(object, kind, 0);
  return init && resolveFunction(init, 0);
}

function resolveObject(node: Node, depth: number): ObjectLiteralExpression | undefined {
  const { Node } = tsMorph();
  if (depth > 8) return undefined;
  const n = unwrap(node);
  if (Node.isObjectLiteralExpression(n)) return n;
  if (Node.isIdentifier(n)) {
    const init = constInitializer(n.getSourceFile(), n.getText(), n.getStart());
    return init && resolveObject(init, depth + 1);
  }
  return undefined;
}

function findProperty(object: ObjectLiteralExpression, name: string, depth: number): Node | undefined {
  const { Node } = tsMorph();
  const properties = object.getProperties();
  for (let i = properties.length - 1; i >= 0; i--) {
    const p = properties[i]!;
    if (Node.isPropertyAssignment(p) && propertyName(p.getNameNode()) === name) return p.getInitializer();
    if (Node.isShorthandPropertyAssignment(p) && p.getName() === name) return p.getNameNode();
    if (Node.isMethodDeclaration(p) && propertyName(p.getNameNode()) === name) return p;
    if (Node.isSpreadAssignment(p) && depth < 8) {
      const spread = resolveObject(p.getExpression(), depth + 1);
      const found = spread && findProperty(spread, name, depth + 1);
      if (found) return found;
      if (!spread) return undefined; // an unknown spread may hold it: do not guess
    }
  }
  return undefined;
}

function propertyName(node: Node): string | undefined {
  const { Node } = tsMorph();
  if (Node.isIdentifier(node)) return node.getText();
  if (Node.isStringLiteral(node) || Node.isNoSubstitutionTemplateLiteral(node)) return node.getLiteralText();
  return undefined;
}

function resolveFunction(node: Node, depth: number): FunctionNode | undefined {
  const { Node } = tsMorph();
  if (depth > 8) return undefined;
  const n = unwrap(node);
  if (Node.isArrowFunction(n) || Node.isFunctionExpression(n) || Node.isMethodDeclaration(n)) return n;
  if (Node.isIdentifier(n)) {
    const file = n.getSourceFile();
    const name = n.getText();
    const declaration = file
      .getDescendantsOfKind(tsMorph().SyntaxKind.FunctionDeclaration)
      .find((d) => d.getName() === name && d.hasBody());
    if (declaration) return declaration;
    const init = constInitializer(file, name, n.getStart());
    return init && resolveFunction(init, depth + 1);
  }
  return undefined;
}

/** The initializer of `const name = ...` in this file: the last one before `usePos`, else the first. */
function constInitializer(file: SourceFile, name: string, usePos: number): Expression | undefined {
  const { SyntaxKind, ts } = tsMorph();
  let chosen: Expression | undefined;
  for (const d of file.getDescendantsOfKind(SyntaxKind.VariableDeclaration)) {
    const nameNode = d.getNameNode();
    if (nameNode.getKind() !== SyntaxKind.Identifier || nameNode.getText() !== name) continue;
    const list = d.getParent();
    if ((list.compilerNode.flags & ts.NodeFlags.Const) === 0) continue;
    const init = d.getInitializer();
    if (!init) continue;
    if (d.getStart() < usePos || !chosen) chosen = init;
  }
  return chosen;
}

/**
 * Identifiers, literal values and `true`/`false`, in order, outside type annotations: what survives
 * tsx/esbuild's transform, so source and `fn.toString()` can be compared. Names the function
 * declares itself (parameters, destructured names, consts) become positional placeholders, since
 * esbuild renames them when they shadow a module-level name (`s` → `s2`).
 */
function signature(node: FunctionNode): string {
  const { ts } = tsMorph();
  const root = node.compilerNode;
  const declared = new Map<string, string>();
  const declare = (name: TsNamespace.BindingName): void => {
    if (ts.isIdentifier(name)) {
      if (!declared.has(name.text)) declared.set(name.text, `#${declared.size}`);
    } else {
      for (const element of name.elements) if (!ts.isOmittedExpression(element)) declare(element.name);
    }
  };
  const collect = (n: TsNamespace.Node): void => {
    if (ts.isParameter(n) || ts.isVariableDeclaration(n) || ts.isBindingElement(n)) declare(n.name);
    ts.forEachChild(n, collect);
  };
  for (const p of root.parameters) collect(p);
  if (root.body) collect(root.body);

  const out: string[] = [];
  const visit = (n: TsNamespace.Node): void => {
    if (ts.isTypeNode(n) || ts.isTypeParameterDeclaration(n)) return;
    if (ts.isIdentifier(n)) out.push(declared.get(n.text) ?? n.text);
    else if (ts.isPropertyAccessExpression(n)) {
      visit(n.expression);
      out.push(`.${n.name.text}`);
      return;
    } else if (ts.isBindingElement(n) || ts.isPropertyAssignment(n)) {
      // `{ q }` may come back as `{ q: q2 }`: the property name is not compared, the binding is.
      const name = ts.isBindingElement(n) ? n.name : n.initializer;
      visit(name);
      if (ts.isBindingElement(n) && n.initializer) visit(n.initializer);
      return;
    } else if (ts.isNumericLiteral(n)) out.push(String(Number(n.text)));
    else if (ts.isBigIntLiteral(n)) out.push(n.text);
    else if (ts.isStringLiteralLike(n)) out.push(JSON.stringify(n.text));
    else if (n.kind === ts.SyntaxKind.TrueKeyword || n.kind === ts.SyntaxKind.FalseKeyword) {
      out.push(n.kind === ts.SyntaxKind.TrueKeyword ? 'true' : 'false');
    }
    ts.forEachChild(n, visit);
  };
  for (const p of root.parameters) visit(p);
  if (root.body) visit(root.body);
  return out.join(' ');
}

function lineStarts(text: string): number[] {
  const starts = [0];
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) starts.push(i + 1);
  return starts;
}

function positionIn(text: string, starts: readonly number[], offset: number): Position {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid]! <= offset) lo = mid;
    else hi = mid - 1;
  }
  const begin = starts[lo]!;
  const end = lo + 1 < starts.length ? starts[lo + 1]! - 1 : text.length;
  return { line: lo + 1, column: offset - begin + 1, lineText: text.slice(begin, end).replace(/\r$/, '') };
}

function fileSource(file: SourceFile, node: FunctionNode, display: string): FunctionSource {
  const text = file.getFullText();
  const starts = lineStarts(text);
  return {
    node,
    file: display,
    text: node.getText(),
    position: (pos) => positionIn(text, starts, pos),
    dispose: () => {},
  };
}

/** Parses `fn.toString()`: an arrow or function expression, or a method (`scoreMod(s) {...}`). */
function snippetSource(fnText: string): FunctionSource | undefined {
  const { Node } = tsMorph();
  const starts = lineStarts(fnText);
  for (const [prefix, suffix] of [
    ['(', ')'],
    ['({', '})'],
  ] as const) {
    const file = parseSnippet(`${prefix}${fnText}\n${suffix}`);
    const diagnostics = (file.compilerNode as unknown as { parseDiagnostics?: unknown[] }).parseDiagnostics;
    const statement = file.getStatements()[0];
    let node: Node | undefined;
    if ((diagnostics?.length ?? 0) === 0 && statement && Node.isExpressionStatement(statement)) {
      node = unwrap(statement.getExpression());
      if (Node.isObjectLiteralExpression(node)) node = node.getProperties()[0];
    }
    if (
      node &&
      (Node.isArrowFunction(node) || Node.isFunctionExpression(node) || Node.isMethodDeclaration(node))
    ) {
      const fnNode = node;
      return {
        node: fnNode,
        file: '<anonymous>',
        text: fnText,
        position: (pos) => positionIn(fnText, starts, Math.max(0, pos - prefix.length)),
        dispose: () => forgetSnippet(file),
      };
    }
    forgetSnippet(file);
  }
  return undefined;
}
