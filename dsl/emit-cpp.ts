// Expr IR → one C++ expression, the same text for every target (CUDA, emu, cpu).
//
// Free variables: `score` (float), `pos` (ca::Pos, int fields seq, q_head, kv_head, q, kv) and
// `params` (const float*, indexed in declaration order). Everything is computed in float: pos
// fields are cast, literals carry an `f` suffix, and the math functions are the C float ones
// (expf, logf, tanhf, fabsf, fminf, fmaxf, sqrtf, powf, floorf, fmodf) from <cmath>/<math.h>,
// which CUDA also provides on the device. Comparisons yield bool. Every operation is
// parenthesized, so the text never depends on C++ precedence.
//
// JS differences that remain: Math.min/max return NaN when an argument is NaN, fminf/fmaxf return
// the other argument; float rounding differs from the float64 reference by ~1e-7 relative.

import type { Expr, MathFn, PosField } from './spec.ts';

const POS_CPP: Readonly<Record<PosField, string>> = {
  seq: 'seq',
  qHead: 'q_head',
  kvHead: 'kv_head',
  q: 'q',
  kv: 'kv',
};

const MATH_CPP: Readonly<Record<MathFn, string>> = {
  exp: 'expf',
  log: 'logf',
  tanh: 'tanhf',
  abs: 'fabsf',
  min: 'fminf',
  max: 'fmaxf',
  sqrt: 'sqrtf',
  pow: 'powf',
  floor: 'floorf',
};

/**
 * A float literal for a finite number: integers exactly (`50.0f`), others in JS's shortest
 * round-trip form (`0.1f`, `1e-7f`, `1.5e+30f`), so the C++ compiler rounds the same decimal.
 */
export function floatLiteral(value: number): string {
  if (!Number.isFinite(value)) throw new Error(`floatLiteral: ${value} is not finite`);
  if (Object.is(value, -0)) return '(-0.0f)';
  const magnitude = Math.abs(value);
  // Integers below 1e21 print in full: BigInt gives their exact digits (String rounds past 2^53).
  const text =
    Number.isInteger(magnitude) && magnitude < 1e21 ? BigInt(magnitude).toString() : String(magnitude);
  const literal = /[.e]/.test(text) ? `${text}f` : `${text}.0f`;
  return value < 0 ? `(-${literal})` : literal;
}

export function exprToCpp(expr: Expr): string {
  switch (expr.kind) {
    case 'num':
      return floatLiteral(expr.value);
    case 'bool':
      return expr.value ? 'true' : 'false';
    case 'score':
      return 'score';
    case 'pos':
      return `((float)pos.${POS_CPP[expr.field]})`;
    case 'param':
      return `params[${expr.index}]`;
    case 'unary':
      return `(${expr.op}${exprToCpp(expr.arg)})`;
    case 'binary':
      if (expr.op === '%') return `fmodf(${exprToCpp(expr.left)}, ${exprToCpp(expr.right)})`;
      return `(${exprToCpp(expr.left)} ${expr.op} ${exprToCpp(expr.right)})`;
    case 'cond':
      return `(${exprToCpp(expr.test)} ? ${exprToCpp(expr.then)} : ${exprToCpp(expr.else)})`;
    case 'call': {
      const fn = MATH_CPP[expr.fn];
      const args = expr.args.map(exprToCpp);
      if (expr.fn === 'min' || expr.fn === 'max') {
        return args.slice(1).reduce((acc, arg) => `${fn}(${acc}, ${arg})`, args[0]!);
      }
      return `${fn}(${args.join(', ')})`;
    }
  }
}
