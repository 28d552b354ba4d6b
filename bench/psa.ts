// bench psa: progressive sparse attention on the cpu target, on synthetic Q/K/V with realistic
// structure (bench/psa-synthetic.ts: retrieval, local and diffuse heads), against float64.
//
// Accuracy (one sequence of 32K tokens, c = 32, Hq 32 / Hkv 8, d 128, bf16, query draws × heads):
//   recallMean / recallP5   attention mass of the selected chunks (per query head)
//   relError                output error against the exact dense output
//   bytesFraction           K/V of the selected chunks + the metadata select read, over dense
//   oracleGap               chunks selected / chunks the true top-p needs (the group's union)
// for mass ∈ {0.8, 0.85, 0.9, 0.95, 0.99}, each beside a fixed top-k (chunks ranked by their
// Quest bound, the paper's fixed-budget baseline) given the same bytes.
// Speed: one Attention of two layers holding the same K/V, layer 0 dense two-phase and layer 1
// PSA; decode(0) and decode(1) alternate in one run and the medians are compared (measured).
// Sharing: 32 sequences share a 16K prefix plus 1K private each. From the selection: the shared
// (chunk, KV head) pairs any sharer selected — what PSA inside two-phase loads per step, once
// per phase-1 tile of sharers exactly as dense two-phase loads every shared chunk — next to what
// the same selections would read without sharing; plus the measured dense/PSA decode times.

import { buildModule } from '../codegen/index.ts';
import { attention } from '../dsl/attention.ts';
import { progressive } from '../dsl/sparse.ts';
import type { KernelSpec } from '../dsl/spec.ts';
import { Attention } from '../runtime/attention.ts';
import { META_VECTORS } from '../runtime/chunk-metadata.ts';
import { fromHost, toHost } from '../runtime/half.ts';
import type { LoadableModule } from '../runtime/module-loader.ts';
import { recentChunks } from '../runtime/psa-options.ts';
import {
  bytesFraction,
  type ExactAttention,
  exactAttention,
  massRecall,
  meanAndP5,
  oracleChunks,
  relativeErrorF64,
  topKChunks,
} from './psa-metrics.ts';
import { type HeadType, syntheticQkv } from './psa-synthetic.ts';
import type { BenchOptions, BenchReport } from './report.ts';
import { type LineSeries, lineChartSvg, lineSeriesAsBars } from './svg-line-chart.ts';
import { median } from './workload.ts';

const MASSES = [0.8, 0.85, 0.9, 0.95, 0.99] as const;
const MAIN_MASS = 0.9;
const CHUNK = 32;
const HEADS = { q: 32, kv: 8 } as const;
const HEAD_DIM = 128;

export function psaBenchSpec(): KernelSpec {
  return attention({
    name: 'psa-bench',
    heads: HEADS,
    headDim: HEAD_DIM,
    dtype: 'bf16',
    chunkSize: CHUNK,
    targets: ['cpu'],
    sparse: progressive({ mass: MAIN_MASS, denseLayers: 0 }),
  });
}

/** One line of the decode-speed table (measured figures; bytes from the selection). */
function speedRow(label: string, t: Alternating, bytes: number): string {
  const f = (x: number) => x.toFixed(2);
  return `  ${label}: dense ${f(t.denseMs)} ms, PSA ${f(t.psaMs)} ms, speedup ${f(t.speedup)}× [${f(t.speedupP25)}–${f(t.speedupP75)}], K/V bytes / dense ${bytes.toFixed(3)}, ${t.reps} pairs`;
}

/** The values a bf16 pool holds. */
const roundBf16 = (x: Float32Array): Float32Array => fromHost(toHost(x, 'bf16'), 'bf16');

export interface MassResult {
  readonly mass: number;
  readonly recallMean: number;
  readonly recallP5: number;
  readonly relErrorMean: number;
  readonly bytesFraction: number;
  readonly chunksFraction: number;
  readonly oracleChunksFraction: number;
  readonly oracleGap: number;
  readonly byHeadType: Readonly<Record<HeadType, { recallMean: number; chunksFraction: number }>>;
  readonly topK: { readonly recallMean: number; readonly recallP5: number; readonly bytesFraction: number };
}

