// The shim works under the sanitizers: with every CUDA thread a fiber, AddressSanitizer catches
// out-of-bounds and use-after-free accesses in kernels at their line, ThreadSanitizer finds the
// planted data races at their line and reports none on correct kernels, and failed launches
// unwind cleanly under both.

import { beforeAll, describe, expect, test } from 'vitest';
import {
  buildCucpuPrograms,
  haveCudaHeaders,
  markerLine,
  parseResults,
  type RunResult,
  reportLines,
  runProgram,
} from '../runtime/cucpu/tools/test-harness.ts';

const asanSource = 'runtime/cucpu/tests/test_asan.cpp';
const tsanSource = 'runtime/cucpu/tests/test_tsan.cpp';
const asanEnv = { ASAN_OPTIONS: 'detect_leaks=0', UBSAN_OPTIONS: 'print_stacktrace=1' };
// Two workers: blocks of one launch run on two OS threads at once, as by default.
const tsanEnv = { TSAN_OPTIONS: 'halt_on_error=0 exitcode=66', CUCPU_WORKERS: '2' };

// Case (and its `// BUG:` marker) -> the report that must name the marked line.
const asanCases = [
  ['global_oob', 'AddressSanitizer: heap-buffer-overflow'],
  ['ldg_oob', 'AddressSanitizer: heap-buffer-overflow'],
  ['cp_async_oob', 'AddressSanitizer: heap-buffer-overflow'],
  ['dynamic_shared_oob', 'AddressSanitizer: use-after-poison'],
  ['static_shared_oob', 'runtime error: index 64 out of bounds'],
  ['stack_oob', 'AddressSanitizer: stack-buffer-overflow'],
  ['use_after_free', 'AddressSanitizer: heap-use-after-free'],
] as const;
const tsanCases = ['racy_smem', 'racy_global', 'racy_cp_async'] as const;

const bins = new Map<string, string>();
const asanRuns = new Map<string, RunResult>();
const tsanRuns = new Map<string, RunResult>();

function races(r: RunResult): string[] {
  return r.stderr
    .split('==================')
    .filter((block) => block.includes('WARNING: ThreadSanitizer: data race'));
}

describe.skipIf(!haveCudaHeaders)('cucpu under AddressSanitizer and ThreadSanitizer', () => {
  beforeAll(async () => {
    for (const [k, v] of await buildCucpuPrograms()) bins.set(k, v);
    for (const [name] of [...asanCases, ['none']])
      asanRuns.set(name, await runProgram(bins.get('test_asan')!, [name], asanEnv));
    for (const name of [...tsanCases, 'recover'])
      tsanRuns.set(name, await runProgram(bins.get('test_tsan')!, [name], tsanEnv));
  });

  describe('AddressSanitizer + UBSan', () => {
    test.each(asanCases)('%s: %s at the marked line', (name, report) => {
      const r = asanRuns.get(name)!;
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toContain(report);
      // The first frame in the test source is the marked line.
      expect(reportLines(r.stderr, 'test_asan.cpp')[0]).toBe(markerLine(asanSource, name));
    });

    test('a correct launch produces no report', () => {
      const r = asanRuns.get('none')!;
      expect(r.stderr).not.toMatch(/Sanitizer|runtime error/);
      expect(r.stdout).toContain('finished without report: none (ok)');
      expect(r.exitCode).toBe(0);
    });

    test('the kernel suite (small shapes) is clean and correct', async () => {
      const r = await runProgram(bins.get('test_kernels_asan')!, ['--small'], asanEnv);
      expect(r.stderr).not.toMatch(/Sanitizer|runtime error/);
      const failed = [...parseResults(r.stdout).values()].filter((c) => !c.ok);
      expect(failed).toEqual([]);
      expect(r.exitCode).toBe(0);
    });

    test('failed launches unwind their fibers cleanly: no report, no leak, next launch right', async () => {
      const r = await runProgram(bins.get('test_asan')!, ['recover'], {
        ...asanEnv,
        ASAN_OPTIONS: 'detect_leaks=1',
      });
      expect(r.stderr).not.toMatch(/Sanitizer|runtime error/);
      expect(r.stdout).toContain('caught 20 of 20 failed launches; sum after them: 128');
      expect(r.exitCode).toBe(0);
    });
  });

  describe('ThreadSanitizer', () => {
    test.each(tsanCases)('%s: the race is reported at the marked line', (name) => {
      const r = tsanRuns.get(name)!;
      const reports = races(r);
      expect(reports.length, r.stderr).toBeGreaterThan(0);
      expect(r.exitCode).toBe(66);
      const line = markerLine(tsanSource, name);
      expect(
        reports.some((report) => reportLines(report, 'test_tsan.cpp').includes(line)),
        reports[0],
      ).toBe(true);
    });

    test('0 races on the correct kernels (small shapes), results still right', async () => {
      const r = await runProgram(bins.get('test_kernels_tsan')!, ['--small'], tsanEnv, 300_000);
      expect(races(r)).toEqual([]);
      expect(r.stderr).not.toContain('ThreadSanitizer');
      expect([...parseResults(r.stdout).values()].filter((c) => !c.ok)).toEqual([]);
      expect(r.exitCode).toBe(0);
    });

    test('0 races after a deadlocked launch is unwound, and the next launch is right', () => {
      const r = tsanRuns.get('recover')!;
      expect(r.stderr).not.toContain('ThreadSanitizer');
      expect(r.stdout).toContain('deadlock caught: yes; sum after it: 1024');
      expect(r.exitCode).toBe(0);
    });
  });
});
