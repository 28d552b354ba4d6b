// Where the running Node's headers are: <prefix>/include/node beside <prefix>/bin/node
// (process.execPath), the layout of distribution packages, official tarballs, nvm, Volta and the
// node Docker images alike. Used by the install step and the prebuild step.

import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** The prefix whose include/node holds this Node's headers, or undefined when there is none. */
export function headersPrefix(execPath = process.execPath) {
  const prefix = dirname(dirname(execPath));
  return existsSync(join(prefix, 'include', 'node', 'common.gypi')) ? prefix : undefined;
}
