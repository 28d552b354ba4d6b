// What a build says while it runs: one line when a compiler starts (spec, target, archs, an
// estimate from earlier builds), then, on a terminal only, a spinner with the elapsed time that
// turns into a "built … in N s" line. Everything goes to stderr, so stdout stays clean for --json.
// NO_COLOR (or TERM=dumb) drops the colour; CHUNKATTN_QUIET=1 silences it all.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Manifest } from './manifest.ts';
import type { KernelPlan } from './plan.ts';

/** Where progress is written: process.stderr, or a fake in tests. */
export interface ProgressStream {
  readonly isTTY?: boolean;
  write(text: string): unknown;
}

export interface BuildStart {
  readonly spec: string;
  readonly target: string;
  readonly archs: readonly string[];
  /** Seconds a build like this took before (or a default per target). */
  readonly estimateSeconds: number;
  /** Whether no module of this target was ever built in this cache. */
  readonly first: boolean;
}

export interface BuildProgress {
  start(build: BuildStart): { done(seconds: number): void; failed(): void };
}

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
/** Seconds a first build of each target takes on a 2-core machine (cuda: per arch). */
const DEFAULT_SECONDS = { cpu: 12, emu: 25, cuda: 8 } as const;

export function describeBuild(build: BuildStart): string {
  const archs = build.archs.length > 0 ? ` (${build.archs.join(', ')})` : '';
  const when = build.first ? 'first build' : 'not in the cache';
  return `building spec "${build.spec}" for ${build.target}${archs}: ${when}, about ${Math.max(1, Math.round(build.estimateSeconds))} s`;
}

/** The progress writer: a start line, then a spinner on a TTY. */
export function streamBuildProgress(
  stream: ProgressStream,
  env: Readonly<Record<string, string | undefined>> = process.env,
  tickMs = 100,
): BuildProgress {
  const tty = stream.isTTY === true && env['TERM'] !== 'dumb';
  const color = tty && env['NO_COLOR'] === undefined;
  const dim = (text: string) => (color ? `\x1b[2m${text}\x1b[22m` : text);
  const green = (text: string) => (color ? `\x1b[32m${text}\x1b[39m` : text);
  return {
    start(build) {
      stream.write(`chunkattn: ${describeBuild(build)}\n`);
      if (!tty) return { done: () => undefined, failed: () => undefined };
      const started = performance.now();
      let frame = 0;
      const draw = () => {
        const seconds = (performance.now() - started) / 1000;
        const label = `${build.spec} → ${build.target}`;
        stream.write(`\r\x1b[K${FRAMES[frame++ % FRAMES.length]} ${label} ${dim(`${seconds.toFixed(1)} s`)}`);
      };
      draw();
      const timer = setInterval(draw, tickMs);
      timer.unref();
      const stop = () => {
        clearInterval(timer);
        stream.write('\r\x1b[K');
      };
      return {
        done: (seconds) => {
          stop();
          stream.write(`${green('✓')} built ${build.spec} → ${build.target} in ${seconds.toFixed(1)} s\n`);
        },
        failed: stop,
      };
    },
  };
}

const silent: BuildProgress = { start: () => ({ done: () => undefined, failed: () => undefined }) };

let current: BuildProgress | undefined;

/** The progress every build reports to (default: stderr, or nothing under CHUNKATTN_QUIET=1). */
export function buildProgress(): BuildProgress {
  current ??= process.env['CHUNKATTN_QUIET'] === '1' ? silent : streamBuildProgress(process.stderr);
  return current;
}

/** Replaces the build progress (null: silent); returns the previous one to restore. */
export function setBuildProgress(progress: BuildProgress | null): BuildProgress {
  const previous = buildProgress();
  current = progress ?? silent;
  return previous;
}

/** What to announce for a plan: the median time of earlier builds of its target in this cache. */
export function buildStart(plan: KernelPlan, cacheRoot: string): BuildStart {
  const seconds: number[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync(cacheRoot);
  } catch {
    entries = [];
  }
  for (const entry of entries) {
    if (entry.startsWith('.') || entry.endsWith('.lock')) continue;
    try {
      const manifest = JSON.parse(readFileSync(join(cacheRoot, entry, 'manifest.json'), 'utf8')) as Manifest;
      if (manifest.target === plan.target && manifest.archs.length === plan.archs.length)
        seconds.push(manifest.buildSeconds);
    } catch {
      // not a module folder
    }
  }
  seconds.sort((a, b) => a - b);
  const fallback = DEFAULT_SECONDS[plan.target] * Math.max(1, plan.archs.length);
  return {
    spec: plan.name,
    target: plan.target,
    archs: plan.archs,
    estimateSeconds: seconds.length > 0 ? seconds[Math.floor(seconds.length / 2)]! : fallback,
    first: seconds.length === 0,
  };
}
