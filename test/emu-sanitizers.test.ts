// The CUDA decode kernel, built for the emu target with a sanitizer, runs a random workload in a
// node process that has the sanitizer runtime preloaded (test/fixtures/sanitized-decode.ts).
// Small shapes; several shim workers so TSan sees blocks run concurrently.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { expect, test } from 'vitest';
import { buildModule } from '../codegen/index.ts';
import { tinySpec } from './specs.ts';

const REPO = join(import.meta.dirname, '..');

const runtimeLibrary = (name: string) =>
  execa('g++', [`-print-file-name=${name}`]).then((r) => r.stdout.trim());

const SANITIZERS = {
  address: {
    flag: '-fsanitize=address,undefined',
    symbol: /__asan_/,
    libraries: ['libasan.so', 'libubsan.so'],
    env: { ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=0', UBSAN_OPTIONS: 'halt_on_error=1' },
    report: /AddressSanitizer|runtime error:/,
  },
  thread: {
    flag: '-fsanitize=thread',
    symbol: /__tsan_/,
    libraries: ['libtsan.so'],
    env: {
      TSAN_OPTIONS: `halt_on_error=1 ignore_noninstrumented_modules=1 suppressions=${join(REPO, 'test', 'fixtures', 'tsan-node.supp')}`,
    },
    report: /ThreadSanitizer/,
  },
} as const;

for (const [sanitize, s] of Object.entries(SANITIZERS) as [
  keyof typeof SANITIZERS,
  (typeof SANITIZERS)[keyof typeof SANITIZERS],
][]) {
  test(`the CUDA decode kernel runs clean under ${s.flag} on the emu target (small shapes)`, async () => {
    const module = await buildModule(tinySpec('f16', 'plain', ['emu']), { target: 'emu', sanitize });
    expect(module.manifest.sanitize).toBe(sanitize);
    expect(module.manifest.buildCommand).toContain(s.flag);
    expect(readFileSync(join(module.dir, 'build.log'), 'utf8')).toContain(s.flag);
    // The library really is instrumented (it calls into the sanitizer runtime).
    const { stdout: symbols } = await execa('nm', ['-D', module.libraryPath]);
    expect(symbols).toMatch(s.symbol);

    const preload = (await Promise.all(s.libraries.map(runtimeLibrary))).join(' ');
    const seed = Math.floor(Math.random() * 2 ** 31);
    const fixture = join(REPO, 'test', 'fixtures', 'sanitized-decode.ts');
    const result = await execa('node', ['--import', 'tsx', fixture, module.libraryPath, String(seed)], {
      cwd: REPO,
      reject: false,
      env: { LD_PRELOAD: preload, CUCPU_WORKERS: '4', CUCPU_ORDER: 'random', ...s.env },
    });
    const output = `${result.stdout}\n${result.stderr}`;
    expect(output, `seed ${seed}`).not.toMatch(s.report);
    expect(result.exitCode, output).toBe(0);
    const summary = JSON.parse(String(result.stdout).trim().split('\n').at(-1)!) as {
      decodes: number;
      maxError: number;
      phase1Launches: number;
    };
    expect(summary.decodes).toBeGreaterThan(2);
    expect(summary.phase1Launches).toBeGreaterThan(0); // the shared runs went through phase 1
    expect(summary.maxError).toBeLessThanOrEqual(2e-3);
  });
}
