// bench prefill: multi-token attention over a shared prompt on the cpu target. b sequences share
// an np-token prompt (its K/V is in the cache); each prefills an n-token private suffix in one
// extend + attend step. Three ways to compute the same outputs, side by side in one process:
//
//   two-phase multi-query   the shared prompt once, phase 1 stacking the query rows of all sharers
//   per-sequence multi-query the same kernel with no sharing (b distinct prompts: each sequence's
//                            prompt is its own run, its n query rows stacked)
//   n one-token decode steps appendStep + decode, n times (what a decode-only cache offers)
//   sequence-first multi-query the shared tree without phase 1: every query row streams its
//                            whole KV on its own (the paged baseline)
//
// Only the attention calls are timed (median of reps after a warm-up; a decode step is timed
// once after an untimed call that plans its context); tree work and K/V writes are excluded.
// maxRelError is the largest error of sampled output rows of every method against float64.

import { buildModule } from '../codegen/index.ts';
import { attention } from '../dsl/attention.ts';
import { Attention } from '../runtime/attention.ts';
import { fromHost } from '../runtime/half.ts';
import { referenceDecode, relativeError } from '../runtime/reference.ts';
import type { BenchOptions, BenchReport } from './report.ts';
import { loadPrompts, median, randomHost } from './workload.ts';

const HEAD_DIM = 128;
const CHUNK = 64;
const BATCH = 32;
const PROMPT = 2048;
const SUFFIX = 256;
const SAMPLES = 12;

interface Method {
  readonly name: string;
  readonly seconds: number;
  readonly tokensPerSecond: number;
  readonly maxRelError: number;
}

