// Emu modules as the project builds them (g++ + shim, -fPIC -shared, dlopened): kernel templates
// using the `smem` arena run, two modules live in one process, and a failed launch in one returns
// an error while both keep working.

import { beforeAll, describe, expect, test } from 'vitest';
import {
  buildCucpuPrograms,
  type CheckResult,
  haveCudaHeaders,
  markerLine,
  parseResults,
  type RunResult,
  runProgram,
  type ShimError,
} from '../runtime/cucpu/tools/test-harness.ts';

const moduleSource = 'runtime/cucpu/tests/test_module.cu';
let run: RunResult;
let results: Map<string, CheckResult>;

describe.skipIf(!haveCudaHeaders)('cucpu inside dlopened modules', () => {
  beforeAll(async () => {
    const bins = await buildCucpuPrograms();
    run = await runProgram(bins.get('module_host')!, [
      bins.get('test_module_1.so')!,
      bins.get('test_module_2.so')!,
    ]);
    results = parseResults(run.stdout);
  });

  test('two modules load and run their kernel templates, good and failing launches interleaved', () => {
    expect(run.stderr).toBe('');
    expect(results.size).toBe(9);
    expect([...results.values()].filter((r) => !r.ok)).toEqual([]);
    expect(run.exitCode).toBe(0);
  });

  test('the byte counters work inside a module', () => {
    for (const id of [1, 2]) expect(results.get(`module/good/${id}/1`)).toMatchObject({ kv_bytes: 256 });
  });

  test('a deadlock inside a module comes back as an error naming the kernel and line', () => {
    const errors = run.stdout
      .split('\n')
      .filter((l) => l.startsWith('ERROR '))
      .map((l) => JSON.parse(l.slice(6)) as ShimError);
    expect(errors).toHaveLength(4);
    for (const e of errors)
      expect(e).toMatchObject({
        kind: 'deadlock',
        kernel: 'deadlocks',
        line: markerLine(moduleSource, 'module_deadlock'),
      });
  });
});
