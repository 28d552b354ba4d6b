// TypeScript syntax tree of a score/mask function → Expr IR, with types checked on the way.
//
// Two types exist: number and boolean. Every unsupported construct gets its own diagnostic that
// points at it and says what is allowed; a construct that failed yields no value, so one mistake
// is reported once (no cascade). `const` bindings are inlined, so the IR only holds parameters,
// literals, operators and Math calls.

import type { Block, ObjectBindingPattern, ParameterDeclaration, Node as TsNode } from 'ts-morph';
import { type DslDiagnostic, DslError } from './errors.ts';
import { formatDiagnostics } from './format-error.ts';
import { type FunctionSource, unwrap, type VariantKind } from './locate.ts';
import {
  type Expr,
  FLOAT_MAX,
  MATH_ARITY,
  MATH_FNS,
  type MathFn,
  type ParamSpec,
  POS_FIELDS,
  type PosField,
} from './spec.ts';
import { type TsMorph, tsMorph } from './ts-morph.ts';

export const ALLOWED =
  'arithmetic, comparisons, && || !, ?:, numeric literals, pos.*, params.*, Math.exp/log/tanh/abs/min/max/sqrt/pow/floor';
const MATH_ALLOWED = 'Math.exp/log/tanh/abs/min/max/sqrt/pow/floor, Math.PI, Math.E';

/** `Math` constants (PI and E, and the other standard ones, which cost nothing). */
export const MATH_CONSTANTS: Readonly<Record<string, number>> = {
  PI: Math.PI,
  E: Math.E,
  LN2: Math.LN2,
  LN10: Math.LN10,
  LOG2E: Math.LOG2E,
  LOG10E: Math.LOG10E,
  SQRT2: Math.SQRT2,
  SQRT1_2: Math.SQRT1_2,
};

const FLOAT_MIN_SUBNORMAL = 1.401298464324817e-45;

type Type = 'number' | 'boolean';
interface Value {
  readonly expr: Expr;
  readonly type: Type;
}
type Binding =
  | { readonly kind: 'value'; readonly value: Value }
  | { readonly kind: 'pos' }
  | { readonly kind: 'params' }
  | { readonly kind: 'error' };
type Role = 'score' | 'pos' | 'params';
type Span = { readonly start: number; readonly length: number };

const ROLES: Readonly<Record<VariantKind, readonly Role[]>> = {
  scoreMod: ['score', 'pos', 'params'],
  mask: ['pos', 'params'],
};
const RESULT_TYPE: Readonly<Record<VariantKind, Type>> = { scoreMod: 'number', mask: 'boolean' };

let Node!: TsMorph['Node'];
let SyntaxKind!: TsMorph['SyntaxKind'];

/** Translates the function to IR, or throws one DslError listing every diagnostic. */
export function translateFunction(
  kind: VariantKind,
  source: FunctionSource,
  params: readonly ParamSpec[],
): Expr {
  ({ Node, SyntaxKind } = tsMorph());
  const translator = new Translator(kind, source, params);
  const expr = translator.run();
  const diagnostics = [...translator.diagnostics].sort(
    (a, b) => a.loc.line - b.loc.line || a.loc.column - b.loc.column,
  );
  if (diagnostics.length > 0 || !expr) {
    const first = diagnostics[0];
    throw new DslError(formatDiagnostics(diagnostics), {
      path: kind,
      ...(first ? { loc: first.loc } : {}),
      ...(first?.allowed ? { allowed: first.allowed } : {}),
      diagnostics,
    });
  }
  return expr;
}

function article(word: string): string {
  return /^[aeiou]/i.test(word) ? `an ${word}` : `a ${word}`;
}

class Translator {
  readonly diagnostics: DslDiagnostic[] = [];
  private readonly scope = new Map<string, Binding>();
  /** `const` names of the block not declared yet (temporal dead zone). */
  private readonly pending = new Set<string>();

  constructor(
    private readonly kind: VariantKind,
    private readonly source: FunctionSource,
    private readonly params: readonly ParamSpec[],
  ) {}

