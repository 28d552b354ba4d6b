// Whether the native addon is built, without loading it (for `chunkattn doctor`).

import { existsSync } from 'node:fs';
import { join } from 'node:path';

export const NATIVE_ADDON_PATH = join(
  import.meta.dirname,
  'native',
  'build',
  'Release',
  'chunkattn_native.node',
);

export function nativeAddonStatus(): string {
  return existsSync(NATIVE_ADDON_PATH)
    ? `built (${NATIVE_ADDON_PATH})`
    : 'not built: run `npm ci` (or `npm run install`)';
}
