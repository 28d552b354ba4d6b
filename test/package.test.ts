// The package as a user gets it: `npm pack`, then `npm i <tarball>` into a temporary project that
// runs plain Node (no tsx of its own): an .mjs import and a .cjs require each decode once on the
// cpu target against the float64 reference, and a strict consumer `tsc --noEmit` sees 0 errors.
// Then the same tarball installs under other Node prefixes: one without headers (the prebuilt
// binary loads) and one whose headers are the only ones named (a source build with nodedir taken
// from that Node's own path). Installs resolve from npm's cache first (--prefer-offline).

import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';

const REPO = join(import.meta.dirname, '..');
const FIXTURES = join(import.meta.dirname, 'fixtures', 'consumer');
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
const TYPES_NODE = (
  JSON.parse(readFileSync(join(REPO, 'node_modules', '@types', 'node', 'package.json'), 'utf8')) as {
    version: string;
  }
).version;
const TSC = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
const PREBUILD = 'runtime/native/prebuilds/linux-x64/chunkattn_native.glibc.node';

interface PackedFile {
  readonly path: string;
  readonly size: number;
}

let work: string;
let tarball: string;
let packedSize: number;
let files: PackedFile[];

/** A project folder with the consumer fixtures written out. */
function consumerProject(name: string): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  // An ESM project (its .ts is ESM too); decode.cjs is CommonJS by its extension.
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name, private: true, type: 'module' }));
  const decode = readFileSync(join(FIXTURES, 'decode.js.txt'), 'utf8');
  const names = 'Attention, attention, referenceDecode, relativeError, TOLERANCE';
  writeFileSync(
    join(dir, 'decode.mjs'),
    decode.replace('// IMPORT', `import { ${names} } from 'chunkattn';`),
  );
  writeFileSync(
    join(dir, 'decode.cjs'),
    decode.replace('// IMPORT', `const { ${names} } = require('chunkattn');`),
  );
  writeFileSync(join(dir, 'check.ts'), readFileSync(join(FIXTURES, 'check.ts.txt'), 'utf8'));
  writeFileSync(join(dir, 'tsconfig.json'), readFileSync(join(FIXTURES, 'tsconfig.json'), 'utf8'));
  return dir;
}

/** A Node prefix holding a copy of the running node (and, when asked, its headers). */
function nodePrefix(name: string, withHeaders: boolean): string {
  const prefix = join(work, name);
  mkdirSync(join(prefix, 'bin'), { recursive: true });
  copyFileSync(process.execPath, join(prefix, 'bin', 'node'));
  chmodSync(join(prefix, 'bin', 'node'), 0o755);
  if (withHeaders) {
    mkdirSync(join(prefix, 'include'), { recursive: true });
    symlinkSync(join(dirname(dirname(process.execPath)), 'include', 'node'), join(prefix, 'include', 'node'));
  }
  return prefix;
}

/** The environment of a user's shell: PATH (with `prefix` first), no npm_* variables (`npm test`
 * exports its config, nodedir included, to everything it starts). */
function env(prefix?: string, extra: Record<string, string> = {}): Record<string, string> {
  const clean: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env))
    if (value !== undefined && !/^npm_/i.test(name)) clean[name] = value;
  const path = prefix ? `${join(prefix, 'bin')}:${process.env.PATH}` : (process.env.PATH ?? '');
  return { ...clean, PATH: path, CHUNKATTN_CACHE: join(work, 'kernel-cache'), NO_COLOR: '1', ...extra };
}

async function install(dir: string, prefix?: string, extra: Record<string, string> = {}): Promise<void> {
  await execa(
    'npm',
    ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball, `@types/node@${TYPES_NODE}`],
    { cwd: dir, env: env(prefix, extra), extendEnv: false },
  );
}

