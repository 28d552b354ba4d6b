// Finding the compilers and what they are. Results are memoized per process: the cache key
// depends on them, and a cache hit must stay cheap.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { ToolchainError } from './errors.ts';

export interface Tool {
  readonly path: string;
  readonly version: string;
}

export interface Toolchain {
  readonly gxx: Tool | null;
  readonly nvcc: Tool | null;
  /** CUDA headers (cuda_fp16.h, vector_types.h): needed by nvcc and by the emu target. */
  readonly cudaInclude: string | null;
  /** Host CPU features that -march=native bakes into cpu modules (part of their cache key). */
  readonly hostCpu: string;
}

async function probe(command: string, args: string[], pick: (out: string) => string): Promise<Tool | null> {
  try {
    const { stdout } = await execa(command, args);
    const which = await execa('sh', ['-c', `command -v ${command}`]);
    return { path: which.stdout.trim(), version: pick(stdout) };
  } catch {
    return null;
  }
}

function hostCpu(): string {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const model = /model name\s*:\s*(.*)/.exec(info)?.[1] ?? 'unknown';
    const flags = (/flags\s*:\s*(.*)/.exec(info)?.[1] ?? '')
      .split(' ')
      .filter((f) => /^(avx|fma|f16c|amx|sse4)/.test(f))
      .sort();
    return `${model} [${flags.join(' ')}]`;
  } catch {
    return process.arch;
  }
}

let cached: Promise<Toolchain> | undefined;

export function findToolchain(): Promise<Toolchain> {
  cached ??= (async () => {
    const cxx = process.env.CXX ?? 'g++';
    const nvccCommand = process.env.NVCC ?? 'nvcc';
    const [gxx, nvcc] = await Promise.all([
      probe(cxx, ['--version'], (out) => out.split('\n')[0] ?? out),
      probe(nvccCommand, ['--version'], (out) => /release [^\n]*/.exec(out)?.[0] ?? out.trim()),
    ]);
    const candidates = [process.env.CUDA_HOME, '/usr/local/cuda'].filter((p): p is string => !!p);
    const cudaInclude =
      candidates.map((root) => join(root, 'include')).find((inc) => existsSync(join(inc, 'cuda_fp16.h'))) ??
      null;
    return { gxx, nvcc, cudaInclude, hostCpu: hostCpu() };
  })();
  return cached;
}

export function requireTool(tool: Tool | null, name: string, why: string): Tool {
  if (!tool) throw new ToolchainError(`${name} not found: ${why}`);
  return tool;
}
