#!/usr/bin/env node
// `npm pack`'s prepack step: the prebuilt N-API binary of the native addon for this platform
// (runtime/native/prebuilds/<platform>-<arch>/chunkattn_native.glibc.node) via prebuildify. It is
// rebuilt only when an addon source or header is newer than it, so repeated packs reuse it.
// prebuildify builds in a scratch copy: it moves its output out of build/, which would take the
// checkout's own source build (runtime/native/build) away.

import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { headersPrefix } from '../runtime/native/node-headers.mjs';

const root = join(import.meta.dirname, '..');
const nativeDir = join(root, 'runtime', 'native');
const builds = join(nativeDir, 'prebuilds', `${process.platform}-${process.arch}`);
const target = join(builds, 'chunkattn_native.glibc.node');

function newestSource() {
  const files = [join(nativeDir, 'binding.gyp')];
  for (const dir of [join(nativeDir, 'src'), join(root, 'templates', 'include', 'chunkattn')])
    for (const entry of readdirSync(dir)) if (/\.(cc|h)$/.test(entry)) files.push(join(dir, entry));
  return Math.max(...files.map((f) => statSync(f).mtimeMs));
}

if (existsSync(target) && statSync(target).mtimeMs >= newestSource()) process.exit(0);

// The scratch tree mirrors the paths binding.gyp uses (../../templates/include, node_modules).
const scratch = mkdtempSync(join(tmpdir(), 'chunkattn-prebuild-'));
const scratchNative = join(scratch, 'runtime', 'native');
mkdirSync(scratchNative, { recursive: true });
cpSync(join(nativeDir, 'binding.gyp'), join(scratchNative, 'binding.gyp'));
cpSync(join(nativeDir, 'src'), join(scratchNative, 'src'), { recursive: true });
symlinkSync(join(root, 'templates'), join(scratch, 'templates'));
symlinkSync(join(root, 'node_modules'), join(scratch, 'node_modules'));

const prefix = headersPrefix();
// node-gyp reads its nodedir from npm's environment: the headers of this Node, never a download.
if (prefix && !process.env.npm_config_nodedir) process.env.npm_config_nodedir = prefix;
const prebuildify = createRequire(import.meta.url)('prebuildify');
prebuildify(
  {
    cwd: scratchNative,
    out: nativeDir,
    napi: true,
    strip: true,
    name: 'chunkattn_native',
    tagLibc: true,
    quiet: true,
  },
  (error) => {
    rmSync(scratch, { recursive: true, force: true });
    if (error) {
      process.stderr.write(`prebuildify failed: ${error.message}\n`);
      process.exit(1);
    }
  },
);
