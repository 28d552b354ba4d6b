// Tunables every module of a build target carries besides the spec's own: the knobs its kernel
// headers read from the rendered `Tunables` struct (templates/partials/config.hbs). The autotuner
// searches their values; a plan without overrides renders each default. A spec that declares a
// tunable of the same name replaces the target's (its values and default win).

import type { BuildTarget, TunableSpec } from '../dsl/spec.ts';

export interface TargetTunable extends TunableSpec {
  /** What the kernel does with it, for tables and docs. */
  readonly doc: string;
}

/** Read by templates/include/chunkattn/cpu/decode.h (`Tune<Cfg>`), whose DefaultTunables match. */
const CPU_TUNABLES: readonly TargetTunable[] = [
  {
    name: 'cpu_tile_rows',
    values: [16, 32, 64, 128],
    default: 64,
    doc: 'blocking: most stacked query rows (rows × group) per phase-1 task',
  },
  {
    name: 'cpu_direct_below',
    values: [0, 8, 12, 16, 20, 24, 32, 48, 64],
    default: 20,
    doc: 'blocking: phase-1 tiles shorter than this read K/V in place (no per-chunk conversion)',
  },
  {
    name: 'cpu_prefetch',
    values: [0, 1, 2, 3],
    default: 3,
    doc: 'prefetch: bit 0 phase 1 prefetches its next chunk, bit 1 phase 2 does',
  },
  {
    name: 'cpu_threads',
    values: [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128],
    default: 0,
    doc: 'threads a call uses when the caller passes 0 (0: CHUNKATTN_THREADS or every core)',
  },
];

export const TARGET_TUNABLES: Readonly<Record<BuildTarget, readonly TargetTunable[]>> = {
  cpu: CPU_TUNABLES,
  cuda: [],
  emu: [],
};

/** The tunables a module of `target` has: the target's, then the spec's (a spec's name wins). */
export function tunablesFor(
  target: BuildTarget,
  specTunables: readonly TunableSpec[],
): readonly TunableSpec[] {
  const own = new Set(specTunables.map((t) => t.name));
  return [...TARGET_TUNABLES[target].filter((t) => !own.has(t.name)), ...specTunables];
}
