// The CUDA-on-CPU shim runs real kernels right: reductions, warp and block primitives, atomics,
// flash-decoding split + combine against float64 attention, tensor-core GEMM in f16 and bf16
// against a plain matmul, every prims.cuh wrapper with exact byte counts, whatever the schedule.

import { beforeAll, describe, expect, test } from 'vitest';
import {
  buildCucpuPrograms,
  type CheckResult,
  haveCudaHeaders,
  parseResults,
  runProgram,
} from '../runtime/cucpu/tools/test-harness.ts';

const checks = [
  'reduce/block_reduce_sum',
  'reduce/smem_tree_reduce',
  'block/syncthreads_count_and_or',
  'warp/shuffles_votes_activemask',
  'atomics/add_max_min_cas',
  'decode/split_combine/B2_H2_T100_S3',
  'decode/split_combine/B5_H1_T257_S4_ragged',
  'decode/split_combine/B4_H2_T512_S8',
  'mma/tile_16x8x16_ldmatrix_x4_x2trans',
  'gemm/f16/64x64x32',
  'gemm/f16/128x128x256',
  'gemm/bf16/128x64x128',
  'prims/every_prim_values',
  'prims/traffic_exact_bytes',
  'prims/traffic_reset',
] as const;

const schedules = [
  { label: 'CUCPU_ORDER=forward', env: { CUCPU_ORDER: 'forward' } },
  { label: 'CUCPU_ORDER=reverse', env: { CUCPU_ORDER: 'reverse' } },
  { label: 'CUCPU_ORDER=random CUCPU_SEED=7', env: { CUCPU_ORDER: 'random', CUCPU_SEED: '7' } },
  { label: 'CUCPU_WORKERS=1', env: { CUCPU_WORKERS: '1' } },
  { label: 'CUCPU_WORKERS=3', env: { CUCPU_WORKERS: '3' } },
] as const;

const runs = new Map<string, Map<string, CheckResult>>();

describe.skipIf(!haveCudaHeaders)('cucpu runs CUDA kernels on the CPU', () => {
  beforeAll(async () => {
    const bins = await buildCucpuPrograms();
    const binary = bins.get('test_kernels')!;
    for (const s of schedules) {
      const r = await runProgram(binary, [], s.env);
      runs.set(s.label, parseResults(r.stdout));
      if (r.exitCode !== 0 && r.exitCode !== 1)
        throw new Error(`test_kernels crashed (${s.label}):\n${r.stderr}`);
    }
  });

  test.each(checks)('%s matches its reference', (name) => {
    const r = runs.get(schedules[0].label)!.get(name);
    expect(r, `no RESULT line for ${name}`).toBeDefined();
    expect(r!.error ?? null).toBeNull();
    expect(r, JSON.stringify(r)).toMatchObject({ ok: true });
  });

  test('decode matches float64 attention to 1e-5 and reads every K/V byte exactly once', () => {
    for (const [name, r] of runs.get(schedules[0].label)!) {
      if (!name.startsWith('decode/')) continue;
      expect(r['rel_err'] as number).toBeLessThan(1e-5);
      expect(r['kv_bytes']).toBe(r['kv_bytes_expected']);
    }
  });

  test('the byte counters see exactly what every_prim reads, per category', () => {
    const r = runs.get(schedules[0].label)!.get('prims/traffic_exact_bytes')!;
    expect(r).toMatchObject({
      q: 256,
      kv: 32 * (8 + 33),
      partial: 32 * 24,
      context: 32 * 17,
      out_written: 32 * 4 * 48,
      launches: 1,
    });
  });

  test.each(schedules.slice(1).map((s) => s.label))('every check passes under %s', (label) => {
    const results = runs.get(label)!;
    for (const name of checks) {
      const r = results.get(name);
      expect(r, `${name} under ${label}`).toBeDefined();
      expect(r!.ok, `${name} under ${label}: ${JSON.stringify(r)}`).toBe(true);
    }
  });
});
