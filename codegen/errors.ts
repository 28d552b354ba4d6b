// Build-time errors. Exit codes of the CLI follow from the class: user errors 1, toolchain 2.

import type { KernelSpec } from '../dsl/spec.ts';

/** The compiler rejected generated code: shows its message, the generated file and the spec behind it. */
export class BuildError extends Error {
  override name = 'BuildError';
  constructor(
    readonly specName: string,
    readonly generatedFile: string,
    readonly command: string,
    readonly compilerOutput: string,
  ) {
    super(
      `build of spec "${specName}" failed\n  generated file: ${generatedFile}\n  command: ${command}\n${compilerOutput.trim()}`,
    );
  }
}

/** A required tool (nvcc, g++) is missing or unusable. */
export class ToolchainError extends Error {
  override name = 'ToolchainError';
}

/** A built kernel breaks its plan: spills, or registers/shared memory beyond the plan's budget. */
export class ResourceError extends Error {
  override name = 'ResourceError';
  constructor(
    readonly spec: KernelSpec,
    readonly violations: readonly string[],
  ) {
    super(`spec "${spec.name}" breaks its resource plan:\n  ${violations.join('\n  ')}`);
  }
}
