// The kernel sources the shim runs are real CUDA: every test kernel, and with it every wrapper of
// chunkattn/prims.cuh, compiles with nvcc for sm_80 and sm_90a without spills; and prims.cuh is
// the only header with inline PTX or __CUDA_ARCH__.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { compileCubin, haveNvcc, repoRoot } from '../runtime/cucpu/tools/test-harness.ts';

const kernels = [
  'block_reduce_sum',
  'smem_tree_reduce',
  'barrier_votes',
  'warp_ops',
  'atomics',
  'decode_split_kernel',
  'decode_combine_kernel',
  'gemm_tc',
  'mma_tile_16x8x16',
  'every_prim',
];

describe.skipIf(!haveNvcc)('nvcc compiles the kernels the shim runs', () => {
  test.each(['sm_80', 'sm_90a'])('for %s, with no spills', async (arch) => {
    const log = await compileCubin(arch);
    for (const k of kernels) expect(log, `kernel ${k} missing`).toContain(k);
    const spills = [...log.matchAll(/(\d+) bytes spill stores, (\d+) bytes spill loads/g)];
    expect(spills.length).toBeGreaterThanOrEqual(kernels.length);
    expect(spills.filter((m) => m[1] !== '0' || m[2] !== '0')).toEqual([]);
  });
});

test('prims.cuh is the only kernel header with inline PTX or __CUDA_ARCH__', () => {
  const offenders: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(join(repoRoot, dir), { withFileTypes: true })) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory()) walk(path);
      else if (/\.(h|cuh|cu|hpp|hbs)$/.test(entry.name) && path !== 'templates/include/chunkattn/prims.cuh') {
        const text = readFileSync(join(repoRoot, path), 'utf8');
        if (/__CUDA_ARCH__|\basm\s*(volatile\s*)?\(/.test(text)) offenders.push(path);
      }
    }
  };
  walk('templates');
  walk('runtime/cucpu/tests/kernels');
  expect(offenders).toEqual([]);
});