  run(): Expr | null {
    const fn = this.source.node;
    const asyncKeyword = fn.getAsyncKeyword();
    if (asyncKeyword) this.unsupported(asyncKeyword, 'an `async` function');
    if (!Node.isArrowFunction(fn)) {
      const star = fn.getAsteriskToken();
      if (star) this.unsupported(star, 'a generator function (`function*`)');
    }
    this.bindParameters(fn.getParameters());
    const body = fn.getBody();
    if (!body) {
      this.report(fn, `${this.kind} has no body`);
      return null;
    }
    const result = Node.isBlock(body) ? this.block(body) : { value: this.expr(body), node: body };
    if (!result?.value) return null;
    const expected = RESULT_TYPE[this.kind];
    if (result.value.type !== expected) {
      this.report(
        result.node,
        `${this.kind} must return ${article(expected)}, but this is ${article(result.value.type)}`,
        expected === 'boolean'
          ? 'a condition, e.g. `pos.kv <= pos.q`, `pos.q - pos.kv < params.window`'
          : 'a number; choose between numbers with `cond ? a : b`',
      );
      return null;
    }
    return result.value.expr;
  }

  // ── reporting ──────────────────────────────────────────────────────────────

  private report(at: TsNode | Span, message: string, allowed: string | undefined = ALLOWED): null {
    const span = 'start' in at ? at : { start: at.getStart(), length: at.getWidth() };
    const p = this.source.position(span.start);
    this.diagnostics.push({
      message,
      loc: { file: this.source.file, line: p.line, column: p.column },
      length: Math.max(1, span.length),
      lineText: p.lineText,
      ...(allowed ? { allowed } : {}),
    });
    return null;
  }

  private unsupported(at: TsNode | Span, what: string, allowed: string = ALLOWED): null {
    return this.report(at, `${this.kind} may not contain ${what}`, allowed);
  }

  private keyword(node: TsNode, length: number): Span {
    return { start: node.getStart(), length };
  }

  // ── parameters and bindings ───────────────────────────────────────────────

  private bindParameters(parameters: readonly ParameterDeclaration[]): void {
    const roles = ROLES[this.kind];
    parameters.forEach((p, i) => {
      const role = roles[i];
      if (!role) {
        if (i === roles.length) {
          this.report(
            p,
            `${this.kind} takes at most ${roles.length} parameters (${roles.join(', ')}), got ${parameters.length}`,
            `(${roles.join(', ')}) => ...`,
          );
        }
        return;
      }
      if (p.isRestParameter()) {
        this.unsupported(p, 'a rest parameter (`...`)');
        return;
      }
      const init = p.getInitializer();
      if (init) this.unsupported(init, 'a parameter default value');
      const name = p.getNameNode();
      if (Node.isIdentifier(name)) {
        if (name.getText() === 'this') this.unsupported(name, 'a `this` parameter');
        else this.scope.set(name.getText(), this.roleBinding(role));
      } else if (Node.isObjectBindingPattern(name)) {
        if (role === 'score') this.unsupported(name, 'destructuring of the score (it is a number)');
        else this.bindPattern(name, role);
      } else {
        this.unsupported(name, 'an array destructuring pattern');
      }
    });
  }

  private roleBinding(role: Role): Binding {
    if (role === 'score') return { kind: 'value', value: { expr: { kind: 'score' }, type: 'number' } };
    return { kind: role };
  }

  private bindPattern(pattern: ObjectBindingPattern, role: 'pos' | 'params'): void {
    for (const element of pattern.getElements()) {
      const dots = element.getDotDotDotToken();
      if (dots) {
        this.unsupported(element, 'a rest element (`...`)');
        continue;
      }
      const init = element.getInitializer();
      if (init) this.unsupported(init, 'a destructuring default value');
      const name = element.getNameNode();
      if (!Node.isIdentifier(name)) {
        this.unsupported(name, 'a nested destructuring pattern');
        continue;
      }
      const propertyNode = element.getPropertyNameNode();
      let field = name.getText();
      if (propertyNode) {
        if (Node.isIdentifier(propertyNode)) field = propertyNode.getText();
        else if (Node.isStringLiteral(propertyNode)) field = propertyNode.getLiteralText();
        else {
          this.unsupported(propertyNode, 'a computed property name');
          this.scope.set(name.getText(), { kind: 'error' });
          continue;
        }
      }
      const at = propertyNode ?? name;
      const value = role === 'pos' ? this.posField(at, field, field) : this.param(at, field, field);
      this.scope.set(name.getText(), value ? { kind: 'value', value } : { kind: 'error' });
    }
  }

