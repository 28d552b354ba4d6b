// chunkattn cache list|prune|clean: what the build cache holds, and removing it.

import Table from 'cli-table3';
import { cacheDir, cleanCache, listCache, pruneCache } from '../../codegen/index.ts';
import { UsageError } from '../exit-codes.ts';
import { parseInteger } from '../options.ts';
import type { Output } from '../output.ts';

export const CACHE_ACTIONS = ['list', 'prune', 'clean'] as const;

export interface CacheFlags {
  /** prune: also remove entries built more than this many days ago. */
  readonly olderThan?: string;
}

function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}

export async function cacheCommand(action: string, flags: CacheFlags, out: Output): Promise<void> {
  const root = cacheDir();
  if (action === 'list') {
    const entries = listCache(root);
    const table = new Table({
      head: ['entry', 'status', 'target', 'MiB', 'built'],
      style: { head: [], border: [] },
    });
    for (const e of entries)
      table.push([
        e.buildId,
        e.status === 'ok' ? 'ok' : `damaged: ${e.reason}`,
        e.target ?? '-',
        mib(e.bytes),
        e.builtAt ?? '-',
      ]);
    out.info(`cache: ${root}`);
    out.info(entries.length ? table.toString() : '(empty)');
    out.result({ cache: root, entries });
    return;
  }
  if (flags.olderThan !== undefined && action !== 'prune')
    throw new UsageError('--older-than applies to `cache prune` only');
  let result: { removed: string[]; bytesFreed: number };
  if (action === 'prune') {
    const days = flags.olderThan === undefined ? undefined : parseInteger('--older-than', flags.olderThan);
    result = pruneCache({ root, ...(days !== undefined && { olderThanMs: days * 86_400_000 }) });
  } else if (action === 'clean') {
    result = cleanCache(root);
  } else {
    throw new UsageError(`cache: '${action}' is not an action; allowed: ${CACHE_ACTIONS.join(', ')}`);
  }
  out.info(`cache: ${root}: removed ${result.removed.length} entries, ${mib(result.bytesFreed)} MiB`);
  out.result({ cache: root, ...result });
}
