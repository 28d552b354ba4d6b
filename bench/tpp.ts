// bench tpp: two-phase partition (TPP) vs sequence-first (paged) decode on the cpu target,
// side by side in one process over the ChunkAttention microkernel grid (BENCHMARKS.md).
//
// Decode time grows linearly with the step (each sequence gains one private token a step), so
// each (np, ns, b) workload is decoded step by step and the kernels are timed at a few sample
// steps; the time of nc steps is the trapezoid integral over those samples. Only ca_decode is
// timed (median of reps, after a warm-up); tree and KV-write work is excluded.

import { buildModule } from '../codegen/index.ts';
import { attention } from '../dsl/attention.ts';
import type { Partition } from '../dsl/spec.ts';
import { Attention } from '../runtime/attention.ts';
import type { HostData } from '../runtime/native-module.ts';
import type { BenchOptions, BenchReport } from './report.ts';
import { runTppEmuBench } from './tpp-emu.ts';
import { loadPrompts, median, randomHost } from './workload.ts';

// Llama2-7B attention shapes, heads not scaled down: with fewer heads one layer's shared prefix
// (2048 tokens x 8 heads = 8 MiB) fits in the last-level cache, and the sequence-first baseline
// rereads it from cache instead of memory, which no real model gets (32 heads: 32 MiB a layer).
const HEADS = 32;
const HEAD_DIM = 128;
const CHUNK = 64;

const PAPER_SPEEDUP: Record<string, number> = { '1024/256': 3.2, '4096/512': 4.8, '4096/4096': 2.4 };

interface Workload {
  readonly np: number;
  readonly ns: number;
  readonly batch: number;
  readonly ncs: readonly number[];
}

function grid(quick: boolean): Workload[] {
  if (quick)
    return [
      { np: 2048, ns: 2048, batch: 32, ncs: [512] },
      { np: 2048, ns: 0, batch: 32, ncs: [512] },
    ];
  const out: Workload[] = [];
  for (const batch of [16, 32, 64])
    for (const np of [1024, 2048, 4096])
      for (const ns of [np, 0]) out.push({ np, ns, batch, ncs: [256, 512, 1024, 2048] });
  return out;
}

export interface TppResult {
  readonly np: number;
  readonly ns: number;
  readonly nc: number;
  readonly batch: number;
  readonly twoPhaseSeconds: number;
  readonly sequenceFirstSeconds: number;
  readonly speedup: number;
  readonly tokensPerSecond: { readonly twoPhase: number; readonly sequenceFirst: number };
}

function integrate(samples: readonly { step: number; seconds: number }[], nc: number): number {
  let total = 0;
  for (let i = 1; i < samples.length && samples[i - 1]!.step < nc; i++) {
    const a = samples[i - 1]!;
    const b = samples[i]!;
    const end = Math.min(b.step, nc);
    const atEnd = a.seconds + ((b.seconds - a.seconds) * (end - a.step)) / (b.step - a.step);
    total += ((a.seconds + atEnd) / 2) * (end - a.step);
  }
  return total;
}

