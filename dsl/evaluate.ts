// Float64 evaluation of the Expr IR with JavaScript semantics: the reference the kernels are
// compared with (runtime/reference.ts's ReferenceVariant).

import type { Expr, KernelSpec, Pos } from './spec.ts';

export interface EvalEnv {
  readonly score?: number;
  readonly pos: Pos;
  readonly params: readonly number[];
}

type Value = number | boolean;

const MATH: Readonly<Record<string, (...args: number[]) => number>> = {
  exp: Math.exp,
  log: Math.log,
  tanh: Math.tanh,
  abs: Math.abs,
  min: Math.min,
  max: Math.max,
  sqrt: Math.sqrt,
  pow: Math.pow,
  floor: Math.floor,
};

function binary(op: string, a: Value, b: Value): Value {
  switch (op) {
    case '+':
      return (a as number) + (b as number);
    case '-':
      return (a as number) - (b as number);
    case '*':
      return (a as number) * (b as number);
    case '/':
      return (a as number) / (b as number);
    case '%':
      return (a as number) % (b as number);
    case '<':
      return (a as number) < (b as number);
    case '<=':
      return (a as number) <= (b as number);
    case '>':
      return (a as number) > (b as number);
    case '>=':
      return (a as number) >= (b as number);
    case '==':
      return a === b;
    case '!=':
      return a !== b;
    default:
      throw new Error(`evaluateExpr: unknown operator ${op}`);
  }
}

/** Evaluates `expr` in float64. `score` must be given for a scoreMod. */
export function evaluateExpr(expr: Expr, env: EvalEnv): number | boolean {
  switch (expr.kind) {
    case 'num':
    case 'bool':
      return expr.value;
    case 'score':
      if (env.score === undefined)
        throw new Error('evaluateExpr: the expression reads score, but none was given');
      return env.score;
    case 'pos':
      return env.pos[expr.field];
    case 'param': {
      const value = env.params[expr.index];
      if (value === undefined)
        throw new Error(`evaluateExpr: params[${expr.index}] (${expr.name}) is missing`);
      return value;
    }
    case 'unary': {
      const arg = evaluateExpr(expr.arg, env);
      return expr.op === '!' ? !arg : expr.op === '-' ? -(arg as number) : +(arg as number);
    }
    case 'binary':
      if (expr.op === '&&')
        return (evaluateExpr(expr.left, env) as boolean) && (evaluateExpr(expr.right, env) as boolean);
      if (expr.op === '||')
        return (evaluateExpr(expr.left, env) as boolean) || (evaluateExpr(expr.right, env) as boolean);
      return binary(expr.op, evaluateExpr(expr.left, env), evaluateExpr(expr.right, env));
    case 'cond':
      return evaluateExpr(expr.test, env) ? evaluateExpr(expr.then, env) : evaluateExpr(expr.else, env);
    case 'call':
      return MATH[expr.fn]!(...expr.args.map((a) => evaluateExpr(a, env) as number));
  }
}

type Compiled = (score: number, pos: Pos, params: readonly number[]) => Value;

/** The same semantics as `evaluateExpr`, compiled once into closures (no per-call tree walk). */
export function compileExpr(expr: Expr): Compiled {
  switch (expr.kind) {
    case 'num':
    case 'bool': {
      const value = expr.value;
      return () => value;
    }
    case 'score':
      return (score) => score;
    case 'pos': {
      const field = expr.field;
      return (_, pos) => pos[field];
    }
    case 'param': {
      const index = expr.index;
      return (_, __, params) => params[index]!;
    }
    case 'unary': {
      const arg = compileExpr(expr.arg);
      if (expr.op === '!') return (s, p, q) => !arg(s, p, q);
      if (expr.op === '-') return (s, p, q) => -(arg(s, p, q) as number);
      return (s, p, q) => +(arg(s, p, q) as number);
    }
    case 'binary': {
      const left = compileExpr(expr.left);
      const right = compileExpr(expr.right);
      const op = expr.op;
      if (op === '&&') return (s, p, q) => (left(s, p, q) as boolean) && (right(s, p, q) as boolean);
      if (op === '||') return (s, p, q) => (left(s, p, q) as boolean) || (right(s, p, q) as boolean);
      return (s, p, q) => binary(op, left(s, p, q), right(s, p, q));
    }
    case 'cond': {
      const test = compileExpr(expr.test);
      const then = compileExpr(expr.then);
      const otherwise = compileExpr(expr.else);
      return (s, p, q) => (test(s, p, q) ? then(s, p, q) : otherwise(s, p, q));
    }
    case 'call': {
      const fn = MATH[expr.fn]!;
      const args = expr.args.map(compileExpr);
      return (s, p, q) => fn(...args.map((a) => a(s, p, q) as number));
    }
  }
}

/** What runtime/reference.ts's `ReferenceVariant` takes: float64 score/mask functions and the param defaults. */
export interface VariantFunctions {
  readonly scoreMod?: (score: number, pos: Pos, params: readonly number[]) => number;
  readonly mask?: (pos: Pos, params: readonly number[]) => boolean;
  readonly params: number[];
}

export function variantFunctions(spec: KernelSpec): VariantFunctions {
  const params = spec.params.map((p) => p.default);
  const out: {
    scoreMod?: (score: number, pos: Pos, params: readonly number[]) => number;
    mask?: (pos: Pos, params: readonly number[]) => boolean;
    params: number[];
  } = { params };
  if (spec.scoreMod) {
    const f = compileExpr(spec.scoreMod.ir);
    out.scoreMod = (score, pos, p) => f(score, pos, p) as number;
  }
  if (spec.mask) {
    const f = compileExpr(spec.mask.ir);
    out.mask = (pos, p) => f(Number.NaN, pos, p) as boolean;
  }
  return out;
}