async function run(dir: string, command: string, args: string[], prefix?: string) {
  return execa(command, args, { cwd: dir, env: env(prefix), extendEnv: false, reject: false });
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'chunkattn-package-'));
  const { stdout } = await execa('npm', ['pack', '--json', '--pack-destination', work], { cwd: REPO });
  const [info] = JSON.parse(stdout) as { filename: string; size: number; files: PackedFile[] }[];
  tarball = join(work, info!.filename);
  packedSize = info!.size;
  files = info!.files;
}, 600_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('the packed tarball', () => {
  test('ships compiled JS, types, the license and the prebuilt addon, but no tests, CI or TS sources', () => {
    const paths = files.map((f) => f.path);
    for (const wanted of ['dist/index.js', 'dist/index.d.ts', 'dist/index.js.map', 'LICENSE', PREBUILD])
      expect(paths).toContain(wanted);
    expect(paths).toContain('dist/generated/index.js');
    expect(paths.filter((p) => /^(test|\.ci|scripts|examples)\//.test(p))).toEqual([]);
    expect(paths.filter((p) => p.endsWith('.ts') && !p.endsWith('.d.ts'))).toEqual([]);
    expect(paths.filter((p) => /\b(fixtures|tests|tools)\//.test(p))).toEqual([]);
  });

  test('is under 1 MB without the prebuilt binary', () => {
    const prebuild = files.find((f) => f.path === PREBUILD)!;
    // packedSize is compressed; the prebuilt binary counts at most its own size.
    console.log(`tarball ${packedSize} bytes packed; prebuilt binary ${prebuild.size} bytes unpacked`);
    expect(packedSize).toBeLessThan(1_000_000);
  });
});

describe('a clean project that installs the tarball', () => {
  let dir: string;
  beforeAll(async () => {
    dir = consumerProject('consumer');
    await install(dir);
  }, 600_000);

  test('an .mjs file imports Attention and decodes once on cpu within f32 tolerance of the reference', async () => {
    const result = await run(dir, 'node', ['decode.mjs']);
    expect(result.exitCode, result.stderr).toBe(0);
    // The first use builds the module (announced on stderr); nothing else is said.
    expect(result.stderr).toMatch(
      /^chunkattn: building spec "consumer-f32" for cpu: first build, about \d+ s$/,
    );
    expect(JSON.parse(result.stdout)).toMatchObject({ ok: true, target: 'cpu' });
  });

  test('a .cjs file does the same through require', async () => {
    const result = await run(dir, 'node', ['decode.cjs']);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ ok: true, target: 'cpu' });
  });

  test("a strict consumer's tsc --noEmit (node16 resolution) reports 0 errors", async () => {
    const result = await run(dir, 'node', [TSC, '-p', 'tsconfig.json']);
    expect(result.stdout + result.stderr).toBe('');
    expect(result.exitCode).toBe(0);
  });

  test('the bin runs the compiled CLI: --version and doctor (the prebuilt addon loaded)', async () => {
    const bin = join(dir, 'node_modules', '.bin', 'chunkattn');
    expect((await run(dir, bin, ['--version'])).stdout.trim()).toBe(VERSION);
    const doctor = await run(dir, bin, ['doctor', '--json']);
    expect(doctor.exitCode, doctor.stderr).toBe(0);
    const report = JSON.parse(doctor.stdout.trim().split('\n').at(-1)!) as { addon: string };
    expect(report.addon).toMatch(/^prebuilt /);
  });

  test("a spec in the project's own folder, importing 'chunkattn', loads through the CLI", async () => {
    writeFileSync(
      join(dir, 'my-model.ts'),
      "import { attention } from 'chunkattn';\n" +
        "export default attention({ name: 'my-model', heads: { q: 8, kv: 2 }, headDim: 64, dtype: 'f16' });\n",
    );
    const result = await run(dir, join(dir, 'node_modules', '.bin', 'chunkattn'), [
      'inspect',
      'my-model.ts',
      '--json',
    ]);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stdout.trim().split('\n')).toHaveLength(1);
    expect(result.stdout).toContain('"my-model"');
  });
});

describe('installing under another Node prefix', () => {
  test('a prefix without headers installs and runs the prebuilt binary', async () => {
    const prefix = nodePrefix('node-no-headers', false);
    const dir = consumerProject('consumer-no-headers');
    await install(dir, prefix);
    const result = await run(dir, join(prefix, 'bin', 'node'), ['decode.mjs'], prefix);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ ok: true });
  });

  test("a source build takes nodedir from that Node's own prefix", async () => {
    const prefix = nodePrefix('node-with-headers', true);
    const dir = consumerProject('consumer-source-build');
    // A user npmrc without a nodedir setting (one of the user's own would win over the derived one).
    const npmrc = join(work, 'npmrc-without-nodedir');
    writeFileSync(npmrc, '');
    await install(dir, prefix, { CHUNKATTN_BUILD_FROM_SOURCE: '1', npm_config_userconfig: npmrc });
    const native = join(dir, 'node_modules', 'chunkattn', 'runtime', 'native');
    expect(readFileSync(join(native, 'build', 'config.gypi'), 'utf8')).toContain(`"nodedir": "${prefix}"`);
    const result = await run(dir, join(prefix, 'bin', 'node'), ['decode.mjs'], prefix);
    expect(result.exitCode, result.stderr).toBe(0);
    const doctor = await run(dir, join(prefix, 'bin', 'node'), [
      'node_modules/.bin/chunkattn',
      'doctor',
      '--json',
    ]);
    expect(doctor.stdout).toContain('source build');
  });
});