interface Data {
  readonly tokens: number;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly q: Float32Array;
  readonly queries: number;
  readonly headTypes: readonly HeadType[];
}

function writeAll(attn: Attention, seq: number, k: Float32Array, v: Float32Array, layers: number): void {
  const kb = toHost(k, 'bf16');
  const vb = toHost(v, 'bf16');
  for (let layer = 0; layer < layers; layer++) attn.writeKV(layer, seq, 0, kb, vb);
}

/** Quest bound per chunk for one query head, from the layer's metadata ([slots, Hkv, 4, D] bf16). */
function questScores(
  meta: Float32Array,
  slots: Int32Array,
  kvHead: number,
  q: Float32Array,
  scale: number,
): Float64Array {
  const d = HEAD_DIM;
  const out = new Float64Array(slots.length);
  for (let j = 0; j < slots.length; j++) {
    const base = (slots[j]! * HEADS.kv + kvHead) * META_VECTORS * d;
    let s = 0;
    for (let i = 0; i < d; i++)
      s += Math.max(q[i]! * meta[base + 2 * d + i]!, q[i]! * meta[base + 3 * d + i]!);
    out[j] = s * scale;
  }
  return out;
}

async function accuracy(
  spec: LoadableModule,
  data: Data,
  mass: number,
  exact: ExactAttention[][],
): Promise<MassResult> {
  const g = HEADS.q / HEADS.kv;
  const attn = await Attention.create(spec, {
    layers: 1,
    capacityTokens: data.tokens + CHUNK,
    target: 'cpu',
    sparse: { mass, denseBelowTokens: 0, denseLayers: 0 },
  });
  try {
    const { seq } = attn.insert(Array.from({ length: data.tokens }, (_, i) => i));
    writeAll(attn, seq, data.k, data.v, 1);
    const chunks = Math.ceil(data.tokens / CHUNK);
    const slots = attn.cache.chunksOf(seq);
    const meta = fromHost(attn.chunkMetadata!.readLayer(0), 'bf16');
    const forced = [
      ...new Set([
        0,
        chunks - 1,
        ...Array.from({ length: recentChunks(attn.sparse!, CHUNK) }, (_, i) => chunks - 1 - i),
      ]),
    ].filter((j) => j >= 0);
    const shape = {
      chunkSize: CHUNK,
      headDim: HEAD_DIM,
      metaVectors: META_VECTORS,
      scoredChunks: chunks - 1,
    };
    const recalls: number[] = [];
    const errors: number[] = [];
    const fractions: number[] = [];
    const chunkFractions: number[] = [];
    const oracleFractions: number[] = [];
    const gaps: number[] = [];
    const topRecalls: number[] = [];
    const topFractions: number[] = [];
    const byType: Record<string, { recall: number[]; chunks: number[] }> = {};
    const hq = HEADS.q * HEAD_DIM;
    const bounds: { s: number; kvh: number; bound: Float64Array }[] = [];
    for (let s = 0; s < data.queries; s++) {
      const qRow = data.q.subarray(s * hq, (s + 1) * hq);
      const out = fromHost(attn.decode(0, toHost(qRow, 'bf16'), undefined, [seq]), 'bf16');
      const selection = attn.selection!;
      for (let kvh = 0; kvh < HEADS.kv; kvh++) {
        const selected = selection.chunksOf(seq, kvh);
        const type = data.headTypes[kvh]!;
        byType[type] ??= { recall: [], chunks: [] };
        const oracle = new Set<number>();
        const bound = new Float64Array(chunks).fill(Number.NEGATIVE_INFINITY);
        for (let j = 0; j < g; j++) {
          const h = kvh * g + j;
          const e = exact[s]![h]!;
          const r = massRecall(e.chunkMass, selected);
          recalls.push(r);
          byType[type].recall.push(r);
          errors.push(relativeErrorF64(out.subarray(h * HEAD_DIM, (h + 1) * HEAD_DIM), e.out));
          for (const c of oracleChunks(e.chunkMass, mass)) oracle.add(c);
          const qs = questScores(
            meta,
            slots,
            kvh,
            qRow.subarray(h * HEAD_DIM, (h + 1) * HEAD_DIM),
            attn.spec.softmaxScale,
          );
          for (let c = 0; c < chunks; c++) bound[c] = Math.max(bound[c]!, qs[c]!);
        }
        fractions.push(bytesFraction(selected.length, chunks, shape));
        chunkFractions.push(selected.length / chunks);
        byType[type].chunks.push(selected.length / chunks);
        oracleFractions.push(oracle.size / chunks);
        gaps.push(selected.length / oracle.size);
        bounds.push({ s, kvh, bound });
      }
    }
    const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    // The paper's baseline: one fixed budget k for every query and head (PSA's mean count),
    // chunks ranked by their Quest bound (max over the group), forced chunks included. Quest
    // reads 2 of the 4 metadata vectors, so at equal bytes it gets the other 2's worth as chunks.
    const extra = ((chunks - 1) * 2 * HEAD_DIM) / (2 * CHUNK * HEAD_DIM);
    const k = Math.min(chunks, Math.round(mean(chunkFractions) * chunks + extra));
    for (const { s, kvh, bound } of bounds) {
      const top = topKChunks(bound, k, forced);
      topFractions.push(bytesFraction(top.length, chunks, { ...shape, metaVectors: 2 }));
      for (let j = 0; j < g; j++) topRecalls.push(massRecall(exact[s]![kvh * g + j]!.chunkMass, top));
    }
    const r = meanAndP5(recalls);
    const t = meanAndP5(topRecalls);
    const byHeadType = Object.fromEntries(
      Object.entries(byType).map(([type, v]) => [
        type,
        { recallMean: mean(v.recall), chunksFraction: mean(v.chunks) },
      ]),
    ) as MassResult['byHeadType'];
    return {
      mass,
      recallMean: r.mean,
      recallP5: r.p5,
      relErrorMean: mean(errors),
      bytesFraction: mean(fractions),
      chunksFraction: mean(chunkFractions),
      oracleChunksFraction: mean(oracleFractions),
      oracleGap: mean(gaps),
      byHeadType,
      topK: { recallMean: t.mean, recallP5: t.p5, bytesFraction: mean(topFractions) },
    };
  } finally {
    attn.close();
  }
}

