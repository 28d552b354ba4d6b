// Long builds say what they do: one start line (spec, target, archs, an estimate), then on a
// terminal a spinner that ends in a "built … in N s" line; all on stderr, so `--json` stdout stays
// one JSON line. The writer is tested with a fake TTY; the CLI on a real one (util-linux `script`).

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, test } from 'vitest';
import { type BuildStart, streamBuildProgress } from '../codegen/index.ts';
import { CLI, REPO, runCli } from './cli-harness.ts';

const BUILD: BuildStart = {
  spec: 'demo',
  target: 'cuda',
  archs: ['sm_80', 'sm_90a'],
  estimateSeconds: 16,
  first: true,
};
const ESC = '\u001b';
const hasColor = (text: string) => [`${ESC}[2m`, `${ESC}[32m`].some((code) => text.includes(code));

function fakeStream(isTTY: boolean) {
  const chunks: string[] = [];
  return { chunks, stream: { isTTY, write: (text: string) => chunks.push(text) } };
}

describe('the build progress writer', () => {
  test('on a TTY: a start line, spinner frames with the elapsed time, then a built line', async () => {
    const { chunks, stream } = fakeStream(true);
    const shown = streamBuildProgress(stream, {}, 5).start(BUILD);
    await new Promise((resolve) => setTimeout(resolve, 60));
    shown.done(3.25);
    const text = chunks.join('');
    expect(chunks[0]).toBe(
      'chunkattn: building spec "demo" for cuda (sm_80, sm_90a): first build, about 16 s\n',
    );
    const frames = chunks.filter((c) => c.startsWith(`\r${ESC}[K`) && /[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] demo → cuda/.test(c));
    expect(frames.length).toBeGreaterThan(2);
    expect(text).toMatch(/built demo → cuda in 3\.3 s\n$/);
    expect(hasColor(text)).toBe(true);
  });

  test('NO_COLOR keeps the spinner but drops every colour code', async () => {
    const { chunks, stream } = fakeStream(true);
    const shown = streamBuildProgress(stream, { NO_COLOR: '1' }, 5).start(BUILD);
    await new Promise((resolve) => setTimeout(resolve, 30));
    shown.done(1);
    expect(chunks.length).toBeGreaterThan(2);
    expect(hasColor(chunks.join(''))).toBe(false);
  });

  test('off a TTY: the start line only, no spinner', async () => {
    const { chunks, stream } = fakeStream(false);
    const shown = streamBuildProgress(stream, {}, 5).start({
      ...BUILD,
      target: 'cpu',
      archs: [],
      first: false,
    });
    await new Promise((resolve) => setTimeout(resolve, 30));
    shown.done(1);
    expect(chunks).toEqual(['chunkattn: building spec "demo" for cpu: not in the cache, about 16 s\n']);
  });
});

function tinySpecFile(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'chunkattn-progress-'));
  const file = join(dir, 'spec.ts');
  writeFileSync(
    file,
    `import { attention } from '${join(REPO, 'dsl', 'index.ts')}';\n` +
      `export default attention({ name: '${name}', heads: { q: 4, kv: 2 }, headDim: 64, dtype: 'f32', chunkSize: 16, targets: ['cpu'] });\n`,
  );
  return file;
}

describe('chunkattn compile on a cold cache', () => {
  test('on a terminal it prints the start line, a spinner and the built line', async () => {
    const cache = mkdtempSync(join(tmpdir(), 'chunkattn-progress-cache-'));
    const file = tinySpecFile('progress-tty');
    // `script` gives the command a real pseudo-terminal and copies what it wrote to stdout.
    const result = await execa('script', ['-qec', `node ${CLI} compile ${file}`, '/dev/null'], {
      cwd: REPO,
      env: { CHUNKATTN_CACHE: cache, TERM: 'xterm' },
      reject: false,
    });
    expect(result.exitCode, result.stdout).toBe(0);
    expect(result.stdout).toMatch(
      /chunkattn: building spec "progress-tty" for cpu: first build, about \d+ s/,
    );
    expect(result.stdout).toContain(`\r${ESC}[K`);
    expect(result.stdout).toMatch(/[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] progress-tty → cpu/);
    expect(result.stdout).toMatch(/built progress-tty → cpu in [\d.]+ s/);
  });

  test('--json still prints exactly one JSON line on stdout; the start line goes to stderr', async () => {
    const cache = mkdtempSync(join(tmpdir(), 'chunkattn-progress-cache-'));
    const result = await runCli(['compile', tinySpecFile('progress-json'), '--json'], {
      CHUNKATTN_CACHE: cache,
    });
    expect(result.exitCode, result.stderr).toBe(0);
    const lines = result.stdout.split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toHaveProperty('modules');
    expect(result.stderr).toMatch(/building spec "progress-json" for cpu/);
    expect(result.stderr).not.toMatch(/\r/); // stderr is a pipe here: no spinner
  });
});