export async function runTppBench(opts: BenchOptions): Promise<BenchReport> {
  // The emulator's times mean nothing for a GPU: that report counts instead (bench/tpp-emu.ts).
  if (opts.target === 'emu') return runTppEmuBench(opts);
  const spec = attention({
    name: 'tpp-bench',
    heads: { q: HEADS, kv: HEADS },
    headDim: HEAD_DIM,
    dtype: 'f16',
    chunkSize: CHUNK,
    targets: ['cpu'],
  });
  const module = await buildModule(spec, { target: 'cpu' });
  const reps = opts.quick ? 3 : 5;
  const workloads = grid(opts.quick);
  const totalSamples = workloads.reduce((sum, w) => sum + sampleSteps(Math.max(...w.ncs)).length, 0);
  let done = 0;
  const results: TppResult[] = [];
  for (const w of workloads) {
    const maxNc = Math.max(...w.ncs);
    const privateTokens = w.np - w.ns;
    const capacity = w.batch * (privateTokens + maxNc + 2 * CHUNK) + w.ns + CHUNK;
    const modes: Partition[] = ['two-phase', 'sequence-first'];
    const runtimes = await Promise.all(
      modes.map((mode) => Attention.create(module, { layers: 1, capacityTokens: capacity, mode })),
    );
    try {
      const rowElems = HEADS * HEAD_DIM;
      const kv = randomHost(Math.max(w.np, 1) * rowElems, 'bits', 7);
      const seqs = runtimes.map((attn) =>
        loadPrompts(attn, { batch: w.batch, sharedTokens: w.ns, privateTokens }, kv),
      );
      const q = randomHost(w.batch * rowElems, 'bits', 11);
      const stepKv = kv.subarray(0, w.batch * rowElems) as HostData;
      const out = new Uint16Array(w.batch * rowElems);
      const samples = runtimes.map(() => [] as { step: number; seconds: number }[]);
      const sampleAt = new Set(sampleSteps(maxNc));
      for (let step = 1; step <= maxNc; step++) {
        runtimes.forEach((attn, m) => {
          attn.appendStep(
            seqs[m]!,
            seqs[m]!.map(() => 7),
          );
          attn.writeDecodeKV(0, stepKv, stepKv);
        });
        if (!sampleAt.has(step)) continue;
        opts.progress(done++, totalSamples, `np=${w.np} ns=${w.ns} b=${w.batch} step ${step}`);
        const times = runtimes.map(() => [] as number[]);
        // Each rep alternates which mode goes first, so neither gains from the other's warm-up.
        for (let rep = 0; rep <= 2 * reps; rep++)
          for (const m of rep % 2 ? [1, 0] : [0, 1]) {
            const started = performance.now();
            runtimes[m]!.decode(0, q, out);
            if (rep > 0) times[m]!.push((performance.now() - started) / 1000);
          }
        for (const [m, series] of samples.entries()) series.push({ step, seconds: median(times[m]!) });
      }
      for (const nc of w.ncs) {
        const [twoPhase, sequenceFirst] = samples.map((s) => integrate([{ ...s[0]!, step: 0 }, ...s], nc));
        results.push({
          np: w.np,
          ns: w.ns,
          nc,
          batch: w.batch,
          twoPhaseSeconds: twoPhase!,
          sequenceFirstSeconds: sequenceFirst!,
          speedup: sequenceFirst! / twoPhase!,
          tokensPerSecond: {
            twoPhase: (nc * w.batch) / twoPhase!,
            sequenceFirst: (nc * w.batch) / sequenceFirst!,
          },
        });
      }
    } finally {
      for (const attn of runtimes) attn.close();
    }
  }
  opts.progress(totalSamples, totalSamples, 'done');
  const fmt = (n: number) => (n >= 100 ? n.toFixed(0) : n.toPrecision(3));
  return {
    name: 'tpp',
    title: `two-phase vs sequence-first decode, cpu target (Llama2-7B shapes: d=${HEAD_DIM}, ${HEADS} heads, c=${CHUNK}, f16, 1 layer)`,
    head: [
      'np',
      'ns',
      'nc',
      'b',
      'two-phase ms/step',
      'seq-first ms/step',
      'speedup',
      'two-phase tok/s',
      'seq-first tok/s',
      'paper (GPU)',
    ],
    rows: results.map((r) => [
      r.np,
      r.ns,
      r.nc,
      r.batch,
      fmt((r.twoPhaseSeconds / r.nc) * 1000),
      fmt((r.sequenceFirstSeconds / r.nc) * 1000),
      `${r.speedup.toFixed(2)}×`,
      fmt(r.tokensPerSecond.twoPhase),
      fmt(r.tokensPerSecond.sequenceFirst),
      PAPER_SPEEDUP[`${r.ns}/${r.nc}`] ? `${PAPER_SPEEDUP[`${r.ns}/${r.nc}`]}×` : '',
    ]),
    notes: [
      'Token rate = nc·b / decode time of nc steps; ms/step is that time / nc. Ratios are measured side by side in one process.',
      'Paper column: ChunkAttention vs PagedAttention kernel speedups on an A100 (np = ns; ≈1.0 at ns = 0).',
    ],
    json: { shape: { heads: HEADS, headDim: HEAD_DIM, chunkSize: CHUNK, dtype: 'f16', layers: 1 }, results },
    chart: {
      title: 'two-phase speedup over sequence-first (cpu target)',
      unit: 'speedup ×',
      series: [
        {
          label: 'speedup',
          values: results.map((r) => ({
            category: `np${r.np} ns${r.ns} nc${r.nc} b${r.batch}`,
            value: r.speedup,
          })),
        },
      ],
    },
  };
}

function sampleSteps(maxNc: number): number[] {
  const steps = [1, Math.round(maxNc / 4), Math.round(maxNc / 2), maxNc];
  for (const nc of [256, 512, 1024, 2048]) if (nc <= maxNc) steps.push(nc);
  return [...new Set(steps)].sort((a, b) => a - b);
}
