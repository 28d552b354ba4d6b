import { describe, expect, test } from 'vitest';
import type { DType, Partition } from '../dsl/spec.ts';
import { Attention } from '../index.ts';
import { tinySpec } from './specs.ts';
import { Rng, runRandomWorkload, WorkloadModel } from './workload-model.ts';

const SEED = Number(process.env.CHUNKATTN_SEED ?? Math.floor(Math.random() * 2 ** 31));

describe(`decode matches float64 attention on random workloads (fork, append, release; seed ${SEED})`, () => {
  const cases: [DType, 'plain' | 'softcap-window', Partition][] = [
    ['f32', 'plain', 'two-phase'],
    ['f16', 'plain', 'two-phase'],
    ['bf16', 'plain', 'two-phase'],
    ['f16', 'plain', 'sequence-first'],
    ['f32', 'plain', 'chunk-first'],
    ['bf16', 'softcap-window', 'two-phase'],
    ['f32', 'softcap-window', 'sequence-first'],
  ];
  test.each(cases)('cpu target, %s, %s, %s', async (dtype, variant, mode) => {
    const spec = tinySpec(dtype, variant, ['cpu']);
    const attn = await Attention.create(spec, { layers: 2, capacityTokens: 16 * 160, target: 'cpu', mode });
    try {
      expect(attn.mode).toBe(mode);
      const model = new WorkloadModel(attn, spec, new Rng(SEED));
      runRandomWorkload(model, 60);
      expect(model.decodes).toBeGreaterThan(10);
    } finally {
      attn.close();
    }
  });
});

describe(`the CUDA source on the CPU (emu target) matches float64 attention (seed ${SEED})`, () => {
  const cases: [DType, 'plain' | 'softcap-window', string][] = [
    ['f16', 'plain', 'forward'],
    ['bf16', 'softcap-window', 'forward'],
    ['f16', 'plain', 'random'],
    ['bf16', 'plain', 'reverse'],
  ];
  test.each(cases)('emu target, %s, %s, CUCPU_ORDER=%s', async (dtype, variant, order) => {
    const spec = tinySpec(dtype, variant, ['emu']);
    const saved = process.env.CUCPU_ORDER;
    process.env.CUCPU_ORDER = order;
    const attn = await Attention.create(spec, { layers: 1, capacityTokens: 16 * 160, target: 'emu' });
    try {
      // Shared runs go through the phase-1 CUDA kernel (the workload's shared prompts and forks).
      expect(attn.mode).toBe('two-phase');
      const model = new WorkloadModel(attn, spec, new Rng(SEED + 1));
      runRandomWorkload(model, 40);
      expect(model.decodes).toBeGreaterThan(5);
    } finally {
      attn.close();
      if (saved === undefined) delete process.env.CUCPU_ORDER;
      else process.env.CUCPU_ORDER = saved;
    }
  });
});
