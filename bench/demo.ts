// chunkattn demo: a shared-system-prompt workload through the real runtime, on the cpu target
// (timed) or the emu target (the CUDA kernels run by the cucpu shim: counted, small shapes).
// 32 sequences share a 2048-token prompt and each adds a unique 64-token suffix; both modes
// decode the same steps side by side, and sampled steps are checked against float64 attention.

import { buildModule } from '../codegen/index.ts';
import { attention } from '../dsl/attention.ts';
import type { KernelSpec, Partition } from '../dsl/spec.ts';
import { Attention, type RuntimeTarget } from '../runtime/attention.ts';
import { fromHost } from '../runtime/half.ts';
import { bytesPerChunk, type KvShape } from '../runtime/kv-stats.ts';
import { referenceDecode, relativeError } from '../runtime/reference.ts';
import { loadPrompts, randomHost } from './workload.ts';

export interface DemoOptions {
  readonly batch: number;
  readonly sharedTokens: number;
  readonly suffixTokens: number;
  readonly steps: number;
  readonly heads: number;
  readonly target: RuntimeTarget;
  readonly progress: (done: number, total: number, label: string) => void;
}

export const DEMO_DEFAULTS = {
  batch: 32,
  sharedTokens: 2048,
  suffixTokens: 64,
  steps: 256,
  // Llama2-7B's 32 heads: with fewer, the shared prompt fits in the CPU's last-level cache and
  // the sequence-first baseline rereads it from there, which no real model gets.
  heads: 32,
} as const;

/**
 * The emu target runs the CUDA source instruction by instruction on the CPU, thousands of times
 * slower than a GPU: its demo is small, and it reports counted K/V bytes instead of a speed.
 */
export const EMU_DEMO_DEFAULTS = {
  batch: 8,
  sharedTokens: 256,
  suffixTokens: 16,
  steps: 8,
  heads: 2,
} as const;

export function demoDefaults(target: RuntimeTarget): typeof DEMO_DEFAULTS | typeof EMU_DEMO_DEFAULTS {
  return target === 'emu' ? EMU_DEMO_DEFAULTS : DEMO_DEFAULTS;
}

/** What the emu target counted per mode over all decode steps (zeros elsewhere). */
export interface DemoCounts {
  /** K/V bytes the decode kernels read from global memory. */
  readonly kvBytesRead: number;
  /** Launches of the phase-1 (chunk-first, tensor-core) kernel. */
  readonly phase1Launches: number;
}

export interface DemoResult {
  readonly target: RuntimeTarget;
  /** The partition each runtime really ran (two-phase falls back when a module has no phase 1). */
  readonly ranAs: Readonly<Record<'two-phase' | 'sequence-first', Partition>>;
  readonly shape: {
    readonly heads: number;
    readonly headDim: number;
    readonly chunkSize: number;
    readonly dtype: string;
  };
  readonly memory: {
    readonly storedBytes: number;
    readonly unsharedBytes: number;
    readonly savedPercent: number;
    readonly llama2Scale: { readonly storedGiB: number; readonly unsharedGiB: number };
  };
  /** Decode token rate; on emu that of the emulator, not of any GPU. */
  readonly tokensPerSecond: Readonly<Record<Partition, number>>;
  readonly speedup: number;
  /** Counted on emu only (null on cpu and cuda). */
  readonly counts: Readonly<Record<'two-phase' | 'sequence-first', DemoCounts>> | null;
  readonly maxRelativeError: Readonly<Record<Partition, number>>;
  readonly tolerance: number;
  readonly sampledSteps: readonly number[];
}

const HEAD_DIM = 128;
const CHUNK = 64;
const LLAMA2_7B: KvShape = { layers: 32, kvHeads: 32, headDim: 128, dtypeBytes: 2 };

/** The demo's kernel: Llama2-7B attention (d = 128, f16, chunk 64) with `heads` heads. */
export function demoSpec(heads: number, target: RuntimeTarget = 'cpu'): KernelSpec {
  return attention({
    name: `demo-${heads}h`,
    heads: { q: heads, kv: heads },
    headDim: HEAD_DIM,
    dtype: 'f16',
    chunkSize: CHUNK,
    // cuda builds for the archs of this spec; the cpu and emu names are their own targets.
    targets: target === 'cuda' ? ['sm_80', 'sm_90a'] : [target],
  });
}

