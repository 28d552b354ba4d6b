// The phase-1 kernel (decode_phase1.cuh) compiled by nvcc for sm_80 and sm_90a, each arch checked
// on its own (spills differ by arch), over a spec matrix of D ∈ {64, 128, 256} × G ∈ {1, 8} plus a
// masked, score-modded variant, and the PSA list-driven instances (kListed: chunk_select_mask.cuh)
// of three of them: no spills, no local memory, registers within the plan's budget,
// no static shared memory (the plan's dynamic arena is checked against C++ in
// emu-phase1.test.ts). And a PTX lint: tensor cores (mma.sync m16n8k16) fed by ldmatrix, K/V by
// cp.async with a wait_group ≥ 1 in the loop, no 2-byte shared loads, no local loads or stores.

import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parsePtxasReport } from '../codegen/index.ts';
import { phase1Geometry } from '../codegen/plan.ts';
import { attention } from '../dsl/index.ts';
import { haveNvcc } from '../runtime/cucpu/tools/test-harness.ts';
import { buildPtxMatrix, PTX_ARCHS, type PtxMatrix, ptxEntry } from './ptx-matrix.ts';

const MATRIX = [
  ...[64, 128, 256].flatMap((d) =>
    [1, 8].map((g) => ({
      d,
      g,
      dtype: d === 128 ? 'bf16' : 'f16',
      variant: 'Plain',
      listed: false,
      chunk: 64,
    })),
  ),
  { d: 128, g: 2, dtype: 'bf16', variant: 'SoftcapWindow', listed: false, chunk: 64 },
  { d: 128, g: 1, dtype: 'bf16', variant: 'Plain', listed: true, chunk: 64 },
  { d: 256, g: 8, dtype: 'f16', variant: 'Plain', listed: true, chunk: 64 },
  { d: 128, g: 2, dtype: 'bf16', variant: 'SoftcapWindow', listed: true, chunk: 64 },
  { d: 128, g: 2, dtype: 'bf16', variant: 'SoftcapWindow', listed: true, chunk: 16 },
  { d: 256, g: 1, dtype: 'f16', variant: 'Plain', listed: true, chunk: 16 },
];
/** Mangled name of instance i ("<length>Cfg<i>"), and the instance a mangled symbol names. */
const cfgName = (i: number) => `${3 + String(i).length}Cfg${i}`;
function instanceOf(symbol: string): number {
  const m = /(\d)Cfg(\d+)/.exec(symbol)!;
  return Number(m[2]!.slice(0, Number(m[1]) - 3));
}
const ARCHS = PTX_ARCHS;

function plan(i: number) {
  const { d, g, dtype, chunk, variant, listed } = MATRIX[i]!;
  return phase1Geometry(
    attention({
      name: `matrix-${i}`,
      heads: { q: 8 * g, kv: 8 },
      headDim: d as 64 | 128 | 256,
      dtype: dtype as 'f16' | 'bf16',
      chunkSize: chunk as 16 | 64,
      targets: ['sm_80'],
      ...(variant === 'Plain' ? {} : { mask: (pos: { q: number; kv: number }) => pos.q - pos.kv < 64 }),
    }),
    listed,
  );
}

function source(): string {
  const cfgs = MATRIX.map(
    ({ d, g, dtype, variant, listed, chunk }, i) => `struct Cfg${i} {
  static constexpr int kQHeads = ${8 * g}, kKvHeads = 8, kHeadDim = ${d}, kChunk = ${chunk};
  using QT = ca::${dtype}; using KvT = ca::${dtype}; using OutT = ca::${dtype};
};
template __global__ void ca::decode_phase1_kernel<Cfg${i}, ${variant}, ${listed}>(const ca::DecodeView, const ca::DecodeTensors, const ca::Phase1Io);`,
  );
  return `#define CA_TARGET_CUDA 1
#include "chunkattn/decode_phase1.cuh"
struct Plain {
  static constexpr bool kHasScoreMod = false, kHasMask = false;
  CA_HD static float score_mod(float s, const ca::Pos&, const float*) { return s; }
  CA_HD static bool mask(const ca::Pos&, const float*) { return true; }
};
struct SoftcapWindow {
  static constexpr bool kHasScoreMod = true, kHasMask = true;
  CA_HD static float score_mod(float s, const ca::Pos&, const float* p) { return p[0] * tanhf(s / p[0]); }
  CA_HD static bool mask(const ca::Pos& pos, const float* p) { return float(pos.q) - float(pos.kv) < p[1]; }
};
${cfgs.join('\n')}
`;
}

let matrix: PtxMatrix | undefined;
let report = '';
let ptx: PtxMatrix['ptx'] = new Map();

describe.skipIf(!haveNvcc)('nvcc: the phase-1 kernel per arch', () => {
  beforeAll(async () => {
    matrix = await buildPtxMatrix(source(), 'phase1-ptx-');
    ({ report, ptx } = matrix);
  }, 600_000);
  afterAll(() => matrix?.dispose());

  test.each(ARCHS)(
    '%s: every instance has 0 spill bytes, no local memory, registers within the plan, no static smem',
    (arch) => {
      const records = parsePtxasReport(report).filter(
        (r) => r.arch === arch && /decode_phase1/.test(r.symbol),
      );
      expect(records.length).toBe(MATRIX.length);
      for (const r of records) {
        const what = `${r.symbol} ${arch}: ${r.registers} registers`;
        expect(r.spillStoreBytes + r.spillLoadBytes, what).toBe(0);
        expect(r.stackBytes, what).toBe(0);
        expect(r.registers, what).toBeLessThanOrEqual(plan(instanceOf(r.symbol)).maxRegisters);
        expect(r.smemBytes, what).toBe(0);
      }
    },
  );

  test.each(ARCHS)(
    '%s PTX lint: mma.sync m16n8k16, ldmatrix, cp.async with wait_group ≥ 1; no 2-byte shared loads, no local memory',
    (arch) => {
      const text = ptx.get(arch) ?? '';
      expect(text.length).toBeGreaterThan(0);
      for (const [i, { variant }] of MATRIX.entries()) {
        const body = ptxEntry(text, `decode_phase1_kernelI${cfgName(i)}${variant.length}${variant}`);
        expect(body.length, `decode_phase1 Cfg${i}`).toBeGreaterThan(0);
        expect(body).toMatch(/mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(f16|bf16)\.(f16|bf16)\.f32/);
        expect(body).toMatch(/ldmatrix\.sync\.aligned\.m8n8\.x4\.shared\.b16/);
        expect(body).toMatch(/ldmatrix\.sync\.aligned\.m8n8\.x4\.trans\.shared\.b16/);
        expect(body).toMatch(/cp\.async\.cg\.shared\.global/);
        const waits = [...body.matchAll(/cp\.async\.wait_group\s+(\d+)/g)].map((m) => Number(m[1]));
        expect(
          waits.some((n) => n >= 1),
          `Cfg${i} waits ${waits}`,
        ).toBe(true);
        expect(body).not.toMatch(/ld\.shared\.(u16|b16|s16)/);
        expect(body).not.toMatch(/\b(ld|st)\.local\b/);
        expect(body).not.toMatch(/\.local\s/);
      }
    },
  );
});
