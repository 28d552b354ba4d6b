// The PSA kernels of cuda/emu (chunkattn/chunk_meta.cuh, select.cuh, chunk_select_kernels.cuh,
// psa_guard.cuh) compiled by nvcc
// for sm_80 and sm_90a, each arch checked on its own, over a matrix of D ∈ {64, 128, 256} ×
// G ∈ {1, 8} (f16 / bf16) plus D 96 × G 6: no spills, no local memory (stack frame 0), no static shared memory
// (the select's arena is dynamic: SelectPlan::kSmemBytes).

import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parsePtxasReport } from '../codegen/index.ts';
import { haveNvcc } from '../runtime/cucpu/tools/test-harness.ts';
import { buildPtxMatrix, PTX_ARCHS, type PtxMatrix } from './ptx-matrix.ts';

const MATRIX = [64, 128, 256].flatMap((d) =>
  [1, 8].map((g) => ({ d, g, dtype: d === 128 ? 'bf16' : 'f16' })),
);
const KERNELS =
  /psa_meta_kernel|psa_select_kernel|psa_fill_counts_kernel|psa_row_select_kernel|psa_tile_select_kernel|psa_guard_kernel|psa_fill_kernel/;

function source(): string {
  const cfgs = MATRIX.map(
    ({ d, g, dtype }, i) => `struct Cfg${i} {
  static constexpr int kQHeads = ${8 * g}, kKvHeads = 8, kHeadDim = ${d}, kChunk = 64;
  using QT = ca::${dtype}; using KvT = ca::${dtype}; using OutT = ca::${dtype};
};
template __global__ void ca::psa_meta_kernel<Cfg${i}>(const void*, int32_t, void*, const int32_t*);
template __global__ void ca::psa_select_kernel<Cfg${i}>(const ca::DecodeView, const ca::DecodeTensors, const ca::SelectIo);
template __global__ void ca::psa_row_select_kernel<Cfg${i}>(const ca::DecodeView, const ca::ChunkSelection, ca::ChunkSelectScratch);
template __global__ void ca::psa_tile_select_kernel<Cfg${i}>(const ca::DecodeView, const ca::ChunkSelection, ca::ChunkSelectScratch);
template __global__ void ca::psa_guard_kernel<Cfg${i}>(const ca::DecodeView, const ca::DecodeTensors, const ca::GuardIo);`,
  );
  return `#define CA_TARGET_CUDA 1
#include "chunkattn/chunk_meta.cuh"
#include "chunkattn/chunk_select_kernels.cuh"
#include "chunkattn/psa_guard.cuh"
#include "chunkattn/select.cuh"
${cfgs.join('\n')}
template __global__ void ca::psa_fill_counts_kernel<128>(int32_t*, int32_t);
template __global__ void ca::psa_fill_kernel<128>(int32_t*, int32_t, int32_t);
`;
}

let matrix: PtxMatrix | undefined;
let report = '';

describe.skipIf(!haveNvcc)('nvcc: the PSA kernels per arch', () => {
  beforeAll(async () => {
    matrix = await buildPtxMatrix(source(), 'psa-ptx-');
    ({ report } = matrix);
  }, 600_000);
  afterAll(() => matrix?.dispose());

  test.each(PTX_ARCHS)('%s: every instance has 0 spill bytes, no local memory, no static smem', (arch) => {
    const records = parsePtxasReport(report).filter((r) => r.arch === arch && KERNELS.test(r.symbol));
    expect(records.length).toBe(5 * MATRIX.length + 2);
    for (const r of records) {
      const what = `${r.symbol} ${arch}: ${r.registers} registers`;
      expect(r.spillStoreBytes + r.spillLoadBytes, what).toBe(0);
      expect(r.stackBytes, what).toBe(0);
      expect(r.smemBytes, what).toBe(0);
    }
  });
});