export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const { batch, sharedTokens, suffixTokens, steps, heads, target } = options;
  const spec = demoSpec(heads, target);
  // A first run builds the kernel: codegen announces it and draws its own spinner.
  const module = await buildModule(spec, { target });
  const capacity = sharedTokens + batch * (suffixTokens + steps + 2 * CHUNK);
  const modes: Partition[] = ['two-phase', 'sequence-first'];
  const runtimes = await Promise.all(
    modes.map((mode) => Attention.create(module, { layers: 1, capacityTokens: capacity, mode })),
  );
  try {
    const rowElems = heads * HEAD_DIM;
    const promptLength = sharedTokens + suffixTokens;
    // KV of the prompts: every sequence's token t of the shared prefix gets the same rows.
    const promptKv = randomHost((promptLength + steps) * rowElems, 'bits', 3);
    const seqs = runtimes.map((attn) =>
      loadPrompts(attn, { batch, sharedTokens, privateTokens: suffixTokens }, promptKv),
    );
    const sampled = new Set([1, Math.round(steps / 2), steps]);
    const stepHistory: Float32Array[] = [];
    const seconds = runtimes.map(() => 0);
    const maxError = runtimes.map(() => 0);
    const counted = runtimes.map(() => ({ kvBytesRead: 0, phase1Launches: 0 }));
    const out = runtimes.map(() => new Uint16Array(batch * rowElems));
    for (let step = 1; step <= steps; step++) {
      if (step % 8 === 0 || step === 1) options.progress(step, steps, `decode step ${step}/${steps}`);
      const stepKv = randomHost(batch * rowElems, 'bits', 100 + step);
      stepHistory.push(fromHost(stepKv, 'f16'));
      const q = randomHost(batch * rowElems, 'bits', 10_000 + step);
      runtimes.forEach((attn, m) => {
        attn.appendStep(
          seqs[m]!,
          seqs[m]!.map(() => 7),
        );
        attn.writeDecodeKV(0, stepKv, stepKv);
        attn.module.resetStats(); // both runtimes share the module and its counters
        out[m]!.fill(0x7e00); // f16 NaN: a row the kernel does not write fails the check
        const started = performance.now();
        attn.decode(0, q, out[m]);
        seconds[m]! += (performance.now() - started) / 1000;
        const stats = attn.module.stats();
        counted[m]!.kvBytesRead += stats.bytesRead.kv;
        counted[m]!.phase1Launches += stats.kernels['decode_phase1']?.launches ?? 0;
      });
      if (sampled.has(step)) {
        options.progress(step, steps, `checking step ${step} against float64 attention`);
        const reference = referenceForStep(runtimes[0]!, seqs[0]!, q, promptKv, promptLength, stepHistory);
        runtimes.forEach((_, m) => {
          const got = fromHost(out[m]!, 'f16');
          maxError[m] = Math.max(maxError[m]!, relativeError(got, reference));
        });
      }
    }
    options.progress(steps, steps, 'done');
    const { chunksInUse } = runtimes[0]!.stats();
    const unsharedChunks = batch * Math.ceil((promptLength + steps) / CHUNK);
    const demoChunkBytes = bytesPerChunk(
      { layers: 1, kvHeads: heads, headDim: HEAD_DIM, dtypeBytes: 2 },
      CHUNK,
    );
    const llamaChunkBytes = bytesPerChunk(LLAMA2_7B, CHUNK);
    return {
      target,
      ranAs: { 'two-phase': runtimes[0]!.mode, 'sequence-first': runtimes[1]!.mode },
      shape: { heads, headDim: HEAD_DIM, chunkSize: CHUNK, dtype: 'f16' },
      memory: {
        storedBytes: chunksInUse * demoChunkBytes,
        unsharedBytes: unsharedChunks * demoChunkBytes,
        savedPercent: 100 * (1 - chunksInUse / unsharedChunks),
        llama2Scale: {
          storedGiB: (chunksInUse * llamaChunkBytes) / 2 ** 30,
          unsharedGiB: (unsharedChunks * llamaChunkBytes) / 2 ** 30,
        },
      },
      tokensPerSecond: {
        'two-phase': (steps * batch) / seconds[0]!,
        'sequence-first': (steps * batch) / seconds[1]!,
        'chunk-first': 0,
      },
      speedup: seconds[1]! / seconds[0]!,
      counts: target === 'emu' ? { 'two-phase': counted[0]!, 'sequence-first': counted[1]! } : null,
      maxRelativeError: { 'two-phase': maxError[0]!, 'sequence-first': maxError[1]!, 'chunk-first': 0 },
      tolerance: 2e-3,
      sampledSteps: [...sampled],
    };
  } finally {
    for (const attn of runtimes) attn.close();
  }
}

/** Float64 attention for every sequence at a step, from the same KV the runtime stored. */
function referenceForStep(
  attn: Attention,
  seqs: readonly number[],
  q: Uint16Array | Float32Array,
  promptKv: Uint16Array | Float32Array,
  promptLength: number,
  stepHistory: readonly Float32Array[],
): Float64Array {
  const rowElems = attn.spec.heads.kv * attn.spec.headDim;
  const prompt = fromHost(promptKv, 'f16').subarray(0, promptLength * rowElems);
  const qf = fromHost(q, 'f16');
  const qElems = attn.spec.heads.q * attn.spec.headDim;
  const length = promptLength + stepHistory.length;
  const rows = seqs.map((seq, i) => {
    const k = new Float32Array(length * rowElems);
    k.set(prompt, 0); // loadPrompts gives token position p row p of promptKv in every sequence
    for (const [s, stepKv] of stepHistory.entries())
      k.set(stepKv.subarray(i * rowElems, (i + 1) * rowElems), (promptLength + s) * rowElems);
    return { seq, q: qf.subarray(i * qElems, (i + 1) * qElems), k, v: k, length };
  });
  const shape = {
    qHeads: attn.spec.heads.q,
    kvHeads: attn.spec.heads.kv,
    headDim: attn.spec.headDim,
    softmaxScale: attn.spec.softmaxScale,
  };
  const out = new Float64Array(seqs.length * qElems);
  for (const [i, r] of referenceDecode(shape, rows).entries()) out.set(r, i * qElems);
  return out;
}
