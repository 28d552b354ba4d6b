// Where the native addon comes from, without loading it: a source build (runtime/native/build) or
// the prebuilt N-API binary shipped in runtime/native/prebuilds/<platform>-<arch>/, found the
// way node-gyp-build finds it (a source build wins when both exist).

import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);

/** runtime/native of the package, from the sources or from dist/ alike. */
export const NATIVE_DIR = join(dirname(require.resolve('chunkattn/package.json')), 'runtime', 'native');

export type AddonOrigin = 'source build' | 'prebuilt';

export interface AddonLocation {
  readonly path: string;
  readonly origin: AddonOrigin;
}

/** The binary node-gyp-build would load here, or undefined when there is none for this platform. */
export function findNativeAddon(): AddonLocation | undefined {
  const resolve = (require('node-gyp-build') as { resolve(dir: string): string }).resolve;
  let path: string;
  try {
    path = resolve(NATIVE_DIR);
  } catch {
    return undefined;
  }
  return { path, origin: path.includes(`${join('native', 'prebuilds')}`) ? 'prebuilt' : 'source build' };
}

export function nativeAddonStatus(): string {
  const found = findNativeAddon();
  return found
    ? `${found.origin} (${found.path})`
    : `none for ${process.platform}-${process.arch}: run \`npm rebuild chunkattn\` (needs g++ and the Node headers)`;
}