/** Timings of alternating decodes: medians in ms, and the spread of the paired speedups. */
export interface Alternating {
  readonly denseMs: number;
  readonly psaMs: number;
  /** Median of the per-pair ratios dense / PSA. */
  readonly speedup: number;
  /** Quartiles of the per-pair ratios (the spread of the speedup). */
  readonly speedupP25: number;
  readonly speedupP75: number;
  readonly reps: number;
}

/** Alternating dense (layer 0) and PSA (layer 1) decodes of the same K/V, measured. */
function alternate(attn: Attention, q: Uint16Array, seqs: readonly number[], reps: number): Alternating {
  const dense: number[] = [];
  const sparse: number[] = [];
  attn.decode(0, q, undefined, seqs); // warm both paths
  attn.decode(1, q, undefined, seqs);
  for (let i = 0; i < reps; i++) {
    let t = performance.now();
    attn.decode(0, q, undefined, seqs);
    dense.push(performance.now() - t);
    t = performance.now();
    attn.decode(1, q, undefined, seqs);
    sparse.push(performance.now() - t);
  }
  const ratios = dense.map((d, i) => d / sparse[i]!).sort((a, b) => a - b);
  const quantile = (p: number) => ratios[Math.min(ratios.length - 1, Math.floor(p * ratios.length))]!;
  return {
    denseMs: median(dense),
    psaMs: median(sparse),
    speedup: median(ratios),
    speedupP25: quantile(0.25),
    speedupP75: quantile(0.75),
    reps,
  };
}

