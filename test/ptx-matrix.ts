// One nvcc build of a matrix of kernel instances for both gated archs, keeping the PTX: what the
// per-kernel ptxas/PTX gate tests (cuda-phase1-ptx, cuda-phase2-ptx) read.

import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { nvccPath, repoRoot } from '../runtime/cucpu/tools/test-harness.ts';

export const PTX_ARCHS = ['sm_80', 'sm_90a'] as const;
export type PtxArch = (typeof PTX_ARCHS)[number];

export interface PtxMatrix {
  /** nvcc's output with `-Xptxas -v` (parsePtxasReport reads it). */
  readonly report: string;
  /** The PTX text per arch. */
  readonly ptx: ReadonlyMap<PtxArch, string>;
  /** Removes the build folder. */
  dispose(): void;
}

/** Compiles `source` (a .cu translation unit) for sm_80 and sm_90a in a fresh temp folder. */
export async function buildPtxMatrix(source: string, prefix: string): Promise<PtxMatrix> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  try {
    writeFileSync(join(dir, 'matrix.cu'), source);
    const r = await execa(
      nvccPath,
      [
        '-std=c++17',
        '-O3',
        '-c',
        '-Xptxas',
        '-v',
        '--keep',
        '--keep-dir',
        dir,
        `-I${join(repoRoot, 'templates/include')}`,
        ...PTX_ARCHS.flatMap((a) => ['-gencode', `arch=${a.replace('sm_', 'compute_')},code=${a}`]),
        'matrix.cu',
        '-o',
        'matrix.o',
      ],
      { cwd: dir, all: true },
    );
    const ptx = new Map<PtxArch, string>();
    for (const f of readdirSync(dir).filter((f) => f.endsWith('.ptx')))
      ptx.set(/compute_90a|sm_90a/.test(f) ? 'sm_90a' : 'sm_80', readFileSync(join(dir, f), 'utf8'));
    return { report: r.all ?? '', ptx, dispose: () => rmSync(dir, { recursive: true, force: true }) };
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

/** The body of one .entry in a PTX file, by a substring of its mangled name ('' if absent). */
export function ptxEntry(text: string, name: string): string {
  const start = text.search(new RegExp(`\\.entry\\s+\\S*${name}`));
  if (start < 0) return '';
  const next = text.indexOf('.entry', start + 6);
  return text.slice(start, next < 0 ? undefined : next);
}
