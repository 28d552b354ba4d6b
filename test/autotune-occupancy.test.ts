// Occupancy against cases computed by hand with NVIDIA's rules (cuda_occupancy.h): each test
// shows the arithmetic. Abbreviations: W = warps per CTA, R = registers per warp after rounding
// to 256, S = shared memory per CTA after the 1 KB reserve and rounding to 128 B.

import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { ARCH_LIMITS, findGpu, GPUS } from '../autotune/gpus.ts';
import { moduleOccupancy, occupancy, pruneReason } from '../autotune/occupancy.ts';
import { buildModule, parsePtxasReport } from '../codegen/index.ts';
import type { KernelResources } from '../codegen/ptxas.ts';
import { loadSpecs } from '../dsl/index.ts';

const sm80 = ARCH_LIMITS.sm_80;
const sm86 = ARCH_LIMITS.sm_86;
const sm89 = ARCH_LIMITS.sm_89;
const sm90 = ARCH_LIMITS.sm_90a;

const kernel = (threads: number, registers: number, dynamicSmem: number, staticSmem = 0) => ({
  threadsPerBlock: threads,
  registersPerThread: registers,
  staticSmemBytes: staticSmem,
  dynamicSmemBytes: dynamicSmem,
});

describe('occupancy on sm_80 (A100)', () => {
  test('register-limited: 256 threads x 128 registers', () => {
    // W = 8; R = 128*32 = 4096; per sub-partition 16384/4096 = 4 warps -> 16 warps -> 16/8 = 2.
    // warps 64/8 = 8; S = 0 + 1024 -> 1024: 167936/1024 = 164; CTA limit 32.
    const occ = occupancy(sm80, kernel(256, 128, 0));
    expect(occ).toMatchObject({ ctasPerSm: 2, byRegisters: 2, byWarps: 8, bySmem: 164, byCtas: 32 });
    expect(occ.limitedBy).toEqual(['registers']);
    expect(occ.fraction).toBe(16 / 64);
  });

  test('register granularity: 65 registers cost as much as 72', () => {
    // 128 threads, W = 4. 65*32 = 2080 -> rounded to 2304 (9 x 256); 16384/2304 = 7.1 -> 7
    // warps per sub-partition -> 28 warps -> 28/4 = 7 CTAs. At 64 registers: 2048 -> 8 -> 32/4 = 8.
    expect(occupancy(sm80, kernel(128, 65, 0))).toMatchObject({ ctasPerSm: 7, registersPerWarp: 2304 });
    expect(occupancy(sm80, kernel(128, 72, 0)).ctasPerSm).toBe(7);
    expect(occupancy(sm80, kernel(128, 64, 0))).toMatchObject({ ctasPerSm: 8, registersPerWarp: 2048 });
  });

  test('smem-limited: the prototype phase 1 (128 threads, 168 registers, 69,648 B) fits 2', () => {
    // S = 69648 + 1024 = 70672 -> 553 x 128 = 70784; 167936/70784 = 2.37 -> 2.
    // registers: 168*32 = 5376 (21 x 256); 16384/5376 = 3 warps per sub-partition -> 12 warps
    // -> 12/4 = 3. warps 64/4 = 16.
    const occ = occupancy(sm80, kernel(128, 168, 69648));
    expect(occ).toMatchObject({ ctasPerSm: 2, smemPerCtaBytes: 70784, bySmem: 2, byRegisters: 3 });
    expect(occ.limitedBy).toEqual(['smem']);
  });

  test('CTA-limited: one warp, 32 registers, no shared memory', () => {
    // W = 1: warps 64/1 = 64; R = 1024: 16 warps per sub-partition -> 64; S = 1024 -> 164.
    // The CTA limit, 32, binds.
    const occ = occupancy(sm80, kernel(32, 32, 0));
    expect(occ).toMatchObject({ ctasPerSm: 32, byWarps: 64, byRegisters: 64, bySmem: 164 });
    expect(occ.limitedBy).toEqual(['ctas']);
  });

  test('the opt-in maximum plus the reserve is exactly one SM', () => {
    // 163 KB = 166912 B dynamic; S = 166912 + 1024 = 167936 = 164 KB -> 1 CTA. One byte more
    // exceeds the opt-in maximum and cannot launch.
    expect(occupancy(sm80, kernel(128, 32, 166912))).toMatchObject({ ctasPerSm: 1, limitedBy: ['smem'] });
    expect(occupancy(sm80, kernel(128, 32, 166913))).toMatchObject({ ctasPerSm: 0, limitedBy: ['smem'] });
    // Static smem counts too: 160 KB dynamic + 4 KB static = 164 KB + 1 KB reserve > 164 KB.
    expect(occupancy(sm80, kernel(128, 32, 160 * 1024, 4 * 1024)).ctasPerSm).toBe(0);
  });

  test('the per-CTA register check: 1024 threads at 64 registers fit, at 72 they cannot launch', () => {
    // W = 32. 64 regs: R = 2048, 2048 x 32 = 65536 <= 65536 -> per SM 16384/2048 = 8 x 4 = 32
    // warps -> 1 CTA. 72 regs: R = 2304, 2304 x 32 = 73728 > 65536 -> 0.
    expect(occupancy(sm80, kernel(1024, 64, 0)).ctasPerSm).toBe(1);
    expect(occupancy(sm80, kernel(1024, 72, 0))).toMatchObject({ ctasPerSm: 0, limitedBy: ['registers'] });
    // 255 registers, one warp: 255*32 = 8160 -> 8192; 16384/8192 = 2 per sub-partition -> 8.
    expect(occupancy(sm80, kernel(32, 255, 0))).toMatchObject({ ctasPerSm: 8, limitedBy: ['registers'] });
    expect(occupancy(sm80, kernel(32, 256, 0)).ctasPerSm).toBe(0);
  });

  test('partial warps are allocated whole, and blocks over 1024 threads cannot launch', () => {
    // 100 threads -> W = 4 (not 3.125): warps 64/4 = 16.
    expect(occupancy(sm80, kernel(100, 16, 0))).toMatchObject({ warpsPerCta: 4, ctasPerSm: 16 });
    expect(occupancy(sm80, kernel(1025, 16, 0))).toMatchObject({ ctasPerSm: 0, limitedBy: ['threads'] });
  });
});

