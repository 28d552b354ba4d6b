// Runs the real `chunkattn` executable in a child process, as a user would.

import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';

export const REPO = join(import.meta.dirname, '..');
export const CLI = join(REPO, 'cli', 'chunkattn.mjs');

export interface CliResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
  /** The last stdout line parsed as JSON, when the command ran with --json and succeeded. */
  readonly json: unknown;
}

export function spawnCli(args: readonly string[], env: Record<string, string> = {}): ResultPromise {
  return execa('node', [CLI, ...args], {
    cwd: REPO,
    env: { ...process.env, ...env },
    reject: false,
    all: false,
  });
}

export async function runCli(args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
  const result = await spawnCli(args, env);
  const stdout = String(result.stdout ?? '');
  const last = stdout.trim().split('\n').at(-1) ?? '';
  let json: unknown = null;
  try {
    json = JSON.parse(last);
  } catch {
    json = null;
  }
  return { exitCode: result.exitCode ?? -1, stdout, stderr: String(result.stderr ?? ''), json };
}
