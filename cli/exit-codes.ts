// How the CLI turns errors into messages and exit codes: 0 ok, 1 user error, 2 toolchain error.

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

export function describeError(error: unknown): { message: string; exitCode: number } {
  if (error instanceof DslError) return { message: formatDslError(error), exitCode: EXIT_USER };
  if (error instanceof UsageError || error instanceof PlanError || error instanceof ChunkattnError)
    return { message: `error: ${error.message}`, exitCode: EXIT_USER };
  if (error instanceof ToolchainError || error instanceof BuildError || error instanceof ResourceError)
    return { message: `error: ${error.message}`, exitCode: EXIT_TOOLCHAIN };
  const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
  return { message: `internal error: ${message}`, exitCode: EXIT_TOOLCHAIN };
}