export async function psaSpeed(spec: LoadableModule, data: Data, reps: number): Promise<Alternating> {
  const attn = await Attention.create(spec, {
    layers: 2,
    capacityTokens: data.tokens + CHUNK,
    target: 'cpu',
    sparse: { mass: MAIN_MASS, denseBelowTokens: 0, denseLayers: 1 },
  });
  try {
    const { seq } = attn.insert(Array.from({ length: data.tokens }, (_, i) => i));
    writeAll(attn, seq, data.k, data.v, 2);
    const q = toHost(data.q.subarray(0, HEADS.q * HEAD_DIM), 'bf16') as Uint16Array;
    return alternate(attn, q, [seq], reps);
  } finally {
    attn.close();
  }
}

export async function psaSharing(spec: LoadableModule, quick: boolean, seed: number, reps: number) {
  const batch = 32;
  const prefix = quick ? 4096 : 16384;
  const own = quick ? 256 : 1024;
  const data = syntheticQkv({
    seed,
    tokens: prefix + batch * own,
    kvHeads: HEADS.kv,
    group: HEADS.q / HEADS.kv,
    headDim: HEAD_DIM,
    queries: batch,
  });
  const rowElems = HEADS.kv * HEAD_DIM;
  const attn = await Attention.create(spec, {
    layers: 2,
    capacityTokens: prefix + batch * (own + CHUNK) + CHUNK,
    target: 'cpu',
    sparse: { mass: MAIN_MASS, denseBelowTokens: 0, denseLayers: 1 },
  });
  try {
    const seqs: number[] = [];
    const kb = toHost(data.k, 'bf16') as Uint16Array;
    const vb = toHost(data.v, 'bf16') as Uint16Array;
    for (let i = 0; i < batch; i++) {
      const tokens = [
        ...Array.from({ length: prefix }, (_, t) => t),
        ...Array.from({ length: own }, (_, t) => prefix + i * own + t),
      ];
      const { seq, matchedTokens } = attn.insert(tokens);
      seqs.push(seq);
      const rows = (from: number, to: number) => [from * rowElems, to * rowElems] as const;
      for (let layer = 0; layer < 2; layer++) {
        if (matchedTokens < prefix)
          attn.writeKV(layer, seq, 0, kb.subarray(...rows(0, prefix)), vb.subarray(...rows(0, prefix)));
        const [a, b] = rows(prefix + i * own, prefix + (i + 1) * own);
        attn.writeKV(layer, seq, prefix, kb.subarray(a, b), vb.subarray(a, b));
      }
    }
    // One decode step: each sequence appends a token (K/V of its last private token again).
    attn.appendStep(
      seqs,
      seqs.map((_, i) => 1_000_000 + i),
    );
    const stepK = new Uint16Array(batch * rowElems);
    const stepV = new Uint16Array(batch * rowElems);
    for (let i = 0; i < batch; i++) {
      const src = (prefix + (i + 1) * own - 1) * rowElems;
      stepK.set(kb.subarray(src, src + rowElems), i * rowElems);
      stepV.set(vb.subarray(src, src + rowElems), i * rowElems);
    }
    for (let layer = 0; layer < 2; layer++) attn.writeDecodeKV(layer, stepK, stepV);
    const q = toHost(data.q, 'bf16') as Uint16Array;
    const times = alternate(attn, q, seqs, reps);
    attn.decode(1, q, undefined, seqs);
    const sel = attn.selection!;
    const ctx = sel.context;
    const { runs } = ctx;
    let privateSelected = 0; // (chunk, kv head) pairs of the sequences' own chunks selected
    let privateChunks = 0;
    let privateScored = 0; // own full chunks whose metadata select reads
    for (let r = 0; r < ctx.numRows; r++) {
      if (sel.counts[r * HEADS.kv]! < 0) continue; // not requested
      const n = ctx.rowChunkOffsets[r + 1]! - ctx.rowChunkOffsets[r]!;
      const shared = ctx.rowSharedChunks[r]!;
      privateChunks += (n - shared) * HEADS.kv;
      privateScored += Math.max(0, n - 1 - shared) * HEADS.kv;
      for (let kvh = 0; kvh < HEADS.kv; kvh++) {
        const at = r * HEADS.kv + kvh;
        for (const c of sel.lists.subarray(at * sel.maxChunks, at * sel.maxChunks + sel.counts[at]!))
          if (c >= shared) privateSelected++;
      }
    }
    let sharedLoads = 0; // shared (chunk, kv head) pairs any sharer selected: one load per step
    let sharedSelectedPerRow = 0; // the same selections, read once per sequence (no sharing)
    let sharedDense = 0; // dense: every shared (chunk, kv head)
    for (let ri = 0; ri < ctx.numRuns; ri++) {
      const [, numChunks, kvBegin, rowBegin, rowEnd] = Array.from(runs.subarray(ri * 6, ri * 6 + 6));
      const first = kvBegin! / CHUNK;
      sharedDense += numChunks! * HEADS.kv;
      for (let kvh = 0; kvh < HEADS.kv; kvh++)
        for (let c = 0; c < numChunks!; c++) {
          let any = false;
          for (let r = rowBegin!; r < rowEnd!; r++) {
            const at = r * HEADS.kv + kvh;
            const list = sel.lists.subarray(
              at * sel.maxChunks,
              at * sel.maxChunks + Math.max(0, sel.counts[at]!),
            );
            if (list.includes(first + c)) {
              any = true;
              sharedSelectedPerRow++;
            }
          }
          if (any) sharedLoads++;
        }
    }
    const sharedChunks = prefix / CHUNK;
    // K/V bytes per step over dense's, with the shared chunks (and their metadata) read once per
    // step by both; PSA adds the metadata of every chunk select scores.
    const kvBytes = 2 * CHUNK * HEAD_DIM * 2;
    const metaBytes = META_VECTORS * HEAD_DIM * 2;
    const denseBytes = (sharedDense + privateChunks) * kvBytes;
    const psaBytes = (sharedLoads + privateSelected) * kvBytes + (sharedDense + privateScored) * metaBytes;
    return {
      sequences: batch,
      prefixTokens: prefix,
      privateTokens: own,
      sharedChunkHeads: sharedChunks * HEADS.kv,
      denseSharedLoads: sharedDense,
      psaSharedLoads: sharedLoads,
      psaSharedLoadsWithoutSharing: sharedSelectedPerRow,
      readOncePerStep: sharedLoads <= sharedChunks * HEADS.kv,
      denseKvBytes: denseBytes,
      psaKvBytes: psaBytes,
      bytesFraction: psaBytes / denseBytes,
      ...times,
    };
  } finally {
    attn.close();
  }
}