describe('occupancy on sm_90 (H100)', () => {
  test('register-limited: 384 threads x 80 registers', () => {
    // W = 12; R = 80*32 = 2560 (10 x 256); 16384/2560 = 6.4 -> 6 per sub-partition -> 24 warps
    // -> 24/12 = 2. warps 64/12 = 5; S = 1024 -> 228 KB / 1 KB = 228.
    const occ = occupancy(sm90, kernel(384, 80, 0));
    expect(occ).toMatchObject({ ctasPerSm: 2, byWarps: 5, byRegisters: 2, bySmem: 228 });
    expect(occ.limitedBy).toEqual(['registers']);
  });

  test('smem-limited: 128 threads, 48 KB dynamic', () => {
    // S = 49152 + 1024 = 50176 (392 x 128 exactly); 233472/50176 = 4.65 -> 4.
    // registers 32: R = 1024 -> 16 per sub-partition -> 64 warps -> 16; warps 64/4 = 16.
    const occ = occupancy(sm90, kernel(128, 32, 48 * 1024));
    expect(occ).toMatchObject({ ctasPerSm: 4, bySmem: 4, byRegisters: 16, byWarps: 16 });
    expect(occ.limitedBy).toEqual(['smem']);
  });

  test('CTA-limited: one warp with 1 KB of dynamic smem', () => {
    // warps 64; R = 1024 -> 64; S = 1024 + 1024 = 2048 -> 233472/2048 = 114; CTA limit 32.
    const occ = occupancy(sm90, kernel(32, 32, 1024));
    expect(occ).toMatchObject({ ctasPerSm: 32, bySmem: 114, limitedBy: ['ctas'] });
  });

  test('the prototype phase 1 (164 registers, 69,648 B) fits 3, registers and smem binding together', () => {
    // registers: 164*32 = 5248 -> 5376 (21 x 256); 16384/5376 = 3 -> 12 warps -> 3.
    // S = 70784 (as on sm_80); 233472/70784 = 3.3 -> 3.
    const occ = occupancy(sm90, kernel(128, 164, 69648));
    expect(occ).toMatchObject({ ctasPerSm: 3, limitedBy: ['registers', 'smem'] });
  });

  test('227 KB is the largest dynamic allocation', () => {
    expect(occupancy(sm90, kernel(128, 32, 227 * 1024)).ctasPerSm).toBe(1);
    expect(occupancy(sm90, kernel(128, 32, 227 * 1024 + 1)).ctasPerSm).toBe(0);
  });
});