export async function runPrefillBench(opts: BenchOptions): Promise<BenchReport> {
  // Llama3-8B attention heads (32 q, 8 kv); --quick keeps the GQA group (4) at 1/4 of the heads.
  const heads = opts.quick ? { q: 8, kv: 2 } : { q: 32, kv: 8 };
  const spec = attention({
    name: `prefill-bench-${heads.q}-${heads.kv}`,
    heads,
    headDim: HEAD_DIM,
    dtype: 'f16',
    chunkSize: CHUNK,
    targets: ['cpu'],
  });
  opts.progress(0, 5, 'building the module');
  const module = await buildModule(spec, { target: 'cpu' });
  const reps = opts.quick ? 2 : 3;
  const kvElems = heads.kv * HEAD_DIM;
  const qElems = heads.q * HEAD_DIM;
  const total = PROMPT + SUFFIX;
  const kv = randomHost(total * kvElems, 'bits', 7) as Uint16Array;
  const q = randomHost(BATCH * SUFFIX * qElems, 'bits', 11) as Uint16Array;
  // Suffix K/V of every sequence in extend order: token j of sequence i is position PROMPT + j.
  const suffixKv = new Uint16Array(BATCH * SUFFIX * kvElems);
  for (let i = 0; i < BATCH; i++) suffixKv.set(kv.subarray(PROMPT * kvElems), i * SUFFIX * kvElems);
  const suffixTokens = (i: number) => Array.from({ length: SUFFIX }, (_, j) => 2_000_000 + i * 1000 + j);

  // Sampled output rows (sequence, token) and their float64 reference.
  const picks = Array.from({ length: SAMPLES }, (_, s) => ({
    seq: (s * 11) % BATCH,
    token: s === 0 ? 0 : s === 1 ? SUFFIX - 1 : (s * 97) % SUFFIX,
  }));
  const kvValues = fromHost(kv, 'f16');
  const qValues = fromHost(q, 'f16');
  const reference = referenceDecode(
    { qHeads: heads.q, kvHeads: heads.kv, headDim: HEAD_DIM, softmaxScale: spec.softmaxScale },
    picks.map(({ seq, token }) => {
      const length = PROMPT + token + 1;
      const row = seq * SUFFIX + token;
      return {
        seq,
        q: qValues.subarray(row * qElems, (row + 1) * qElems),
        k: kvValues.subarray(0, length * kvElems),
        v: kvValues.subarray(0, length * kvElems),
        length,
      };
    }),
  );
  const errorOf = (rowOf: (seq: number, token: number) => Float32Array) =>
    Math.max(...picks.map(({ seq, token }, s) => relativeError(rowOf(seq, token), reference[s]!)));

  const capacity = BATCH * (total + 2 * CHUNK);
  const methods: Method[] = [];

  // Multi-query: with a shared prompt (two-phase), without (per-sequence), and without phase 1.
  const multi = [
    { name: 'two-phase multi-query', shared: true, mode: 'two-phase' },
    { name: 'per-sequence multi-query', shared: false, mode: 'two-phase' },
    { name: 'sequence-first multi-query', shared: true, mode: 'sequence-first' },
  ] as const;
  for (const [index, { name, shared, mode }] of multi.entries()) {
    opts.progress(1 + index, 5, name);
    // One query row per suffix token of every sequence; no sequence is longer than total.
    const attn = await Attention.create(module, {
      layers: 1,
      capacityTokens: capacity,
      mode,
      capacity: { rows: BATCH * SUFFIX, sequenceTokens: total },
    });
    try {
      const seqs = shared
        ? loadPrompts(attn, { batch: BATCH, sharedTokens: PROMPT, privateTokens: 0 }, kv)
        : loadPrompts(attn, { batch: BATCH, sharedTokens: 0, privateTokens: PROMPT }, kv);
      attn.extend(
        seqs,
        seqs.map((_, i) => suffixTokens(i)),
      );
      attn.writeDecodeKV(0, suffixKv, suffixKv);
      const out = new Uint16Array(BATCH * SUFFIX * qElems);
      attn.attend(0, q, out); // warm-up (plans the context)
      const times: number[] = [];
      for (let rep = 0; rep < reps; rep++) {
        const started = performance.now();
        attn.attend(0, q, out);
        times.push((performance.now() - started) / 1000);
      }
      const seconds = median(times);
      const values = fromHost(out, 'f16');
      methods.push({
        name,
        seconds,
        tokensPerSecond: (BATCH * SUFFIX) / seconds,
        maxRelError: errorOf((seq, token) => {
          const row = seq * SUFFIX + token;
          return values.subarray(row * qElems, (row + 1) * qElems);
        }),
      });
    } finally {
      attn.close();
    }
  }

  // n one-token decode steps over the shared prompt.
  opts.progress(4, 5, `${SUFFIX} one-token decode steps`);
  {
    const attn = await Attention.create(module, { layers: 1, capacityTokens: capacity, mode: 'two-phase' });
    try {
      const seqs = loadPrompts(attn, { batch: BATCH, sharedTokens: PROMPT, privateTokens: 0 }, kv);
      const stepQ = new Uint16Array(BATCH * qElems);
      const out = new Uint16Array(BATCH * qElems);
      const stepKv = new Uint16Array(BATCH * kvElems);
      const kept = new Map<string, Float32Array>();
      let seconds = 0;
      for (let j = 0; j < SUFFIX; j++) {
        attn.appendStep(
          seqs,
          seqs.map((_, i) => suffixTokens(i)[j]!),
        );
        for (let i = 0; i < BATCH; i++) {
          stepKv.set(kv.subarray((PROMPT + j) * kvElems, (PROMPT + j + 1) * kvElems), i * kvElems);
          stepQ.set(q.subarray((i * SUFFIX + j) * qElems, (i * SUFFIX + j + 1) * qElems), i * qElems);
        }
        attn.writeDecodeKV(0, stepKv, stepKv);
        attn.decode(0, stepQ, out); // plans the step's context
        const started = performance.now();
        attn.decode(0, stepQ, out);
        seconds += (performance.now() - started) / 1000;
        for (const { seq, token } of picks)
          if (token === j)
            kept.set(`${seq}/${token}`, fromHost(out.subarray(seq * qElems, (seq + 1) * qElems), 'f16'));
      }
      methods.push({
        name: `${SUFFIX} one-token decode steps`,
        seconds,
        tokensPerSecond: (BATCH * SUFFIX) / seconds,
        maxRelError: errorOf((seq, token) => kept.get(`${seq}/${token}`)!),
      });
    } finally {
      attn.close();
    }
  }
  opts.progress(5, 5, 'done');

  const [twoPhase, perSequence, sequenceFirst, steps] = methods as [Method, Method, Method, Method];
  const sharedSpeedup = perSequence.seconds / twoPhase.seconds;
  const decodeSpeedup = steps.seconds / twoPhase.seconds;
  const maxRelError = Math.max(...methods.map((m) => m.maxRelError));
  const fmt = (n: number) => (n >= 100 ? n.toFixed(0) : n.toPrecision(3));
  return {
    name: 'prefill',
    title: `prefill of a ${SUFFIX}-token suffix by ${BATCH} sequences sharing a ${PROMPT}-token prompt, cpu target (d=${HEAD_DIM}, ${heads.q} q / ${heads.kv} kv heads, c=${CHUNK}, f16, 1 layer)`,
    head: ['method', 'ms', 'tokens/s', 'vs two-phase', 'max rel. error'],
    rows: methods.map((m) => [
      m.name,
      fmt(m.seconds * 1000),
      fmt(m.tokensPerSecond),
      `${(m.seconds / twoPhase.seconds).toFixed(2)}×`,
      m.maxRelError.toExponential(2),
    ]),
    notes: [
      `Measured side by side in one process: attention calls only (median of ${reps} after a warm-up; each decode step timed once after an untimed call).`,
      `sharedSpeedup = per-sequence / two-phase = ${sharedSpeedup.toFixed(2)}×; decode steps / two-phase = ${decodeSpeedup.toFixed(2)}×.`,
      'With n query rows per sequence, the per-sequence baseline already stacks them in phase 1, so sharing saves K/V reads and memory, not arithmetic: expect sharedSpeedup near 1 on a compute-bound CPU.',
      `Errors: ${SAMPLES} sampled output rows of each method against float64 attention.`,
    ],
    json: {
      shape: {
        batch: BATCH,
        prompt: PROMPT,
        suffix: SUFFIX,
        heads,
        headDim: HEAD_DIM,
        chunkSize: CHUNK,
        dtype: 'f16',
      },
      sharedSpeedup,
      decodeSpeedup,
      maxRelError,
      tokensPerSecond: {
        twoPhase: twoPhase.tokensPerSecond,
        perSequence: perSequence.tokensPerSecond,
        sequenceFirst: sequenceFirst.tokensPerSecond,
        decodeSteps: steps.tokensPerSecond,
      },
      seconds: {
        twoPhase: twoPhase.seconds,
        perSequence: perSequence.seconds,
        sequenceFirst: sequenceFirst.seconds,
        decodeSteps: steps.seconds,
      },
    },
    chart: {
      title: 'prefill tokens/s by method (cpu target)',
      unit: 'tokens/s',
      series: [
        {
          label: 'tokens/s',
          values: methods.map((m) => ({ category: m.name, value: m.tokensPerSecond })),
        },
      ],
    },
  };
}