export async function runPsaBench(opts: BenchOptions): Promise<BenchReport> {
  const quick = opts.quick;
  const tokens = quick ? 8192 : 32768;
  const queries = quick ? 2 : 4;
  const reps = quick ? 5 : 15;
  const seed = 2503_00392;
  const spec = psaBenchSpec();
  const module = await buildModule(spec, { target: 'cpu' });
  const total = MASSES.length + 4;
  let step = 0;
  opts.progress(step, total, 'generating synthetic Q/K/V');
  const synthetic = syntheticQkv({
    seed,
    tokens,
    kvHeads: HEADS.kv,
    group: HEADS.q / HEADS.kv,
    headDim: HEAD_DIM,
    queries,
  });
  const data: Data = {
    tokens,
    k: roundBf16(synthetic.k),
    v: roundBf16(synthetic.v),
    q: roundBf16(synthetic.q),
    queries,
    headTypes: synthetic.headTypes,
  };
  opts.progress(++step, total, 'float64 reference');
  const scale = spec.softmaxScale;
  const exact: ExactAttention[][] = [];
  for (let s = 0; s < queries; s++) {
    const heads: ExactAttention[] = [];
    for (let h = 0; h < HEADS.q; h++) {
      const q = data.q.subarray((s * HEADS.q + h) * HEAD_DIM, (s * HEADS.q + h + 1) * HEAD_DIM);
      const shape = { tokens, kvHeads: HEADS.kv, headDim: HEAD_DIM, chunkSize: CHUNK, scale };
      heads.push(exactAttention(q, data.k, data.v, shape, Math.floor(h / (HEADS.q / HEADS.kv))));
    }
    exact.push(heads);
  }
  const results: MassResult[] = [];
  for (const mass of MASSES) {
    opts.progress(++step, total, `mass ${mass}`);
    results.push(await accuracy(module, data, mass, exact));
  }
  opts.progress(++step, total, 'decode speed, dense vs PSA (alternating)');
  const speedResult = await psaSpeed(module, data, reps);
  opts.progress(++step, total, 'sharing: 32 sequences, shared prefix');
  const shared = await psaSharing(module, quick, seed + 1, reps);
  opts.progress(total, total, 'done');

  const main = results.find((r) => r.mass === MAIN_MASS)!;
  const f = (x: number, digits = 3) => x.toFixed(digits);
  const rows = results.map((r) => [
    r.mass,
    f(r.recallMean),
    f(r.recallP5),
    f(r.relErrorMean, 4),
    f(r.bytesFraction),
    f(r.oracleChunksFraction),
    f(r.oracleGap, 2),
    f(r.topK.recallMean),
    f(r.topK.recallP5),
    f(r.topK.bytesFraction),
  ]);
  const series: LineSeries[] = [
    {
      label: 'PSA (mass p)',
      points: results.map((r) => ({ x: r.bytesFraction, y: r.recallMean, label: `p=${r.mass}` })),
    },
    {
      label: 'fixed top-k by Quest bound, equal bytes',
      points: results.map((r) => ({ x: r.topK.bytesFraction, y: r.topK.recallMean })),
    },
  ];
  const title = `PSA on the cpu target: ${tokens} tokens, c = ${CHUNK}, Hq ${HEADS.q} / Hkv ${HEADS.kv}, d ${HEAD_DIM}, bf16`;
  return {
    name: 'psa',
    title,
    head: [
      'mass',
      'recall mean',
      'recall p5',
      'rel error',
      'bytes / dense',
      'oracle chunks',
      'oracle gap',
      'top-k recall',
      'top-k p5',
      'top-k bytes',
    ],
    rows,
    notes: [
      `at mass ${MAIN_MASS}: recallMean ${f(main.recallMean)}, recallP5 ${f(main.recallP5)}, bytesFraction ${f(main.bytesFraction)} (metadata included), oracle gap ${f(main.oracleGap, 2)}`,
      `by head type at ${MAIN_MASS}: ${Object.entries(main.byHeadType)
        .map(([t, v]) => `${t} recall ${f(v.recallMean)} chunks ${f(v.chunksFraction)}`)
        .join('; ')}`,
      'decode at mass 0.9, measured, dense two-phase and PSA alternating in one run (median ms; speedup: median of the paired ratios [p25–p75]):',
      speedRow(`${tokens} tokens, 1 sequence`, speedResult, main.bytesFraction),
      speedRow(
        `${shared.sequences} × (${shared.prefixTokens} shared + ${shared.privateTokens} own)`,
        shared,
        shared.bytesFraction,
      ),
      `sharing: PSA loads ${shared.psaSharedLoads} shared (chunk, KV head) pairs per step, each once (dense: ${shared.denseSharedLoads}); without sharing the same selections would read ${shared.psaSharedLoadsWithoutSharing}. Counted from the selection (the phase-1 kernel loads a chunk iff a sharer of its tile selected it), not a hardware counter; K/V bytes / dense counts the metadata select reads.`,
      'synthetic Q/K/V (bench/psa-synthetic.ts), not a model: the accuracy figures describe that generator.',
    ],
    json: {
      tokens,
      chunkSize: CHUNK,
      heads: HEADS,
      headDim: HEAD_DIM,
      queries,
      mass: MAIN_MASS,
      recallMean: main.recallMean,
      recallP5: main.recallP5,
      relErrorMean: main.relErrorMean,
      bytesFraction: main.bytesFraction,
      oracleGap: main.oracleGap,
      speedup: speedResult.speedup,
      speed: speedResult,
      sweep: results,
      sharing: shared,
    },
    chart: { title: 'attention-mass recall at each mass', unit: 'recall', series: lineSeriesAsBars(series) },
    svg: lineChartSvg(
      `${title}: recall against bytes read`,
      { x: 'bytes read / dense (metadata included)', y: 'mean attention-mass recall' },
      series,
    ),
  };
}
