// The search space: candidates are a kernel instance (build-time tunables of the target and the
// spec) plus the two-phase threshold (a runtime tunable, no build). Constraints prune before
// anything is built; the rest is searched coordinate-wise from the defaults (each tunable varied
// alone, then the best value of each combined), so a budget cuts the least promising builds.

import { tunablesFor } from '../codegen/index.ts';
import type { BuildTarget, KernelSpec, TunableSpec } from '../dsl/spec.ts';
import { DEFAULT_MIN_SHARERS, type KernelTunables, tunablesId } from '../runtime/dispatch.ts';

export interface Candidate {
  /** Short stable label, e.g. `cpu_tile_rows=32 min_sharers=2` (`defaults` for the defaults). */
  readonly id: string;
  /** Build-time tunables that differ from their defaults. */
  readonly kernel: KernelTunables;
  readonly minSharers: number;
}

/** min_sharers beyond any batch bucket: no shared runs, every call sequence-first. */
export const SEQUENCE_FIRST_SHARERS = 2 ** 30;

export function candidate(kernel: KernelTunables, minSharers = DEFAULT_MIN_SHARERS): Candidate {
  const threshold =
    minSharers === DEFAULT_MIN_SHARERS
      ? ''
      : ` min_sharers=${minSharers === SEQUENCE_FIRST_SHARERS ? 'off' : minSharers}`;
  return { id: `${tunablesId(kernel)}${threshold}`, kernel, minSharers };
}

/** The values searched per tunable: a subset of the declared values around the default. */
export interface SpaceOptions {
  /** Host cores (the cpu thread counts searched); default: os.availableParallelism(). */
  readonly cores?: number;
  /** Also try running sequence-first (the two-phase threshold). */
  readonly threshold?: boolean;
}

/** Why a kernel candidate cannot work, before any build (null: keep). */
export function constraintViolation(
  spec: KernelSpec,
  target: BuildTarget,
  kernel: KernelTunables,
): string | null {
  if (target === 'cpu') {
    const group = spec.heads.q / spec.heads.kv;
    const tile = kernel['cpu_tile_rows'];
    if (tile !== undefined && tile < group)
      return `cpu_tile_rows ${tile} < group ${group}: a row's heads are never split`;
    const direct = kernel['cpu_direct_below'];
    if (direct !== undefined && tile !== undefined && direct > tile)
      return `cpu_direct_below ${direct} > cpu_tile_rows ${tile}: no tile is ever that tall`;
  }
  return null;
}

function searchedValues(t: TunableSpec, cores: number): readonly number[] {
  switch (t.name) {
    case 'cpu_tile_rows':
      return [32, 64, 128];
    case 'cpu_direct_below':
      return [8, 20, 32];
    case 'cpu_prefetch':
      return [0, 3];
    case 'cpu_threads':
      // 0 = every core; one fewer leaves a core to the caller's own threads.
      return cores > 1 ? [0, Math.max(1, cores - 1)].filter((v) => t.values.includes(v)) : [0];
    default:
      return t.values;
  }
}

/** The first round: the defaults, then each tunable moved alone (pruned by the constraints). */
export function firstRound(
  spec: KernelSpec,
  target: BuildTarget,
  options: SpaceOptions = {},
): {
  candidates: Candidate[];
  pruned: { id: string; reason: string }[];
} {
  const cores = options.cores ?? 1;
  const candidates: Candidate[] = [candidate({})];
  const pruned: { id: string; reason: string }[] = [];
  for (const t of tunablesFor(target, spec.tunables)) {
    for (const value of searchedValues(t, cores)) {
      if (value === t.default) continue;
      const kernel = { [t.name]: value };
      const violation = constraintViolation(spec, target, kernel);
      const c = candidate(kernel);
      if (violation) pruned.push({ id: c.id, reason: violation });
      else candidates.push(c);
    }
  }
  if (options.threshold) candidates.push(candidate({}, SEQUENCE_FIRST_SHARERS));
  return { candidates, pruned };
}

/** The second round: the best value of every tunable together (when it differs from all tried). */
export function combineWinners(
  spec: KernelSpec,
  target: BuildTarget,
  timed: readonly { candidate: Candidate; us: number }[],
): Candidate | null {
  const base = timed.find((t) => t.candidate.id === 'defaults');
  if (!base) return null;
  const kernel: Record<string, number> = {};
  let minSharers = DEFAULT_MIN_SHARERS;
  for (const t of timed) {
    if (t.us >= base.us) continue;
    const names = Object.keys(t.candidate.kernel);
    if (names.length === 1) {
      const name = names[0]!;
      const best = timed
        .filter((u) => Object.keys(u.candidate.kernel).length === 1 && name in u.candidate.kernel)
        .reduce((a, b) => (a.us <= b.us ? a : b));
      kernel[name] = best.candidate.kernel[name]!;
    } else if (names.length === 0 && t.candidate.minSharers !== DEFAULT_MIN_SHARERS) {
      minSharers = t.candidate.minSharers;
    }
  }
  if (Object.keys(kernel).length < 2 && minSharers === DEFAULT_MIN_SHARERS) return null;
  if (constraintViolation(spec, target, kernel)) return null;
  const combined = candidate(kernel, minSharers);
  return timed.some((t) => t.candidate.id === combined.id) ? null : combined;
}
