// Checking an Expr IR that did not come from our translator (a spec read back from JSON): every
// node's kind and fields, its types (number / boolean, as the translator assigns them), param
// references against the spec's params, literal ranges, and a bound on size and depth. What
// passes is exactly what the translator could have produced, so exprToCpp(ir) is safe C++.

import { FLOAT_MAX, MATH_ARITY, MATH_FNS, type MathFn, type ParamSpec, POS_FIELDS } from './spec.ts';

const MAX_NODES = 10_000;
const MAX_DEPTH = 200;

const ARITHMETIC = ['+', '-', '*', '/', '%'];
const COMPARISON = ['<', '<=', '>', '>='];
const LOGICAL = ['&&', '||'];
const EQUALITY = ['==', '!='];

type Type = 'number' | 'boolean';

const FIELDS: Readonly<Record<string, readonly string[]>> = {
  num: ['kind', 'value'],
  bool: ['kind', 'value'],
  score: ['kind'],
  pos: ['kind', 'field'],
  param: ['kind', 'name', 'index'],
  unary: ['kind', 'op', 'arg'],
  binary: ['kind', 'op', 'left', 'right'],
  cond: ['kind', 'test', 'then', 'else'],
  call: ['kind', 'fn', 'args'],
};

/** Why `ir` is not a valid score (scoreMod) or mask IR; null when it is. */
export function irProblem(ir: unknown, result: Type, params: readonly ParamSpec[]): string | null {
  let nodes = 0;
  const check = (node: unknown, path: string, depth: number): Type => {
    if (++nodes > MAX_NODES) throw new Error(`more than ${MAX_NODES} nodes`);
    if (depth > MAX_DEPTH) throw new Error(`${path}: nested deeper than ${MAX_DEPTH}`);
    if (typeof node !== 'object' || node === null || Array.isArray(node))
      throw new Error(`${path}: not a node`);
    const n = node as Record<string, unknown>;
    const kind = n['kind'];
    const fields = typeof kind === 'string' && Object.hasOwn(FIELDS, kind) ? FIELDS[kind]! : undefined;
    if (!fields) throw new Error(`${path}: unknown node kind ${JSON.stringify(kind)?.slice(0, 40)}`);
    for (const key of Object.keys(n))
      if (!fields.includes(key))
        throw new Error(`${path}: unexpected field ${JSON.stringify(key.slice(0, 40))}`);
    const sub = (key: string) => check(n[key], `${path}.${key}`, depth + 1);
    const want = (type: Type, got: Type, what: string) => {
      if (got !== type) throw new Error(`${path}: ${what} needs a ${type}, got a ${got}`);
    };
    switch (kind) {
      case 'num': {
        const v = n['value'];
        if (typeof v !== 'number' || !Number.isFinite(v) || Math.abs(v) > FLOAT_MAX)
          throw new Error(`${path}: a literal must be a finite float32`);
        return 'number';
      }
      case 'bool':
        if (typeof n['value'] !== 'boolean') throw new Error(`${path}: value must be a boolean`);
        return 'boolean';
      case 'score':
        if (result !== 'number') throw new Error(`${path}: a mask cannot read score`);
        return 'number';
      case 'pos':
        if (!(POS_FIELDS as readonly unknown[]).includes(n['field']))
          throw new Error(`${path}: pos field must be one of ${POS_FIELDS.join(', ')}`);
        return 'number';
      case 'param': {
        const index = n['index'];
        if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index >= params.length)
          throw new Error(`${path}: param index outside the spec's ${params.length} params`);
        if (params[index]!.name !== n['name'])
          throw new Error(
            `${path}: param ${index} is named ${params[index]!.name}, not ${String(n['name']).slice(0, 40)}`,
          );
        return 'number';
      }
      case 'unary': {
        const op = n['op'];
        if (op === '!') {
          want('boolean', sub('arg'), '`!`');
          return 'boolean';
        }
        if (op !== '-' && op !== '+') throw new Error(`${path}: unknown unary operator`);
        want('number', sub('arg'), `unary ${op}`);
        return 'number';
      }
      case 'binary': {
        const op = n['op'];
        if (typeof op !== 'string') throw new Error(`${path}: unknown binary operator`);
        const left = sub('left');
        const right = sub('right');
        if (ARITHMETIC.includes(op) || COMPARISON.includes(op)) {
          want('number', left, op);
          want('number', right, op);
          return ARITHMETIC.includes(op) ? 'number' : 'boolean';
        }
        if (LOGICAL.includes(op)) {
          want('boolean', left, op);
          want('boolean', right, op);
          return 'boolean';
        }
        if (EQUALITY.includes(op)) {
          want(left, right, op);
          return 'boolean';
        }
        throw new Error(`${path}: unknown binary operator`);
      }
      case 'cond': {
        want('boolean', sub('test'), 'the condition of ?:');
        const then = sub('then');
        want(then, sub('else'), 'the branches of ?:');
        return then;
      }
      default: {
        const fn = n['fn'];
        if (typeof fn !== 'string' || !(MATH_FNS as readonly string[]).includes(fn))
          throw new Error(`${path}: fn must be one of ${MATH_FNS.join(', ')}`);
        const args = n['args'];
        if (!Array.isArray(args)) throw new Error(`${path}: args must be an array`);
        const arity = MATH_ARITY[fn as MathFn];
        if (arity === 'variadic' ? args.length < 2 : args.length !== arity)
          throw new Error(
            `${path}: Math.${fn} takes ${arity === 'variadic' ? 'at least 2' : arity} arguments`,
          );
        args.forEach((arg, i) => {
          want('number', check(arg, `${path}.args[${i}]`, depth + 1), `Math.${fn}`);
        });
        return 'number';
      }
    }
  };
  try {
    const type = check(ir, 'ir', 0);
    return type === result ? null : `ir: yields a ${type}, not a ${result}`;
  } catch (error) {
    return (error as Error).message;
  }
}
