import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { expect, test } from 'vitest';
import { buildModule } from '../codegen/index.ts';
import { tinySpec } from './specs.ts';

const REPO = join(import.meta.dirname, '..');

test('the CUDA decode kernel runs clean under ASan + UBSan on the emu target (small shapes)', async () => {
  const module = await buildModule(tinySpec('f16', 'plain', ['emu']), { target: 'emu', sanitize: 'address' });
  expect(module.manifest.sanitize).toBe('address');
  expect(module.manifest.buildCommand).toContain('-fsanitize=address,undefined');
  // The library really is instrumented (it calls into the ASan runtime).
  const { stdout: symbols } = await execa('nm', ['-D', module.libraryPath]);
  expect(symbols).toMatch(/__asan_/);

  const runtime = (name: string) => execa('g++', [`-print-file-name=${name}`]).then((r) => r.stdout.trim());
  const preload = `${await runtime('libasan.so')} ${await runtime('libubsan.so')}`;
  const seed = Math.floor(Math.random() * 2 ** 31);
  const result = await execa(
    'node',
    [
      '--import',
      'tsx',
      join(REPO, 'test', 'fixtures', 'sanitized-decode.ts'),
      module.libraryPath,
      String(seed),
    ],
    {
      cwd: REPO,
      reject: false,
      env: {
        LD_PRELOAD: preload,
        ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=0',
        UBSAN_OPTIONS: 'halt_on_error=1',
      },
    },
  );
  const output = `${result.stdout}\n${result.stderr}`;
  expect(output, `seed ${seed}`).not.toMatch(/AddressSanitizer|runtime error:/);
  expect(result.exitCode, output).toBe(0);
  const summary = JSON.parse(String(result.stdout).trim().split('\n').at(-1)!) as {
    decodes: number;
    maxError: number;
  };
  expect(summary.decodes).toBeGreaterThan(2);
  expect(summary.maxError).toBeLessThanOrEqual(2e-3);
  expect(readFileSync(join(module.dir, 'build.log'), 'utf8')).toContain('-fsanitize=address');
});