  private posField(at: TsNode, field: string, shown: string): Value | null {
    if ((POS_FIELDS as readonly string[]).includes(field)) {
      return { expr: { kind: 'pos', field: field as PosField }, type: 'number' };
    }
    return this.report(
      at,
      `\`${shown}\` is not a field of pos`,
      POS_FIELDS.map((f) => `pos.${f}`).join(', '),
    );
  }

  private param(at: TsNode, name: string, shown: string): Value | null {
    const index = this.params.findIndex((p) => p.name === name);
    if (index >= 0) return { expr: { kind: 'param', name, index }, type: 'number' };
    const declared = this.params.map((p) => p.name);
    return this.report(
      at,
      declared.length > 0
        ? `\`${shown}\` is not a declared param (declared: ${declared.join(', ')})`
        : `\`${shown}\` is not a declared param (the spec declares no params)`,
      declared.length > 0
        ? `${declared.map((p) => `params.${p}`).join(', ')}, or declare it: params: { ${name}: <default> }`
        : `declare it in the spec: params: { ${name}: <default> }`,
    );
  }

  // ── statements ────────────────────────────────────────────────────────────

  private block(body: Block): { value: Value | null; node: TsNode } | undefined {
    const statements = body.getStatements();
    for (const st of statements) {
      if (Node.isVariableStatement(st)) {
        for (const d of st.getDeclarations()) {
          const name = d.getNameNode();
          if (Node.isIdentifier(name)) this.pending.add(name.getText());
        }
      }
    }
    let result: { value: Value | null; node: TsNode } | undefined;
    for (const st of statements) {
      if (result) {
        this.unsupported(st, 'code after `return`');
        break;
      }
      if (Node.isVariableStatement(st)) this.constStatement(st);
      else if (Node.isReturnStatement(st)) {
        const e = st.getExpression();
        if (!e) {
          this.report(this.keyword(st, 6), `${this.kind} must return a value`);
          return undefined;
        }
        result = { value: this.expr(e), node: e };
      } else if (
        Node.isEmptyStatement(st) ||
        Node.isTypeAliasDeclaration(st) ||
        Node.isInterfaceDeclaration(st)
      ) {
        // no runtime effect
      } else this.statement(st);
    }
    if (!result) {
      this.report(
        { start: body.getStart(), length: 1 },
        `${this.kind} must end with \`return <expression>\``,
        'a block of `const` bindings followed by one `return`, or an expression body: (s) => ...',
      );
    }
    return result;
  }

  private constStatement(st: import('ts-morph').VariableStatement): void {
    const declarationKind = st.getDeclarationKind();
    if (declarationKind !== tsMorph().VariableDeclarationKind.Const) {
      this.unsupported(
        this.keyword(st.getDeclarationList(), declarationKind.length),
        `a \`${declarationKind}\` binding; use \`const\``,
      );
    }
    for (const d of st.getDeclarations()) {
      const name = d.getNameNode();
      const init = d.getInitializer();
      if (Node.isIdentifier(name)) {
        const id = name.getText();
        this.pending.delete(id);
        if (this.scope.has(id)) {
          this.report(name, `\`${id}\` is already declared`, undefined);
          continue;
        }
        if (!init) {
          this.report(name, `\`${id}\` needs a value`, undefined);
          this.scope.set(id, { kind: 'error' });
          continue;
        }
        const value = this.expr(init);
        this.scope.set(id, value ? { kind: 'value', value } : { kind: 'error' });
      } else if (Node.isObjectBindingPattern(name)) {
        const target = init && Node.isIdentifier(init) ? this.scope.get(init.getText()) : undefined;
        if (target?.kind === 'pos' || target?.kind === 'params') this.bindPattern(name, target.kind);
        else {
          this.unsupported(init ?? name, 'destructuring of anything but pos or params');
          for (const e of name.getElements()) this.scope.set(e.getName(), { kind: 'error' });
        }
      } else {
        this.unsupported(name, 'an array destructuring pattern');
      }
    }
  }

