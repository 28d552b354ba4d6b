// How the CLI turns errors into messages and exit codes: 0 ok, 1 user error, 2 toolchain or
// internal error. Every error also has a `kind` and, for spec errors, a location, which --json
// prints as { ok: false, error: { kind, message, file?, line?, column? } }.

import { BuildError, PlanError, ResourceError, ToolchainError } from '../codegen/index.ts';
import { DslError, formatDslError } from '../dsl/index.ts';
import { ChunkattnError } from '../runtime/errors.ts';

export const EXIT_OK = 0;
export const EXIT_USER = 1;
export const EXIT_TOOLCHAIN = 2;

/** A user mistake the CLI itself detects (bad flag value, missing file). */
export class UsageError extends Error {
  override name = 'UsageError';
}

export type ErrorKind =
  | 'usage'
  | 'spec'
  | 'plan'
  | 'runtime'
  | 'toolchain'
  | 'build'
  | 'resources'
  | 'internal';

export interface DescribedError {
  /** What a person reads (stderr). */
  readonly message: string;
  readonly exitCode: number;
  /** The --json form. */
  readonly json: {
    readonly kind: ErrorKind;
    readonly message: string;
    readonly file?: string;
    readonly line?: number;
    readonly column?: number;
  };
}

function described(kind: ErrorKind, exitCode: number, message: string, plain: string): DescribedError {
  return { message, exitCode, json: { kind, message: plain } };
}

/** `verbose` adds the stack of internal errors (never shown otherwise). */
export function describeError(error: unknown, verbose = false): DescribedError {
  if (error instanceof DslError) {
    const loc = error.loc;
    return {
      message: formatDslError(error),
      exitCode: EXIT_USER,
      json: {
        kind: 'spec',
        message: error.message,
        ...(loc && { file: loc.file, line: loc.line, column: loc.column }),
      },
    };
  }
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof UsageError) return described('usage', EXIT_USER, `error: ${message}`, message);
  if (error instanceof PlanError) return described('plan', EXIT_USER, `error: ${message}`, message);
  if (error instanceof ChunkattnError) return described('runtime', EXIT_USER, `error: ${message}`, message);
  if (error instanceof ToolchainError)
    return described('toolchain', EXIT_TOOLCHAIN, `error: ${message}`, message);
  if (error instanceof BuildError) return described('build', EXIT_TOOLCHAIN, `error: ${message}`, message);
  if (error instanceof ResourceError)
    return described('resources', EXIT_TOOLCHAIN, `error: ${message}`, message);
  const stack = verbose && error instanceof Error && error.stack ? `\n${error.stack}` : '';
  return described(
    'internal',
    EXIT_TOOLCHAIN,
    `internal error: ${message}${stack}${verbose ? '' : '\n(run with --verbose for the stack trace)'}`,
    message,
  );
}
