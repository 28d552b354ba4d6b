// bench traffic: what one decode step moves, counted in the emu target (the CUDA source run by the
// cucpu shim), per partition mode: K/V, Q, partial (written and read back), output and context
// bytes through global memory, the shared-memory wavefronts per KB of K/V read (bank conflicts),
// and the sector efficiency of the K/V reads (coalescing). Counts, not times: the emulator says
// what a GPU would have to move, not how fast.
//
// Shapes (BENCHMARKS.md microkernel): b = 32 sequences sharing ns tokens, each with 64 private
// tokens, d = 128, c = 64, f16. Heads are scaled down to one KV head (G = 1: 1 query head; G = 4:
// 4 query heads) so the emulator finishes in seconds: every count scales linearly with the KV
// heads.

import { buildModule } from '../codegen/index.ts';
import { attention } from '../dsl/attention.ts';
import type { Partition } from '../dsl/spec.ts';
import { Attention } from '../runtime/attention.ts';
import { type KernelStats, sectorEfficiency, type TrafficCategory } from '../runtime/native-module.ts';
import type { BenchOptions, BenchReport } from './report.ts';
import { loadPrompts, randomHost } from './workload.ts';

const HEAD_DIM = 128;
const CHUNK = 64;
const BATCH = 32;
const PRIVATE = 64;
const MODES: readonly Partition[] = ['two-phase', 'chunk-first', 'sequence-first'];

export interface KernelTraffic {
  readonly launches: number;
  readonly smemWavefronts: number;
  readonly kvBytes: number;
  readonly smemWavefrontsPerKB: number;
  readonly kvSectorEfficiency: number;
}

export interface TrafficResult {
  readonly mode: Partition;
  /** The mode the module really ran (two-phase falls back to sequence-first without phase 1). */
  readonly ranAs: Partition | null;
  readonly sharedTokens: number;
  readonly group: number;
  readonly bytes: Readonly<Record<'kv' | 'q' | 'partialWritten' | 'partialRead' | 'out' | 'context', number>>;
  readonly uniqueKvBytes: number;
  readonly kvRatio: number;
  readonly totalRatio: number;
  readonly smemWavefrontsPerKB: number;
  readonly kvSectorEfficiency: number;
  readonly kernels: Readonly<Record<string, KernelTraffic>>;
  /** Why the mode did not run, when it did not. */
  readonly skipped?: string;
}

function shapes(quick: boolean): { ns: number; group: number }[] {
  const sizes = quick ? [1024] : [1024, 2048];
  return sizes.flatMap((ns) => [1, 4].map((group) => ({ ns, group })));
}

function figures(stats: KernelStats) {
  let wavefronts = 0;
  let kvRequested = 0;
  let kvSectors = 0;
  const kernels: Record<string, KernelTraffic> = {};
  for (const [name, k] of Object.entries(stats.kernels)) {
    wavefronts += k.smemWavefronts;
    kvRequested += k.requestedBytes.kv;
    kvSectors += k.sectors.kv;
    kernels[name] = {
      launches: k.launches,
      smemWavefronts: k.smemWavefronts,
      kvBytes: k.requestedBytes.kv,
      smemWavefrontsPerKB: k.requestedBytes.kv ? k.smemWavefronts / (k.requestedBytes.kv / 1024) : 0,
      kvSectorEfficiency: sectorEfficiency(k, 'kv'),
    };
  }
  return {
    kernels,
    smemWavefrontsPerKB: kvRequested ? wavefronts / (kvRequested / 1024) : 0,
    kvSectorEfficiency: kvSectors ? kvRequested / (32 * kvSectors) : 1,
  };
}