  private statement(st: TsNode): void {
    const K = SyntaxKind;
    switch (st.getKind()) {
      case K.ForStatement:
      case K.ForOfStatement:
      case K.ForInStatement:
        this.unsupported(this.keyword(st, 3), 'a `for` loop');
        return;
      case K.WhileStatement:
        this.unsupported(this.keyword(st, 5), 'a `while` loop');
        return;
      case K.DoStatement:
        this.unsupported(this.keyword(st, 2), 'a `do`-`while` loop');
        return;
      case K.IfStatement:
        this.unsupported(this.keyword(st, 2), 'an `if` statement; use `cond ? a : b`');
        return;
      case K.SwitchStatement:
        this.unsupported(this.keyword(st, 6), 'a `switch` statement; use `cond ? a : b`');
        return;
      case K.ThrowStatement:
        this.unsupported(this.keyword(st, 5), 'a `throw` statement');
        return;
      case K.TryStatement:
        this.unsupported(this.keyword(st, 3), 'a `try` statement');
        return;
      case K.BreakStatement:
        this.unsupported(this.keyword(st, 5), 'a `break` statement');
        return;
      case K.ContinueStatement:
        this.unsupported(this.keyword(st, 8), 'a `continue` statement');
        return;
      case K.DebuggerStatement:
        this.unsupported(this.keyword(st, 8), 'a `debugger` statement');
        return;
      case K.WithStatement:
        this.unsupported(this.keyword(st, 4), 'a `with` statement');
        return;
      case K.LabeledStatement:
        this.unsupported(st, 'a labeled statement');
        return;
      case K.FunctionDeclaration:
        this.unsupported(this.keyword(st, 8), 'a nested function');
        return;
      case K.ClassDeclaration:
        this.unsupported(this.keyword(st, 5), 'a class');
        return;
      case K.Block:
        this.unsupported(this.keyword(st, 1), 'a nested block');
        return;
      case K.ExpressionStatement: {
        const before = this.diagnostics.length;
        if (Node.isExpressionStatement(st)) this.expr(st.getExpression());
        if (this.diagnostics.length === before) {
          this.unsupported(st, 'an expression statement (its value is unused); only `const` and `return`');
        }
        return;
      }
      default:
        this.unsupported(st, article(`${st.getKindName()}`));
    }
  }

  // ── expressions ───────────────────────────────────────────────────────────

  private expr(n: TsNode): Value | null {
    const inner = unwrap(n);
    if (inner !== n) {
      return this.expr(inner);
    }
    if (Node.isNumericLiteral(n)) return this.number(n);
    if (Node.isTrueLiteral(n) || Node.isFalseLiteral(n)) {
      return { expr: { kind: 'bool', value: Node.isTrueLiteral(n) }, type: 'boolean' };
    }
    if (Node.isIdentifier(n)) return this.identifier(n);
    if (Node.isPrefixUnaryExpression(n)) return this.prefix(n);
    if (Node.isPostfixUnaryExpression(n)) {
      const op = n.getOperatorToken() === SyntaxKind.PlusPlusToken ? '++' : '--';
      return this.unsupported(n, `an increment or decrement (\`${op}\`)`);
    }
    if (Node.isBinaryExpression(n)) return this.binary(n);
    if (Node.isConditionalExpression(n)) return this.conditional(n);
    if (Node.isCallExpression(n)) return this.call(n);
    if (Node.isPropertyAccessExpression(n)) return this.property(n);
    if (Node.isElementAccessExpression(n)) {
      return this.unsupported(
        n,
        'a computed property access (`[...]`)',
        'pos.<field> and params.<name> written with a dot, e.g. pos.q, params.softcap',
      );
    }
    if (Node.isBigIntLiteral(n))
      return this.unsupported(n, `a bigint literal (\`${n.getText()}\`); use a number`);
    if (Node.isStringLiteral(n) || Node.isNoSubstitutionTemplateLiteral(n)) {
      return this.unsupported(n, 'a string literal');
    }
    if (Node.isTemplateExpression(n)) return this.unsupported(n, 'a template literal');
    if (Node.isTaggedTemplateExpression(n)) return this.unsupported(n, 'a tagged template');
    if (Node.isRegularExpressionLiteral(n)) return this.unsupported(n, 'a regular expression literal');
    if (Node.isNullLiteral(n)) return this.unsupported(n, '`null`');
    if (Node.isThisExpression(n)) return this.unsupported(n, '`this`');
    if (Node.isSuperExpression(n)) return this.unsupported(n, '`super`');
    if (Node.isNewExpression(n))
      return this.unsupported(this.keyword(n, 3), 'an object construction (`new`)');
    if (Node.isObjectLiteralExpression(n)) return this.unsupported(n, 'an object literal');
    if (Node.isArrayLiteralExpression(n)) return this.unsupported(n, 'an array literal');
    if (Node.isArrowFunction(n) || Node.isFunctionExpression(n)) {
      return this.unsupported(n, 'a nested function (a closure)');
    }
    if (Node.isClassExpression(n)) return this.unsupported(this.keyword(n, 5), 'a class');
    if (Node.isAwaitExpression(n)) return this.unsupported(this.keyword(n, 5), '`await`');
    if (Node.isYieldExpression(n)) return this.unsupported(this.keyword(n, 5), '`yield`');
    if (Node.isSpreadElement(n)) return this.unsupported(n, 'a spread (`...`)');
    if (Node.isTypeOfExpression(n)) return this.unsupported(this.keyword(n, 6), '`typeof`');
    if (Node.isVoidExpression(n)) return this.unsupported(this.keyword(n, 4), '`void`');
    if (Node.isDeleteExpression(n)) return this.unsupported(this.keyword(n, 6), '`delete`');
    if (Node.isMetaProperty(n)) return this.unsupported(n, `\`${n.getText()}\``);
    return this.unsupported(n, article(n.getKindName()));
  }

