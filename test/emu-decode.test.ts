import { afterAll, describe, expect, test } from 'vitest';
import { Attention } from '../index.ts';
import { EmuShapeRuntimes } from './emu-runtimes.ts';
import { EMU_CONFIGS, emuTrafficSpec } from './specs.ts';
import { Rng, WorkloadModel } from './workload-model.ts';

const SEED = Number(process.env.CHUNKATTN_SEED ?? Math.floor(Math.random() * 2 ** 31));

type Pattern = 'none' | 'all' | 'nested' | 'groups';

const runtimes = new EmuShapeRuntimes(64 * 1024);
const runtimeFor = (index: number) => runtimes.get(index);

afterAll(() => runtimes.closeAll());

/** Prompt lengths around chunk edges: 0, 1, c−1, c, c+1, and a few chunks. */
function edgeLength(rng: Rng, c: number): number {
  return rng.pick([0, 1, c - 1, c, c + 1, 2 * c + rng.int(c), 3 * c]);
}

function prompts(rng: Rng, pattern: Pattern, batch: number, c: number): number[][] {
  const shared = Array.from({ length: 2 * c + rng.int(2 * c) }, () => rng.int(50));
  const tail = () => Array.from({ length: edgeLength(rng, c) }, () => 100 + rng.int(50));
  return Array.from({ length: batch }, (_, i) => {
    switch (pattern) {
      case 'none':
        return [1000 + i, ...tail()];
      case 'all':
        return [...shared, ...tail()];
      case 'nested': // three levels: shared root, 2 branches of c+ tokens, leaves
        return [
          ...shared,
          ...Array.from({ length: c + 3 }, () => 500 + (i % 2)),
          ...(i % 4 < 2 ? [7, 7] : []),
          ...tail(),
        ];
      default: // groups
        return [...Array.from({ length: c + 1 }, () => 300 + (i % 5)), ...tail()];
    }
  });
}

describe(`the sequence-first CUDA kernel on the emu target matches float64 on 20 random shapes (seed ${SEED})`, () => {
  const rng = new Rng(SEED);
  const shapes = Array.from({ length: 20 }, (_, i) => ({
    id: i,
    config: i % EMU_CONFIGS.length,
    batch: rng.pick([1, 2, 17, 33, i === 7 ? 129 : 2]),
    pattern: rng.pick<Pattern>(['none', 'all', 'nested', 'groups']),
    order: i % 2 === 0 ? 'forward' : 'random',
  }));
  test.each(shapes)(
    'shape $id: config $config, batch $batch, sharing $pattern, CUCPU_ORDER=$order',
    async (shape) => {
      const { attn, spec } = await runtimeFor(shape.config);
      const shapeRng = new Rng(SEED + shape.id);
      const model = new WorkloadModel(attn, spec, shapeRng);
      const saved = process.env.CUCPU_ORDER;
      process.env.CUCPU_ORDER = shape.order;
      try {
        const seqs = prompts(shapeRng, shape.pattern, shape.batch, spec.chunkSize).map((p) =>
          model.insert(p),
        );
        model.step(seqs); // poisons the output, decodes, compares with float64 attention
        model.step([...seqs].reverse());
        expect(model.decodes).toBe(2);
      } finally {
        for (const seq of [...model.seqs.keys()]) model.release(seq);
        attn.cache.evict();
        process.env.CUCPU_ORDER = saved;
        if (saved === undefined) delete process.env.CUCPU_ORDER;
      }
    },
  );
});

describe('bytes moved through global memory (counted by the prims wrappers on the emu target)', () => {
  test('a decode reads each K/V byte of every sequence once, Q once, and writes the output once', async () => {
    const spec = emuTrafficSpec();
    const attn = await Attention.create(spec, { layers: 1, capacityTokens: 4096, target: 'emu' });
    try {
      const model = new WorkloadModel(attn, spec, new Rng(SEED));
      const lengths = [1, 15, 16, 17, 40, 100];
      const seqs = lengths.map((n, i) =>
        model.insert(Array.from({ length: n }, (_, t) => (i * 1000 + t) % 977)),
      );
      attn.appendStep(
        seqs,
        seqs.map(() => 1),
      );
      const kv = new Uint16Array(seqs.length * 2 * 64);
      attn.writeDecodeKV(0, kv, kv);
      attn.module.resetStats();
      attn.decode(0, new Uint16Array(seqs.length * 8 * 64));
      const stats = attn.module.stats();
      const tokens = lengths.reduce((sum, n) => sum + n + 1, 0);
      expect(stats.bytesRead.kv).toBe(tokens * 2 /* kv heads */ * 64 * 2 /* bytes */ * 2 /* K and V */);
      expect(stats.bytesRead.q).toBe(seqs.length * 8 * 64 * 2);
      expect(stats.bytesWritten.out).toBe(seqs.length * 8 * 64 * 2);
      // 6 rows x 2 KV heads cannot fill the GPU the emu target plans for, but every row here is
      // shorter than one split's minimum, so decode does not split the KV: phase 2 writes the
      // output directly, with no merge launch and no partial traffic.
      expect(stats.bytesRead.partial).toBe(0);
      expect(stats.bytesWritten.partial).toBe(0);
      expect(stats.kernels['decode_phase2']?.launches).toBe(1);
      expect(stats.kernels['decode_merge_splits']).toBeUndefined();
      expect(stats.launches).toBe(1);
    } finally {
      attn.close();
    }
  });
});
