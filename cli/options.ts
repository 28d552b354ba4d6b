// Parsing flag values into the DSL's branded names, with errors that list what is allowed.

import { ARCHS, type Arch, type BuildTarget } from '../dsl/spec.ts';
import { UsageError } from './exit-codes.ts';

const BUILD_TARGETS: readonly BuildTarget[] = ['cuda', 'emu', 'cpu'];

export function parseList<T extends string>(flag: string, value: string, allowed: readonly T[]): T[] {
  const items = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (items.length === 0) throw new UsageError(`${flag}: empty list; allowed: ${allowed.join(', ')}`);
  for (const item of items)
    if (!(allowed as readonly string[]).includes(item))
      throw new UsageError(`${flag}: '${item}' is not allowed; allowed: ${allowed.join(', ')}`);
  return [...new Set(items)] as T[];
}

export const parseArchs = (value: string): Arch[] => parseList('--arch', value, ARCHS);
export const parseBuildTargets = (value: string): BuildTarget[] =>
  parseList('--target', value, BUILD_TARGETS);

/** One target to run on (`demo --target`, `bench tpp --target`). */
export function parseRunTarget(value: string): BuildTarget {
  const targets = parseBuildTargets(value);
  if (targets.length !== 1) throw new UsageError(`--target: give one target, not '${value}'`);
  return targets[0]!;
}

export function parseInteger(flag: string, value: string): number {
  if (!/^\d+$/.test(value)) throw new UsageError(`${flag}: '${value}' is not a positive integer`);
  return Number(value);
}
