#!/usr/bin/env node
// npm's install step for the native addon. An installed package uses the prebuilt N-API binary in
// prebuilds/<platform>-<arch>/ when one loads here (one binary serves every Node ≥ 20); otherwise,
// and always in a git checkout, it builds from source with node-gyp against the headers of the
// Node running this script: <prefix>/include/node beside <prefix>/bin/node (process.execPath), so
// nvm, Volta, official tarballs and Docker images work as well as a distribution's /usr.

import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { headersPrefix } from './node-headers.mjs';

const require = createRequire(import.meta.url);
const nativeDir = import.meta.dirname;
const packageRoot = join(nativeDir, '..', '..');

function prebuiltLoads() {
  if (!existsSync(join(nativeDir, 'prebuilds', `${process.platform}-${process.arch}`))) return false;
  try {
    const path = require('node-gyp-build').resolve(nativeDir);
    require(path);
    return path.includes('prebuilds');
  } catch {
    return false;
  }
}

const checkout = existsSync(join(packageRoot, '.git'));
const forced = process.env.CHUNKATTN_BUILD_FROM_SOURCE === '1';
if (!checkout && !forced && prebuiltLoads()) process.exit(0);

const args = [
  require.resolve('node-gyp/bin/node-gyp.js'),
  'rebuild',
  `--directory=${nativeDir}`,
  '--loglevel=warn',
];
const prefix = headersPrefix();
if (process.env.npm_config_nodedir) {
  // the user's own npm setting wins (node-gyp reads it from the environment)
} else if (prefix) {
  args.push(`--nodedir=${prefix}`);
} else {
  process.stderr.write(
    `chunkattn: no Node headers at ${join(dirname(dirname(process.execPath)), 'include', 'node')}; ` +
      'node-gyp will look for them itself (it may download them)\n',
  );
}
const result = spawnSync(process.execPath, args, { stdio: 'inherit' });
if (result.status !== 0) {
  process.stderr.write(
    'chunkattn: building the native addon failed. It needs g++, make, python3 and the headers of this ' +
      `Node (${process.execPath}); set npm_config_nodedir to a folder with include/node to point at them.\n`,
  );
  process.exit(result.status ?? 1);
}