  private number(n: import('ts-morph').NumericLiteral): Value | null {
    // The compiler's normalized text (`0x10` → 16, `1_000` → 1000); ts-morph's getLiteralValue misreads `1e39`.
    const value = Number(n.compilerNode.text);
    if (!Number.isFinite(value)) return this.report(n, `numeric literal ${n.getText()} is not finite`);
    if (Math.abs(value) > FLOAT_MAX) {
      return this.report(n, `numeric literal ${n.getText()} does not fit in a float (largest: 3.4028235e38)`);
    }
    if (value !== 0 && Math.abs(value) < FLOAT_MIN_SUBNORMAL) {
      return this.report(n, `numeric literal ${n.getText()} rounds to 0 in a float (smallest: 1.4e-45)`);
    }
    return { expr: { kind: 'num', value }, type: 'number' };
  }

  private identifier(n: import('ts-morph').Identifier): Value | null {
    const name = n.getText();
    const binding = this.scope.get(name);
    if (binding) {
      if (binding.kind === 'value') return binding.value;
      if (binding.kind === 'error') return null;
      if (binding.kind === 'pos') {
        return this.report(
          n,
          `\`${name}\` (pos) must be read through one of its fields`,
          POS_FIELDS.map((f) => `${name}.${f}`).join(', '),
        );
      }
      return this.report(
        n,
        `\`${name}\` (params) must be read through one of its fields`,
        this.params.length > 0
          ? this.params.map((p) => `${name}.${p.name}`).join(', ')
          : 'no params declared',
      );
    }
    if (this.pending.has(name))
      return this.report(n, `\`${name}\` is used before its declaration`, undefined);
    if (name === 'undefined') return this.unsupported(n, '`undefined`');
    if (name === 'NaN' || name === 'Infinity') {
      return this.unsupported(n, `\`${name}\` (only finite numeric literals are allowed)`);
    }
    if (name === 'Math') {
      return this.report(
        n,
        '`Math` may only be used as Math.<function>(...), Math.PI or Math.E',
        MATH_ALLOWED,
      );
    }
    return this.report(
      n,
      `${this.kind} may not read \`${name}\`, a variable from outside the function`,
      `the function's own parameters and const bindings, numeric literals; ` +
        `pass values in through params (declare params: { ${name}: <default> })`,
    );
  }

  private typeError(at: TsNode | Span, message: string, allowed: string): null {
    return this.report(at, message, allowed);
  }

  private prefix(n: import('ts-morph').PrefixUnaryExpression): Value | null {
    const op = n.getOperatorToken();
    const operand = n.getOperand();
    if (op === SyntaxKind.PlusPlusToken || op === SyntaxKind.MinusMinusToken) {
      return this.unsupported(
        n,
        `an increment or decrement (\`${op === SyntaxKind.PlusPlusToken ? '++' : '--'}\`)`,
      );
    }
    if (op === SyntaxKind.TildeToken) return this.unsupported(this.keyword(n, 1), 'the bitwise operator `~`');
    const value = this.expr(operand);
    if (!value) return null;
    if (op === SyntaxKind.ExclamationToken) {
      if (value.type !== 'boolean') {
        return this.typeError(
          operand,
          '`!` needs a boolean, but its operand is a number',
          'a condition, e.g. `!(pos.kv > pos.q)`',
        );
      }
      return { expr: { kind: 'unary', op: '!', arg: value.expr }, type: 'boolean' };
    }
    const sign = op === SyntaxKind.MinusToken ? '-' : '+';
    if (value.type !== 'number') {
      return this.typeError(
        operand,
        `unary \`${sign}\` needs a number, but its operand is a boolean`,
        'arithmetic on numbers; turn a condition into a number with `cond ? 1 : 0`',
      );
    }
    return { expr: { kind: 'unary', op: sign, arg: value.expr }, type: 'number' };
  }

