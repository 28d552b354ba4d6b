// Every planted kernel bug is caught by the shim, at the line that has it, as a typed error that
// names the kernel; and the process keeps working: the next launch runs normally.

import { beforeAll, describe, expect, test } from 'vitest';
import {
  buildCucpuPrograms,
  type CheckResult,
  haveCudaHeaders,
  markerLine,
  parseResults,
  runProgram,
} from '../runtime/cucpu/tools/test-harness.ts';

const source = 'runtime/cucpu/tests/test_bugs.cpp';

// Bug name (also its `// BUG:` marker) -> the kind of error the shim must report.
const bugs = [
  ['divergent_barrier', 'divergent-barrier'],
  ['shfl_source_outside_mask', 'mask'],
  ['lane_not_in_mask', 'mask'],
  ['shfl_after_half_warp_exit', 'exited-lane'],
  ['mma_after_exit', 'exited-lane'],
  ['syncwarp_waits_for_exited', 'exited-lane'],
  ['mismatched_collectives', 'deadlock'],
  ['barrier_deadlock', 'deadlock'],
  ['ldmatrix_misaligned', 'misaligned'],
  ['ldg_misaligned', 'misaligned'],
  ['cp_async_misaligned', 'misaligned'],
  ['trap_in_one_thread', 'trap'],
  ['fails_from_block_3', 'exited-lane'],
] as const;

const invalid = ['empty_block', 'block_too_large', 'dynamic_smem_too_large', 'bad_cucpu_order'] as const;
const orders = ['forward', 'reverse', 'random'] as const;
const runs = new Map<string, Map<string, CheckResult>>();

function result(order: string, name: string): CheckResult {
  const r = runs.get(order)!.get(name);
  if (!r) throw new Error(`no RESULT line for ${name} under CUCPU_ORDER=${order}`);
  return r;
}

describe.skipIf(!haveCudaHeaders)('cucpu catches kernel bugs', () => {
  beforeAll(async () => {
    const bins = await buildCucpuPrograms();
    for (const order of orders) {
      const r = await runProgram(bins.get('test_bugs')!, [], { CUCPU_ORDER: order });
      if (r.exitCode !== 0 && r.exitCode !== 1) throw new Error(`test_bugs crashed (${order}):\n${r.stderr}`);
      runs.set(order, parseResults(r.stdout));
    }
  });

  test.each(bugs)('%s is reported as %s at its line, and the next launch works', (name, kind) => {
    const r = result('forward', `bug/${name}`);
    const line = markerLine(source, name);
    expect(r.error, JSON.stringify(r)).toMatchObject({ kind, kernel: name, line });
    expect(r.error!.file.endsWith('test_bugs.cpp')).toBe(true);
    expect(r.error!.column).toBeGreaterThan(0);
    expect(r.error!.message).toContain(`test_bugs.cpp:${line}:`);
    expect(r['recovered']).toBe(true);
  });

  test('a kernel exception becomes an error naming the thread, not a crash', () => {
    const r = result('forward', 'bug/exception_escapes');
    expect(r.error).toMatchObject({ kind: 'exception', kernel: 'exception_escapes', thread: [3, 0, 0] });
    expect(r.error!.message).toContain('std::out_of_range: index 99 of 4');
    expect(r['recovered']).toBe(true);
  });

  test('with many failing blocks, the error names the lowest one', () => {
    expect(result('forward', 'bug/fails_from_block_3').error!.block).toEqual([3, 0, 0]);
  });

  test.each(invalid)('invalid launch %s is refused with a reason', (name) => {
    const r = result('forward', `bug/invalid/${name}`);
    expect(r.error).toMatchObject({ kind: 'invalid-launch', kernel: 'good_sum', line: 0 });
    expect(r['recovered']).toBe(true);
  });

  test('50 failed launches in a row leave the shim working', () => {
    expect(result('forward', 'recovery/50_failed_launches_then_good')).toMatchObject({
      caught: 50,
      recovered: true,
      ok: true,
    });
  });

  test('silent bugs show: stale cp.async data, NaN-filled shared memory, order-dependent races', () => {
    expect(result('forward', 'silent/cp_async_read_before_wait')).toMatchObject({ stale: true, ok: true });
    expect(result('forward', 'silent/smem_read_before_write_is_nan')).toMatchObject({ nan: true, ok: true });
    expect(result('forward', 'silent/missing_syncthreads_depends_on_order').ok).toBe(true);
  });

  test.each(orders.slice(1))('the diagnostics do not depend on the schedule (CUCPU_ORDER=%s)', (order) => {
    for (const [name, kind] of bugs) {
      const a = result('forward', `bug/${name}`).error!;
      const b = result(order, `bug/${name}`).error!;
      expect({ name, kind: b.kind, file: b.file, line: b.line, column: b.column, block: b.block }).toEqual({
        name,
        kind,
        file: a.file,
        line: a.line,
        column: a.column,
        block: a.block,
      });
    }
  });
});
