// The build cache trusts nothing it reads back: a damaged entry (truncated module.so, a bad or
// missing manifest, a library name outside its folder) is a miss that is moved aside and rebuilt
// with one warning line; it never crashes the process (a truncated .so used to be dlopened and
// die with SIGBUS). Rebuilds here use a stand-in compiler (CXX) that copies one real module built
// once by g++, so every case is fast and the loaded library is real.

import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, test } from 'vitest';
import { buildModule, cacheDir, compilerFingerprint, FINGERPRINTED_SOURCES } from '../codegen/index.ts';
import { REPO, runCli } from './cli-harness.ts';

const SPEC_SOURCE = `import { attention } from ${JSON.stringify(join(REPO, 'dsl', 'index.ts'))};
export default attention({ name: 'heal', heads: { q: 2, kv: 1 }, headDim: 64, dtype: 'f32', chunkSize: 16, targets: ['cpu'] });
`;

const CREATE_SOURCE = `import { Attention, loadSpecs } from ${JSON.stringify(join(REPO, 'index.ts'))};
const [spec] = await loadSpecs(process.argv[2]);
const attn = await Attention.create(spec, { layers: 1, capacityTokens: 64, target: 'cpu' });
attn.close();
console.log('created');
`;

let work: string;
let specFile: string;
let createScript: string;
let env: Record<string, string>;

interface Compiled {
  cached: boolean;
  dir: string;
}

async function compile(): Promise<{ module: Compiled; stderr: string }> {
  const result = await runCli(['compile', specFile, '--json'], env);
  expect(result.exitCode, result.stderr).toBe(0);
  return { module: (result.json as { modules: Compiled[] }).modules[0]!, stderr: result.stderr };
}

function warnings(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line.includes('warning:'));
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'chunkattn-heal-'));
  specFile = join(work, 'heal.ts');
  writeFileSync(specFile, SPEC_SOURCE);
  createScript = join(work, 'create.mts');
  writeFileSync(createScript, CREATE_SOURCE);
  // One real build with g++, in its own cache.
  const saved = process.env.CHUNKATTN_CACHE;
  process.env.CHUNKATTN_CACHE = join(work, 'real-cache');
  const { loadSpecs } = await import('../dsl/index.ts');
  const [spec] = await loadSpecs(specFile);
  const real = await buildModule(spec!, { target: 'cpu' }).finally(() => {
    process.env.CHUNKATTN_CACHE = saved;
  });
  const good = join(work, 'good.so');
  cpSync(real.libraryPath, good);
  // The stand-in compiler: answers --version, and "compiles" by copying the real module.
  const fake = join(work, 'fake-gxx');
  writeFileSync(
    fake,
    `#!/bin/sh\nif [ "$1" = "--version" ]; then echo "fake-g++ 1.0"; exit 0; fi\n` +
      `while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then shift; cp ${JSON.stringify(good)} "$1"; fi; shift; done\n`,
  );
  chmodSync(fake, 0o755);
  env = { CHUNKATTN_CACHE: join(work, 'cache'), CXX: fake };
}, 300_000);

const damages: [string, (dir: string) => void][] = [
  ['module.so truncated to 1,000 bytes', (dir) => truncateSync(join(dir, 'module.so'), 1000)],
  ['module.so truncated to 50,000 bytes', (dir) => truncateSync(join(dir, 'module.so'), 50_000)],
  ['module.so truncated to 150,000 bytes', (dir) => truncateSync(join(dir, 'module.so'), 150_000)],
  ['module.so missing', (dir) => rmSync(join(dir, 'module.so'))],
  ['manifest.json truncated', (dir) => truncateSync(join(dir, 'manifest.json'), 100)],
  ['manifest.json is {}', (dir) => writeFileSync(join(dir, 'manifest.json'), '{}')],
  ['manifest.json missing', (dir) => rmSync(join(dir, 'manifest.json'))],
  [
    'manifest.library points outside the folder',
    (dir) => {
      const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
      writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, library: '../../module.so' }));
    },
  ],
];