  private binary(n: import('ts-morph').BinaryExpression): Value | null {
    const token = n.getOperatorToken();
    const op = token.getText();
    const kind = token.getKind();
    const K = SyntaxKind;
    if (kind >= K.FirstAssignment && kind <= K.LastAssignment) {
      return this.unsupported(token, `an assignment (\`${op}\`)`);
    }
    if (kind === K.CommaToken) return this.unsupported(token, 'the comma operator');
    if (['&', '|', '^', '<<', '>>', '>>>'].includes(op)) {
      return this.unsupported(token, `the bitwise operator \`${op}\``);
    }
    if (
      !['+', '-', '*', '/', '%', '**', '<', '<=', '>', '>=', '===', '!==', '==', '!=', '&&', '||'].includes(
        op,
      )
    ) {
      return this.unsupported(token, `the \`${op}\` operator`);
    }
    const left = this.expr(n.getLeft());
    const right = this.expr(n.getRight());
    if (!left || !right) return null;
    const sides: readonly [string, Value, TsNode][] = [
      ['left', left, n.getLeft()],
      ['right', right, n.getRight()],
    ];
    if (['+', '-', '*', '/', '%', '**', '<', '<=', '>', '>='].includes(op)) {
      const comparison = ['<', '<=', '>', '>='].includes(op);
      const wrong = sides.filter(([, value]) => value.type !== 'number');
      if (wrong.length > 0) {
        const [side, , node] = wrong[0]!;
        const which = wrong.length === 2 ? 'both operands are booleans' : `its ${side} operand is a boolean`;
        return this.typeError(
          wrong.length === 2 ? token : node,
          comparison ? `\`${op}\` compares numbers, but ${which}` : `\`${op}\` needs numbers, but ${which}`,
          'arithmetic and comparisons on numbers; turn a condition into a number with `cond ? 1 : 0`',
        );
      }
      if (op === '**')
        return { expr: { kind: 'call', fn: 'pow', args: [left.expr, right.expr] }, type: 'number' };
      return {
        expr: { kind: 'binary', op: op as '+', left: left.expr, right: right.expr },
        type: comparison ? 'boolean' : 'number',
      };
    }
    if (op === '&&' || op === '||') {
      const wrong = sides.filter(([, value]) => value.type !== 'boolean');
      if (wrong.length > 0) {
        const [side, , node] = wrong[0]!;
        const which = wrong.length === 2 ? 'both operands are numbers' : `its ${side} operand is a number`;
        return this.typeError(
          wrong.length === 2 ? token : node,
          `\`${op}\` needs booleans, but ${which}`,
          'conditions on both sides, e.g. `x > 0 && pos.kv <= pos.q`; choose a number with `cond ? a : b`',
        );
      }
      return { expr: { kind: 'binary', op, left: left.expr, right: right.expr }, type: 'boolean' };
    }
    // === !== == !=
    if (left.type !== right.type) {
      return this.typeError(
        token,
        `\`${op}\` compares ${article(left.type)} with ${article(right.type)}`,
        'equality between two numbers or between two booleans',
      );
    }
    const equality = op === '===' || op === '==' ? '==' : '!=';
    return { expr: { kind: 'binary', op: equality, left: left.expr, right: right.expr }, type: 'boolean' };
  }

  private conditional(n: import('ts-morph').ConditionalExpression): Value | null {
    const test = this.expr(n.getCondition());
    const whenTrue = this.expr(n.getWhenTrue());
    const whenFalse = this.expr(n.getWhenFalse());
    if (!test || !whenTrue || !whenFalse) return null;
    if (test.type !== 'boolean') {
      return this.typeError(
        n.getCondition(),
        'the condition of `?:` must be a boolean, but it is a number',
        'a comparison, e.g. `pos.kv <= pos.q ? s : -1e30`',
      );
    }
    if (whenTrue.type !== whenFalse.type) {
      return this.typeError(
        n.getWhenFalse(),
        `the branches of \`?:\` have different types: ${whenTrue.type} and ${whenFalse.type}`,
        'two numbers or two booleans',
      );
    }
    return {
      // biome-ignore lint/suspicious/noThenProperty: `then` is the Expr field name in spec.ts
      expr: { kind: 'cond', test: test.expr, then: whenTrue.expr, else: whenFalse.expr },
      type: whenTrue.type,
    };
  }