describe('occupancy on sm_86 and sm_89', () => {
  test('48 warps per SM limit 256-thread CTAs to 6', () => {
    // W = 8: warps 48/8 = 6; R = 1024 -> 64 warps -> 8; CTA limit 16 (sm_86) / 24 (sm_89).
    expect(occupancy(sm86, kernel(256, 32, 0))).toMatchObject({ ctasPerSm: 6, limitedBy: ['warps'] });
    expect(occupancy(sm89, kernel(256, 32, 0))).toMatchObject({ ctasPerSm: 6, limitedBy: ['warps'] });
  });

  test('the CTA limit differs: 16 on sm_86, 24 on sm_89', () => {
    // One warp: warps 48, registers 64, smem 102400/1024 = 100; the CTA limit binds.
    expect(occupancy(sm86, kernel(32, 32, 0))).toMatchObject({ ctasPerSm: 16, limitedBy: ['ctas'] });
    expect(occupancy(sm89, kernel(32, 32, 0))).toMatchObject({ ctasPerSm: 24, limitedBy: ['ctas'] });
  });

  test('99 KB is the most one CTA may use', () => {
    expect(occupancy(sm86, kernel(128, 32, 99 * 1024)).ctasPerSm).toBe(1);
    expect(occupancy(sm86, kernel(128, 32, 99 * 1024 + 1)).ctasPerSm).toBe(0);
  });
});

test('bad input is rejected with the field name', () => {
  expect(() => occupancy(sm80, kernel(0, 32, 0))).toThrow(/threadsPerBlock/);
  expect(() => occupancy(sm80, kernel(128, -1, 0))).toThrow(/registersPerThread/);
  expect(() => occupancy(sm80, kernel(128, 32, 1.5))).toThrow(/dynamicSmemBytes/);
});

describe('pruning on ptxas resources', () => {
  const resources = (overrides: Partial<KernelResources>): KernelResources => ({
    symbol: 'k',
    arch: 'sm_80',
    registers: 64,
    smemBytes: 0,
    stackBytes: 0,
    spillStoreBytes: 0,
    spillLoadBytes: 0,
    barriers: 1,
    ...overrides,
  });
  const launch = { kernel: 'phase2', threadsPerBlock: 128, smemBytes: 32 * 1024 };

  test('a clean kernel passes; spills, a stack frame or low occupancy reject it', () => {
    expect(pruneReason(sm80, launch, resources({}))).toBeNull();
    expect(pruneReason(sm80, launch, resources({ spillStoreBytes: 8 }))).toMatch(/spills 8 B stores/);
    expect(pruneReason(sm80, launch, resources({ stackBytes: 16 }))).toMatch(/local memory/);
    // 33792 B per CTA on sm_80 -> 4 CTAs: under a minimum of 5.
    expect(pruneReason(sm80, launch, resources({}), 5)).toMatch(/4 CTAs\/SM \(limited by smem\), below 5/);
  });
});

