// DSL errors. A field error names its path (`heads.kv: 5 does not divide heads.q: 32`); a score/mask
// translation error points at the offending TypeScript, formatted like a compiler diagnostic.

import type { SourceLoc } from './spec.ts';

/** One problem in a score/mask function: where it is, what is wrong, and what is allowed instead. */
export interface DslDiagnostic {
  readonly message: string;
  readonly loc: SourceLoc;
  /** Characters to underline from `loc.column` (clipped to the end of the line when printed). */
  readonly length: number;
  /** The source line `loc.line` as written, for the code excerpt. */
  readonly lineText: string;
  readonly allowed?: string;
}

export interface DslErrorOptions {
  /** Field path, e.g. `heads.kv`, `dtype.q`, `tunables.blockN.default`, `scoreMod`. */
  readonly path?: string;
  /** The `attention()` call site for a field error; the construct for a translation error. */
  readonly loc?: SourceLoc;
  /** What would be accepted instead, as printed after `allowed:`. */
  readonly allowed?: string;
  /** Every diagnostic of a score/mask translation error, in source order. */
  readonly diagnostics?: readonly DslDiagnostic[];
}

/** Marks DslErrors so `instanceof` also holds for errors from another copy of this module (tsImport). */
const DSL_ERROR = Symbol.for('chunkattn.DslError');

export class DslError extends Error {
  static override [Symbol.hasInstance](value: unknown): boolean {
    return (
      typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[DSL_ERROR] === true
    );
  }

  override name = 'DslError';
  readonly path?: string;
  readonly loc?: SourceLoc;
  readonly allowed?: string;
  readonly diagnostics: readonly DslDiagnostic[];

  constructor(message: string, options: DslErrorOptions = {}) {
    super(message);
    if (options.path !== undefined) this.path = options.path;
    if (options.loc !== undefined) this.loc = options.loc;
    if (options.allowed !== undefined) this.allowed = options.allowed;
    this.diagnostics = options.diagnostics ?? [];
    Object.defineProperty(this, DSL_ERROR, { value: true });
  }
}