  private isGlobalMath(n: TsNode): boolean {
    return Node.isIdentifier(n) && n.getText() === 'Math' && !this.scope.has('Math');
  }

  private call(n: import('ts-morph').CallExpression): Value | null {
    const callee = n.getExpression();
    const questionDot = n.getQuestionDotTokenNode();
    if (questionDot) return this.unsupported(questionDot, 'optional chaining (`?.`)');
    if (Node.isPropertyAccessExpression(callee) && this.isGlobalMath(callee.getExpression())) {
      const calleeDot = callee.getQuestionDotTokenNode();
      if (calleeDot) return this.unsupported(calleeDot, 'optional chaining (`?.`)');
      const name = callee.getName();
      if (!(MATH_FNS as readonly string[]).includes(name)) {
        return this.report(callee, `${this.kind} may not call \`Math.${name}\``, MATH_ALLOWED);
      }
      const fn = name as MathFn;
      const args = n.getArguments();
      let ok = true;
      for (const arg of args) {
        if (Node.isSpreadElement(arg)) {
          ok = false;
          this.unsupported(arg, 'a spread argument (`...`)');
        }
      }
      if (!ok) return null;
      const arity = MATH_ARITY[fn];
      if (arity === 'variadic' ? args.length < 2 : args.length !== arity) {
        const wanted =
          arity === 'variadic' ? 'at least 2 arguments' : arity === 1 ? '1 argument' : `${arity} arguments`;
        return this.report(
          n,
          `\`Math.${fn}\` takes ${wanted}, got ${args.length}`,
          arity === 'variadic' ? `Math.${fn}(a, b, ...)` : arity === 1 ? `Math.${fn}(x)` : `Math.${fn}(x, y)`,
        );
      }
      const values = args.map((a) => this.expr(a));
      const checked: Expr[] = [];
      values.forEach((v, i) => {
        if (!v) {
          ok = false;
        } else if (v.type !== 'number') {
          ok = false;
          this.typeError(
            args[i]!,
            `\`Math.${fn}\` needs numbers, but argument ${i + 1} is a boolean`,
            'numbers; turn a condition into a number with `cond ? 1 : 0`',
          );
        } else checked.push(v.expr);
      });
      if (!ok) return null;
      return { expr: { kind: 'call', fn, args: checked }, type: 'number' };
    }
    for (const arg of n.getArguments()) this.expr(arg);
    const shown = callee.getText().length <= 40 ? callee.getText() : `${callee.getText().slice(0, 37)}...`;
    return this.report(callee, `${this.kind} may not call \`${shown}\``, MATH_ALLOWED);
  }

  private property(n: import('ts-morph').PropertyAccessExpression): Value | null {
    const questionDot = n.getQuestionDotTokenNode();
    if (questionDot) return this.unsupported(questionDot, 'optional chaining (`?.`)');
    const object = n.getExpression();
    const name = n.getName();
    const nameNode = n.getNameNode();
    if (Node.isIdentifier(object)) {
      const binding = this.scope.get(object.getText());
      if (binding?.kind === 'pos') return this.posField(nameNode, name, n.getText());
      if (binding?.kind === 'params') return this.param(nameNode, name, n.getText());
      if (this.isGlobalMath(object)) {
        const constant = MATH_CONSTANTS[name];
        if (constant !== undefined) return { expr: { kind: 'num', value: constant }, type: 'number' };
        if ((MATH_FNS as readonly string[]).includes(name)) {
          return this.report(n, `\`Math.${name}\` must be called: Math.${name}(...)`, MATH_ALLOWED);
        }
        return this.report(n, `${this.kind} may not use \`Math.${name}\``, MATH_ALLOWED);
      }
    }
    const value = this.expr(object);
    if (!value) return null;
    return this.report(nameNode, `${this.kind} may not read \`.${name}\` of ${article(value.type)}`);
  }
}
