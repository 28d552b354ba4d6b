// bench tpp --target emu: the same two-phase vs sequence-first comparison, with the CUDA kernels
// run by the cucpu shim. The emulator's speed says nothing about a GPU's, so this report counts
// instead of timing: the K/V bytes each mode's kernels read per step, the phase-1 launches that
// prove two-phase really ran, and the error of every sampled step against float64 attention,
// under the same f16 gate as the cpu demo. Shapes are small (d = 128, c = 64, f16, 2 heads).

import { type DemoResult, EMU_DEMO_DEFAULTS, runDemo } from './demo.ts';
import type { BenchOptions, BenchReport } from './report.ts';

interface Workload {
  readonly np: number;
  readonly ns: number;
  readonly batch: number;
  readonly nc: number;
}

function grid(quick: boolean): Workload[] {
  const nc = EMU_DEMO_DEFAULTS.steps;
  if (quick)
    return [
      { np: 256, ns: 256, batch: 8, nc },
      { np: 256, ns: 0, batch: 8, nc },
    ];
  const out: Workload[] = [];
  for (const batch of [4, 16])
    for (const np of [128, 512]) for (const ns of [np, 0]) out.push({ np, ns, batch, nc });
  return out;
}

export interface TppEmuResult {
  readonly np: number;
  readonly ns: number;
  readonly nc: number;
  readonly batch: number;
  /** K/V bytes per decode step, counted over all nc steps. */
  readonly kvBytesPerStep: { readonly twoPhase: number; readonly sequenceFirst: number };
  /** sequence-first K/V bytes / two-phase K/V bytes. */
  readonly kvReadRatio: number;
  readonly phase1Launches: number;
  readonly maxRelativeError: { readonly twoPhase: number; readonly sequenceFirst: number };
}

export async function runTppEmuBench(opts: BenchOptions): Promise<BenchReport> {
  const target = 'emu';
  const workloads = grid(opts.quick);
  const results: TppEmuResult[] = [];
  let tolerance = 0;
  for (const [i, w] of workloads.entries()) {
    const label = `np=${w.np} ns=${w.ns} b=${w.batch}`;
    const demo: DemoResult = await runDemo({
      batch: w.batch,
      sharedTokens: w.ns,
      suffixTokens: w.np - w.ns,
      steps: w.nc,
      heads: EMU_DEMO_DEFAULTS.heads,
      target,
      progress: (done, total, what) =>
        opts.progress(i * total + done, workloads.length * total, `${label}: ${what}`),
    });
    const counts = demo.counts;
    if (!counts) throw new Error(`bench tpp on ${target} needs the emu target's counters`);
    if (demo.ranAs['two-phase'] !== 'two-phase')
      throw new Error(`the ${target} module ran two-phase as ${demo.ranAs['two-phase']}: no phase-1 kernel`);
    tolerance = demo.tolerance;
    results.push({
      ...w,
      kvBytesPerStep: {
        twoPhase: counts['two-phase'].kvBytesRead / w.nc,
        sequenceFirst: counts['sequence-first'].kvBytesRead / w.nc,
      },
      kvReadRatio: counts['sequence-first'].kvBytesRead / counts['two-phase'].kvBytesRead,
      phase1Launches: counts['two-phase'].phase1Launches,
      maxRelativeError: {
        twoPhase: demo.maxRelativeError['two-phase'],
        sequenceFirst: demo.maxRelativeError['sequence-first'],
      },
    });
  }
  const worst = Math.max(
    ...results.flatMap((r) => [r.maxRelativeError.twoPhase, r.maxRelativeError.sequenceFirst]),
  );
  const kib = (bytes: number) => (bytes / 1024).toFixed(1);
  return {
    name: 'tpp',
    title: `two-phase vs sequence-first decode, ${target} target, counted (d=128, ${EMU_DEMO_DEFAULTS.heads} heads, c=64, f16, 1 layer)`,
    head: [
      'np',
      'ns',
      'nc',
      'b',
      'two-phase K/V KiB/step',
      'seq-first K/V KiB/step',
      'K/V read ratio',
      'phase-1 launches',
      'two-phase max rel err',
      'seq-first max rel err',
    ],
    rows: results.map((r) => [
      r.np,
      r.ns,
      r.nc,
      r.batch,
      kib(r.kvBytesPerStep.twoPhase),
      kib(r.kvBytesPerStep.sequenceFirst),
      `${r.kvReadRatio.toFixed(2)}×`,
      r.phase1Launches,
      r.maxRelativeError.twoPhase.toExponential(2),
      r.maxRelativeError.sequenceFirst.toExponential(2),
    ]),
    notes: [
      'Counted by the emulator, not timed (its speed is not a GPU speed). A memory-bound GPU decode moves these bytes; no time is shown.',
      `Errors: steps 1, nc/2 and nc of every workload against float64 attention; worst ${worst.toExponential(2)}, f16 gate ${tolerance}: ${worst <= tolerance ? 'pass' : 'FAIL'}.`,
    ],
    ...(worst <= tolerance
      ? {}
      : { gateFailure: `max relative error ${worst.toExponential(2)} is over the f16 gate ${tolerance}` }),
    json: {
      target,
      shape: { heads: EMU_DEMO_DEFAULTS.heads, headDim: 128, chunkSize: 64, dtype: 'f16', layers: 1 },
      errorGate: { tolerance, worst, pass: worst <= tolerance },
      results,
    },
    chart: {
      title: `sequence-first / two-phase K/V bytes read per step (${target}, counted)`,
      unit: 'ratio ×',
      series: [
        {
          label: 'K/V read ratio',
          values: results.map((r) => ({ category: `np${r.np} ns${r.ns} b${r.batch}`, value: r.kvReadRatio })),
        },
      ],
    },
  };
}
