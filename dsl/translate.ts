// A user's score/mask function → VariantFn: find its TypeScript source, translate it to the Expr
// IR (type-checked), and emit the C++ expression every target compiles.

import { callSiteFromStack } from './call-site.ts';
import { exprToCpp } from './emit-cpp.ts';
import { translateFunction } from './expr-translate.ts';
import { locateFunction, type VariantKind } from './locate.ts';
import type { ParamSpec, VariantFn } from './spec.ts';

export type { VariantKind } from './locate.ts';

/**
 * Translates `fn`, the `kind` property of an `attention({...})` call whose stack (`new Error().stack`
 * taken inside `attention`) is `stack`. Throws a DslError with compiler-style diagnostics.
 */
export function translateVariant(
  kind: VariantKind,
  fn: (...args: never[]) => unknown,
  stack: string | undefined,
  params: readonly ParamSpec[],
): VariantFn {
  const site = stack === undefined ? undefined : callSiteFromStack(stack);
  const source = locateFunction(kind, fn, site);
  try {
    const ir = translateFunction(kind, source, params);
    const start = source.position(source.node.getStart());
    return {
      source: source.text,
      loc: { file: source.file, line: start.line, column: start.column },
      ir,
      cpp: exprToCpp(ir),
    };
  } finally {
    source.dispose();
  }
}
