// Runs once per `vitest run`: points every test at one build cache inside the repo, so a kernel
// is built once per run (and reused across local runs, since the cache is keyed by content).

import { join } from 'node:path';

export default function setup(): void {
  process.env.CHUNKATTN_CACHE ??= join(import.meta.dirname, '..', '.cache', 'chunkattn');
}