describe('GPU table', () => {
  test('every GPU resolves by id, aliases resolve, unknown names list the choices', () => {
    for (const id of Object.keys(GPUS)) expect(findGpu(id).id).toBe(id);
    expect(findGpu('A100').id).toBe('a100-80');
    expect(findGpu('h100').id).toBe('h100-sxm');
    expect(() => findGpu('v100')).toThrow(/unknown GPU 'v100'; known: a100-40/);
  });

  test('peak tensor throughput agrees with SMs x FLOP/clk x clock (within 1%)', () => {
    // Per SM and clock, dense fp16 with fp32 accumulate: A100 2048 FLOP, GA10x/AD10x data center
    // parts 1024, GeForce 512 (half rate with fp32 accumulate), Hopper 4096.
    const perClock: Record<string, number> = {
      'a100-40': 2048,
      'a100-80': 2048,
      a10: 1024,
      rtx3090: 512,
      l4: 1024,
      rtx4090: 512,
      'h100-sxm': 4096,
      'h100-pcie': 4096,
      h200: 4096,
    };
    for (const gpu of Object.values(GPUS)) {
      const computed = (gpu.sms * perClock[gpu.id]! * gpu.clockMhz * 1e6) / 1e12;
      expect(Math.abs(computed / gpu.fp16TensorTflops - 1), gpu.id).toBeLessThan(0.01);
    }
  });
});

describe('occupancy of built modules, from the ptxas report', () => {
  // A ptxas -v report as nvcc prints it for one kernel on two archs.
  const REPORT = `ptxas info    : Compiling entry function '_ZN2ca13phase2_kernelEv' for 'sm_80'
ptxas info    : Function properties for _ZN2ca13phase2_kernelEv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 544 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN2ca13phase2_kernelEv' for 'sm_90a'
ptxas info    : Function properties for _ZN2ca13phase2_kernelEv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 544 bytes cmem[0]
`;
  const kernels = [
    { kernel: 'phase2', grid: 'rows × kvHeads', threadsPerBlock: 128, smemBytes: 17552, maxRegisters: 128 },
  ];

  test('per arch: the plan gives threads and dynamic smem, ptxas the registers', () => {
    const resources = parsePtxasReport(REPORT);
    // sm_80: 40 regs -> 1280 per warp; 16384/1280 = 12 per sub-partition -> 48 warps -> 12.
    // S = 17552 + 1024 = 18576 -> 146 x 128 = 18688; 167936/18688 = 8.98 -> 8 (smem-limited).
    const [a100] = moduleOccupancy(sm80, { kernels, resources });
    expect(a100!.occupancy).toMatchObject({
      ctasPerSm: 8,
      byRegisters: 12,
      smemPerCtaBytes: 18688,
      limitedBy: ['smem'],
    });
    // sm_90a: 96 regs -> 3072 per warp; 16384/3072 = 5 -> 20 warps -> 5 CTAs (registers);
    // smem 233472/18688 = 12.
    const [h100] = moduleOccupancy(sm90, { kernels, resources });
    expect(h100!.occupancy).toMatchObject({ ctasPerSm: 5, bySmem: 12, limitedBy: ['registers'] });
    expect(() => moduleOccupancy(sm86, { kernels, resources })).toThrow(/no ptxas record for sm_86/);
  });

  test('the committed llama2-7b cuda module has an occupancy on A100 and H100', async () => {
    const [spec] = await loadSpecs(join(import.meta.dirname, '..', 'examples', 'llama2-7b.ts'));
    const { manifest } = await buildModule(spec!, { target: 'cuda', archs: ['sm_80', 'sm_90a'] });
    for (const limits of [sm80, sm90]) {
      const all = moduleOccupancy(limits, manifest);
      expect(all.map((k) => k.kernel)).toEqual(manifest.kernels.map((k) => k.kernel));
      for (const k of all) {
        expect(k.resources.arch).toBe(limits.arch);
        expect(k.occupancy.ctasPerSm, `${k.kernel} on ${limits.arch}`).toBeGreaterThanOrEqual(1);
      }
    }
  });
});
