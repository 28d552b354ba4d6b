// The shim costs memory instructions as a GPU serves them: shared-memory wavefronts (bank
// conflicts, 16-byte phases, broadcasts) and global 32-byte sectors per traffic category, with
// exact hand-computed counts, whatever the schedule; planted conflicts and uncoalesced reads cost
// more.

import { beforeAll, describe, expect, test } from 'vitest';
import {
  buildCucpuPrograms,
  type CheckResult,
  haveCudaHeaders,
  parseResults,
  runProgram,
} from '../runtime/cucpu/tools/test-harness.ts';

const schedules = [
  { label: 'CUCPU_ORDER=forward', env: { CUCPU_ORDER: 'forward' } },
  { label: 'CUCPU_ORDER=reverse CUCPU_WORKERS=3', env: { CUCPU_ORDER: 'reverse', CUCPU_WORKERS: '3' } },
  { label: 'CUCPU_ORDER=random CUCPU_SEED=5', env: { CUCPU_ORDER: 'random', CUCPU_SEED: '5' } },
] as const;

const runs = new Map<string, Map<string, CheckResult>>();

describe.skipIf(!haveCudaHeaders)('cucpu counts wavefronts and sectors', () => {
  beforeAll(async () => {
    const bins = await buildCucpuPrograms();
    for (const s of schedules) {
      const r = await runProgram(bins.get('test_memstats')!, [], s.env);
      if (r.exitCode !== 0 && r.exitCode !== 1)
        throw new Error(`test_memstats crashed (${s.label}):\n${r.stderr}`);
      runs.set(s.label, parseResults(r.stdout));
    }
  });

  test.each(schedules.map((s) => s.label))('every count is exact under %s', (label) => {
    const results = runs.get(label)!;
    expect(results.size).toBeGreaterThanOrEqual(19);
    for (const [name, r] of results) expect(r.ok, `${name}: ${JSON.stringify(r)}`).toBe(true);
  });

  test('a 32-way conflict costs 32 wavefronts, a 16-byte row read 4, a broadcast 1', () => {
    const r = runs.get(schedules[0].label)!;
    const perInstruction = (name: string) => {
      const x = r.get(`smem/${name}`)!;
      // 3 blocks x 4 warps x 6 reps, after the 768 one-wavefront stores of the fill.
      return ((x['wavefronts'] as number) - 768) / 72;
    };
    expect(perInstruction('u16_row_stride_256B')).toBe(32);
    expect(perInstruction('u128_two_rows')).toBe(4);
    expect(perInstruction('f32_broadcast')).toBe(1);
    expect(perInstruction('u64_stride1')).toBe(2);
  });

  test('an uncoalesced read has a lower sector efficiency', () => {
    const r = runs.get(schedules[0].label)!.get('global/uncoalesced_lower_efficiency')!;
    expect(r['coalesced']).toBe(1);
    expect(r['uncoalesced']).toBe(0.125);
  });
});