async function measure(mode: Partition, ns: number, group: number): Promise<TrafficResult> {
  const spec = attention({
    name: `traffic-g${group}`,
    heads: { q: group, kv: 1 },
    headDim: HEAD_DIM,
    dtype: 'f16',
    chunkSize: CHUNK,
    targets: ['emu'],
  });
  const module = await buildModule(spec, { target: 'emu' });
  const capacity = BATCH * (PRIVATE + 2 * CHUNK) + ns + CHUNK;
  const base = { mode, sharedTokens: ns, group };
  let attn: Attention;
  try {
    attn = await Attention.create(module, { layers: 1, capacityTokens: capacity, mode });
  } catch (e) {
    const zeros = { kv: 0, q: 0, partialWritten: 0, partialRead: 0, out: 0, context: 0 };
    return {
      ...base,
      ranAs: null,
      bytes: zeros,
      uniqueKvBytes: 0,
      kvRatio: 0,
      totalRatio: 0,
      smemWavefrontsPerKB: 0,
      kvSectorEfficiency: 0,
      kernels: {},
      skipped: (e as Error).message,
    };
  }
  try {
    const rowElems = HEAD_DIM; // one KV head
    const kv = randomHost((ns + PRIVATE) * rowElems, 'bits', 7);
    const seqs = loadPrompts(attn, { batch: BATCH, sharedTokens: ns, privateTokens: PRIVATE }, kv);
    const q = randomHost(BATCH * group * HEAD_DIM, 'bits', 11);
    const out = new Uint16Array(BATCH * group * HEAD_DIM);
    attn.module.resetStats();
    attn.decode(0, q, out, seqs);
    const stats = attn.stats().kernel;
    const read = (c: TrafficCategory) => stats.bytesRead[c];
    const bytes = {
      kv: read('kv'),
      q: read('q'),
      partialWritten: stats.bytesWritten.partial,
      partialRead: read('partial'),
      out: stats.bytesWritten.out,
      context: read('context'),
    };
    const uniqueKvBytes = (ns + BATCH * PRIVATE) * HEAD_DIM * 2 * 2;
    const qBytes = BATCH * group * HEAD_DIM * 2;
    const all = Object.values(bytes).reduce((a, b) => a + b, 0);
    return {
      ...base,
      ranAs: attn.mode,
      bytes,
      uniqueKvBytes,
      kvRatio: bytes.kv / uniqueKvBytes,
      totalRatio: all / (uniqueKvBytes + 2 * qBytes),
      ...figures(stats),
    };
  } finally {
    attn.close();
  }
}

export async function runTrafficBench(opts: BenchOptions): Promise<BenchReport> {
  const work = shapes(opts.quick).flatMap((s) => MODES.map((mode) => ({ ...s, mode })));
  const results: TrafficResult[] = [];
  for (const [i, w] of work.entries()) {
    opts.progress(i, work.length, `${w.mode} ns=${w.ns} G=${w.group}`);
    results.push(await measure(w.mode, w.ns, w.group));
  }
  opts.progress(work.length, work.length, 'done');
  const kb = (n: number) => (n / 1024).toFixed(0);
  return {
    name: 'traffic',
    title: `global traffic of one decode step, emu target (b=${BATCH}, ns shared + ${PRIVATE} private tokens, d=${HEAD_DIM}, c=${CHUNK}, f16, 1 KV head)`,
    head: [
      'mode',
      'ran as',
      'ns',
      'G',
      'K/V KiB',
      'Q KiB',
      'partial w/r KiB',
      'out KiB',
      'kvRatio',
      'totalRatio',
      'smem wavefronts/KB',
      'phase 1 / phase 2 wavefronts/KB',
      'K/V sector eff.',
    ],
    rows: results.map((r) =>
      r.skipped
        ? [r.mode, 'refused', r.sharedTokens, r.group, '', '', '', '', '', '', '', '', r.skipped.slice(0, 40)]
        : [
            r.mode,
            r.ranAs ?? '',
            r.sharedTokens,
            r.group,
            kb(r.bytes.kv),
            kb(r.bytes.q),
            `${kb(r.bytes.partialWritten)}/${kb(r.bytes.partialRead)}`,
            kb(r.bytes.out),
            r.kvRatio.toFixed(3),
            r.totalRatio.toFixed(3),
            r.smemWavefrontsPerKB.toFixed(1),
            ['decode_phase1', 'decode_phase2']
              .map((k) => r.kernels[k]?.smemWavefrontsPerKB.toFixed(1) ?? '-')
              .join(' / '),
            r.kvSectorEfficiency.toFixed(3),
          ],
    ),
    notes: [
      'Counted by the cucpu shim in one decode step; heads scaled down to 1 KV head (counts scale with KV heads).',
      'kvRatio = K/V bytes read / unique K/V bytes; totalRatio = all bytes moved / (unique K/V + Q + out).',
      'smem wavefronts/KB: shared-memory wavefronts (32 banks × 4 B) per KB of K/V read, all kernels and per kernel; sector eff. = requested / 32-byte sectors moved.',
      "Phase 1 stacks a run's sharers × G query heads into m-tiles of 128 rows (each chunk read once per m-tile); every warp of a tile (two m16 blocks up to d = 128 without a mask or score mod) reads the staged K/V from shared memory again, so its wavefronts per KB grow with the stacked rows.",
    ],
    json: {
      shape: {
        batch: BATCH,
        privateTokens: PRIVATE,
        headDim: HEAD_DIM,
        chunkSize: CHUNK,
        dtype: 'f16',
        kvHeads: 1,
      },
      results,
    },
    chart: {
      title: 'K/V bytes read / unique K/V bytes',
      unit: 'kvRatio',
      series: MODES.map((mode) => ({
        label: mode,
        values: results
          .filter((r) => r.mode === mode && !r.skipped)
          .map((r) => ({ category: `ns${r.sharedTokens} G${r.group}`, value: r.kvRatio })),
      })),
    },
  };
}
