// The phase-2 kernels compiled by nvcc for sm_80 and sm_90a, each arch checked on its own (spills
// differ by arch), over a spec matrix of D ∈ {64, 128, 256} × G ∈ {1, 8}, each dense and PSA
// list-driven (kListed: chunk_select_mask.cuh): no spills, no local
// memory, registers within the plan's budget, no static shared memory (the plan's dynamic arena
// is checked against C++ in emu-phase2.test.ts). And a PTX lint: the pipelined kernel waits with
// cp.async.wait_group ≥ 1 and has no 2-byte shared loads, which the lane = token reference kernel
// (decode_sequence_first.cuh) does have — the lint catches that; G = 8 runs on tensor cores
// (mma.sync m16n8k16 fed by ldmatrix), G = 1 and the list-driven instances on CUDA cores.

import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parsePtxasReport } from '../codegen/index.ts';
import { phase2Geometry } from '../codegen/plan.ts';
import { attention } from '../dsl/index.ts';
import { haveNvcc } from '../runtime/cucpu/tools/test-harness.ts';
import { buildPtxMatrix, PTX_ARCHS, type PtxMatrix, ptxEntry } from './ptx-matrix.ts';

const MATRIX = [64, 128, 256].flatMap((d) =>
  [1, 8].map((g) => ({ d, g, dtype: d === 128 ? 'bf16' : 'f16' })),
);
const ARCHS = PTX_ARCHS;
/** The plan's register budget of matrix instance i (dense, or the PSA list-driven instance). */
function registerBudget(i: number, listed: boolean): number {
  const { d, g, dtype } = MATRIX[i]!;
  const spec = attention({
    name: `matrix-${i}`,
    heads: { q: 8 * g, kv: 8 },
    headDim: d as 64 | 128 | 256,
    dtype: dtype as 'f16' | 'bf16',
    chunkSize: 64,
    targets: ['sm_80'],
  });
  return phase2Geometry(spec, listed).maxRegisters;
}

function source(): string {
  const cfgs = MATRIX.map(
    ({ d, g, dtype }, i) => `struct Cfg${i} {
  static constexpr int kQHeads = ${8 * g}, kKvHeads = 8, kHeadDim = ${d}, kChunk = 64;
  using QT = ca::${dtype}; using KvT = ca::${dtype}; using OutT = ca::${dtype};
};
template __global__ void ca::decode_phase2_kernel<Cfg${i}, Plain>(const ca::DecodeView, const ca::DecodeTensors, const ca::Phase2Io);
template __global__ void ca::decode_merge_splits_kernel<Cfg${i}>(const ca::DecodeView, const ca::DecodeTensors, const ca::Phase2Io);
template __global__ void ca::decode_phase2_kernel<Cfg${i}, Plain, true>(const ca::DecodeView, const ca::DecodeTensors, const ca::Phase2Io);
template __global__ void ca::decode_merge_splits_kernel<Cfg${i}, true>(const ca::DecodeView, const ca::DecodeTensors, const ca::Phase2Io);`,
  );
  return `#define CA_TARGET_CUDA 1
#include "chunkattn/decode_phase2.cuh"
#include "chunkattn/decode_sequence_first.cuh"
struct Plain {
  static constexpr bool kHasScoreMod = false, kHasMask = false;
  CA_HD static float score_mod(float s, const ca::Pos&, const float*) { return s; }
  CA_HD static bool mask(const ca::Pos&, const float*) { return true; }
};
${cfgs.join('\n')}
// The reference kernel, as a positive control of the lint.
template __global__ void ca::decode_sequence_first_kernel<Cfg2, Plain>(const CaDecodeParams);
`;
}

let matrix: PtxMatrix | undefined;
let report = '';
let ptx: PtxMatrix['ptx'] = new Map();

describe.skipIf(!haveNvcc)('nvcc: the phase-2 kernels per arch', () => {
  beforeAll(async () => {
    matrix = await buildPtxMatrix(source(), 'phase2-ptx-');
    ({ report, ptx } = matrix);
  }, 600_000);
  afterAll(() => matrix?.dispose());

  test.each(ARCHS)(
    '%s: every instance has 0 spill bytes, no local memory, registers within the plan, no static smem',
    (arch) => {
      const records = parsePtxasReport(report).filter(
        (r) => r.arch === arch && /decode_phase2|decode_merge_splits/.test(r.symbol),
      );
      expect(records.length).toBe(4 * MATRIX.length);
      for (const r of records) {
        const what = `${r.symbol} ${arch}: ${r.registers} registers`;
        expect(r.spillStoreBytes + r.spillLoadBytes, what).toBe(0);
        expect(r.stackBytes, what).toBe(0);
        // One digit ("4" is the name's length), then the Variant and the kListed bool, if any.
        const [, instance, listed] = /4Cfg(\d)(?:5Plain)?(?:Lb([01])E)?/.exec(r.symbol) ?? [];
        expect(r.registers, what).toBeLessThanOrEqual(registerBudget(Number(instance), listed === '1'));
        expect(r.smemBytes, what).toBe(0);
      }
    },
  );

  test.each(ARCHS)(
    '%s PTX lint: phase 2 waits with cp.async.wait_group ≥ 1, loads no 2-byte shared values, and runs G ≥ 4 on mma.sync/ldmatrix',
    (arch) => {
      const text = ptx.get(arch) ?? '';
      expect(text.length).toBeGreaterThan(0);
      for (const [i, listed] of MATRIX.flatMap((_, i) => [0, 1].map((l) => [i, l] as const))) {
        const body = ptxEntry(text, `decode_phase2_kernelI4Cfg${i}5PlainLb${listed}E`);
        expect(body.length, `decode_phase2 Cfg${i} listed ${listed}`).toBeGreaterThan(0);
        const waits = [...body.matchAll(/cp\.async\.wait_group\s+(\d+)/g)].map((m) => Number(m[1]));
        expect(
          waits.some((n) => n >= 1),
          `Cfg${i} waits ${waits}`,
        ).toBe(true);
        expect(body).toMatch(/cp\.async\.cg\.shared\.global|cp\.async\.ca\.shared\.global/);
        expect(body).not.toMatch(/ld\.shared\.(u16|b16|s16)/);
        expect(body).not.toMatch(/\b(ld|st)\.local\b/);
        // G ≥ 4: the tensor-core engine (mma.sync fed by ldmatrix); below, and for the PSA
        // list-driven instances, CUDA cores.
        const tensorCores = /mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(f16|bf16)\.(f16|bf16)\.f32/;
        if (MATRIX[i]!.g >= 4 && !listed) {
          expect(body, `Cfg${i}`).toMatch(tensorCores);
          expect(body).toMatch(/ldmatrix\.sync\.aligned\.m8n8\.x[24]\.shared\.b16/);
          expect(body).toMatch(/ldmatrix\.sync\.aligned\.m8n8\.x4\.trans\.shared\.b16/);
        } else expect(body, `Cfg${i}`).not.toMatch(tensorCores);
      }
      // The lane = token reference kernel trips the lint.
      expect(ptxEntry(text, 'decode_sequence_first_kernel')).toMatch(/ld\.shared\.(u16|b16)/);
    },
  );
});