describe('a damaged cache entry is a miss: moved aside and rebuilt, with one warning', () => {
  test.each(damages)('%s: compile rebuilds it (exit 0), then it is a hit again', async (_name, damage) => {
    const first = await compile();
    if (first.module.cached === false) expect(warnings(first.stderr)).toEqual([]);
    damage(first.module.dir);
    const healed = await compile();
    expect(healed.module.cached).toBe(false);
    expect(warnings(healed.stderr)).toHaveLength(1);
    expect(warnings(healed.stderr)[0]).toMatch(/cache entry .* is damaged \(.+\); rebuilding it/);
    const again = await compile();
    expect(again.module.cached).toBe(true);
    expect(warnings(again.stderr)).toEqual([]);
  });

  test.each(damages.slice(0, 3))(
    '%s: Attention.create rebuilds instead of dying with SIGBUS',
    async (_name, damage) => {
      const { module } = await compile();
      damage(module.dir);
      const child = await execa('node', ['--import', 'tsx', createScript, specFile], {
        cwd: REPO,
        env: { ...process.env, ...env },
        reject: false,
      });
      expect(child.signal, child.stderr).toBeUndefined();
      expect(child.exitCode, child.stderr).toBe(0);
      expect(child.stdout).toContain('created');
      expect(warnings(child.stderr)).toHaveLength(1);
    },
  );
});

test('an empty CHUNKATTN_CACHE means the default cache, never the current directory', () => {
  const saved = process.env.CHUNKATTN_CACHE;
  try {
    process.env.CHUNKATTN_CACHE = '';
    expect(cacheDir()).toBe(join(homedir(), '.cache', 'chunkattn'));
    process.env.CHUNKATTN_CACHE = 'relative/cache';
    expect(cacheDir()).toBe(join(process.cwd(), 'relative', 'cache'));
  } finally {
    process.env.CHUNKATTN_CACHE = saved;
  }
});

test('chunkattn cache list | prune | clean', async () => {
  const cacheEnv = { ...env, CHUNKATTN_CACHE: join(work, 'admin-cache') };
  const root = cacheEnv.CHUNKATTN_CACHE;
  expect((await runCli(['compile', specFile, '--json'], cacheEnv)).exitCode).toBe(0);
  // A second entry, damaged; a leftover temporary folder; a file that is not ours.
  const [entry] = readdirSync(root).filter((e) => !e.startsWith('.') && !e.endsWith('.lease'));
  const damaged = entry!.replace(/\.[0-9a-f]{8}$/, '.00000000');
  cpSync(join(root, entry!), join(root, damaged), { recursive: true });
  truncateSync(join(root, damaged, 'module.so'), 1000);
  mkdirSync(join(root, '.tmp', 'leftover-1-abc'), { recursive: true });
  writeFileSync(join(root, 'notes.txt'), 'not ours');

  const list = await runCli(['cache', 'list', '--json'], cacheEnv);
  expect(list.exitCode, list.stderr).toBe(0);
  const entries = (list.json as { entries: { buildId: string; status: string }[] }).entries;
  expect(entries.map((e) => [e.buildId, e.status]).sort()).toEqual(
    [
      [damaged, 'damaged'],
      [entry, 'ok'],
    ].sort(),
  );

  const prune = await runCli(['cache', 'prune', '--json'], cacheEnv);
  expect(prune.exitCode, prune.stderr).toBe(0);
  expect((prune.json as { removed: string[] }).removed.sort()).toEqual(
    [damaged, join('.tmp', 'leftover-1-abc')].sort(),
  );
  expect(existsSync(join(root, entry!, 'module.so'))).toBe(true);

  const clean = await runCli(['cache', 'clean', '--json'], cacheEnv);
  expect(clean.exitCode, clean.stderr).toBe(0);
  expect(readdirSync(root)).toEqual(['notes.txt']);
});

test('the cache key covers codegen/render.ts and the compile flags in codegen/build.ts', () => {
  expect(FINGERPRINTED_SOURCES).toEqual(expect.arrayContaining(['codegen/render.ts', 'codegen/build.ts']));
  const copy = mkdtempSync(join(tmpdir(), 'chunkattn-fingerprint-'));
  for (const path of ['package.json', 'templates', join('runtime', 'cucpu'), ...FINGERPRINTED_SOURCES])
    cpSync(join(REPO, path), join(copy, path), { recursive: true });
  const before = compilerFingerprint(copy);
  expect(before).toBe(compilerFingerprint());
  for (const file of ['codegen/render.ts', 'codegen/build.ts']) {
    writeFileSync(join(copy, file), `${readFileSync(join(copy, file), 'utf8')}\n// edited\n`);
    const after = compilerFingerprint(copy);
    expect(after, file).not.toBe(before);
  }
});
