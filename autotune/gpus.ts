// The GPUs we tune for: per-architecture resource limits (what the occupancy rules need) and
// per-product throughput figures (what the performance model needs).
//
// Sources, cited per figure below:
//   [CG]  CUDA C++ Programming Guide, "Compute Capabilities", table "Technical Specifications
//         per Compute Capability" (threads, warps, CTAs, registers and shared memory per SM).
//   [OCC] cuda_occupancy.h from the CUDA toolkit (the code behind
//         cudaOccupancyMaxActiveBlocksPerMultiprocessor): allocation granularities, the 4
//         register sub-partitions, the 1 KB reserved per CTA on compute capability 8.0+.
//   [A100] NVIDIA A100 Tensor Core GPU Architecture whitepaper (Table 1) and the A100 80GB
//          datasheet.        [GA102] NVIDIA Ampere GA102 GPU Architecture whitepaper.
//   [A10]  NVIDIA A10 Tensor Core GPU datasheet.   [L4] NVIDIA L4 Tensor Core GPU datasheet.
//   [ADA]  NVIDIA Ada GPU Architecture whitepaper (RTX 4090 and L4 tables).
//   [H100] NVIDIA H100 Tensor Core GPU Architecture whitepaper and the H100 datasheet.
//   [H200] NVIDIA H200 Tensor Core GPU datasheet.
// Tensor throughput is dense (no 2:4 sparsity) fp16 with fp32 accumulation, the mode our kernels
// use; GeForce parts run that mode at half their fp16-accumulate rate.

import type { Arch } from '../dsl/spec.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/** What the occupancy rules need: identical for every GPU of one compute capability. */
export interface ArchLimits {
  readonly arch: Arch;
  readonly computeCapability: '8.0' | '8.6' | '8.9' | '9.0';
  readonly warpSize: 32;
  readonly maxThreadsPerBlock: number;
  readonly maxThreadsPerSm: number;
  readonly maxWarpsPerSm: number;
  readonly maxCtasPerSm: number;
  readonly registersPerSm: number;
  readonly registersPerBlock: number;
  readonly maxRegistersPerThread: number;
  /** Registers are allocated per warp in units of this many. */
  readonly registerAllocationUnit: number;
  /** The register file is split into this many sub-partitions (one per SM scheduler). */
  readonly registerSubPartitions: number;
  /** Shared memory per SM at the largest carveout, bytes. */
  readonly smemPerSmBytes: number;
  /** Largest dynamic shared memory one CTA may opt into (cudaFuncAttributeMaxDynamicSharedMemorySize). */
  readonly smemPerBlockOptinBytes: number;
  readonly smemAllocationUnit: number;
  /** Shared memory the driver reserves for every resident CTA (sm_80+). */
  readonly smemReservedPerBlockBytes: number;
}

// Common to 8.0, 8.6, 8.9 and 9.0 [CG]: 1024 threads/block, 64K 32-bit registers per SM and per
// block, 255 registers per thread. [OCC]: registers in units of 256 per warp over 4
// sub-partitions; shared memory in units of 128 B; 1 KB reserved per CTA from 8.0 on.
const COMMON = {
  warpSize: 32,
  maxThreadsPerBlock: 1024,
  registersPerSm: 65536,
  registersPerBlock: 65536,
  maxRegistersPerThread: 255,
  registerAllocationUnit: 256,
  registerSubPartitions: 4,
  smemAllocationUnit: 128,
  smemReservedPerBlockBytes: 1 * KiB,
} as const;

export const ARCH_LIMITS: Readonly<Record<Arch, ArchLimits>> = {
  // [CG] 8.0: 2048 threads, 64 warps, 32 CTAs per SM; 164 KB shared per SM, 163 KB per block.
  sm_80: {
    ...COMMON,
    arch: 'sm_80',
    computeCapability: '8.0',
    maxThreadsPerSm: 2048,
    maxWarpsPerSm: 64,
    maxCtasPerSm: 32,
    smemPerSmBytes: 164 * KiB,
    smemPerBlockOptinBytes: 163 * KiB,
  },
  // [CG] 8.6: 1536 threads, 48 warps, 16 CTAs per SM; 100 KB shared per SM, 99 KB per block.
  sm_86: {
    ...COMMON,
    arch: 'sm_86',
    computeCapability: '8.6',
    maxThreadsPerSm: 1536,
    maxWarpsPerSm: 48,
    maxCtasPerSm: 16,
    smemPerSmBytes: 100 * KiB,
    smemPerBlockOptinBytes: 99 * KiB,
  },
  // [CG] 8.9: 1536 threads, 48 warps, 24 CTAs per SM; 100 KB shared per SM, 99 KB per block.
  sm_89: {
    ...COMMON,
    arch: 'sm_89',
    computeCapability: '8.9',
    maxThreadsPerSm: 1536,
    maxWarpsPerSm: 48,
    maxCtasPerSm: 24,
    smemPerSmBytes: 100 * KiB,
    smemPerBlockOptinBytes: 99 * KiB,
  },
  // [CG] 9.0: 2048 threads, 64 warps, 32 CTAs per SM; 228 KB shared per SM, 227 KB per block.
  sm_90a: {
    ...COMMON,
    arch: 'sm_90a',
    computeCapability: '9.0',
    maxThreadsPerSm: 2048,
    maxWarpsPerSm: 64,
    maxCtasPerSm: 32,
    smemPerSmBytes: 228 * KiB,
    smemPerBlockOptinBytes: 227 * KiB,
  },
};

export const GPU_IDS = [
  'a100-40',
  'a100-80',
  'a10',
  'rtx3090',
  'l4',
  'rtx4090',
  'h100-sxm',
  'h100-pcie',
  'h200',
] as const;
export type GpuId = (typeof GPU_IDS)[number];

export interface GpuSpec {
  readonly id: GpuId;
  readonly name: string;
  readonly limits: ArchLimits;
  readonly sms: number;
  /** Boost clock, MHz: the one the vendor's peak throughput figures are computed at. */
  readonly clockMhz: number;
  readonly memory: 'HBM2' | 'HBM2e' | 'HBM3' | 'HBM3e' | 'GDDR6' | 'GDDR6X';
  /** Peak DRAM bandwidth, GB/s (10^9 bytes). */
  readonly dramGBs: number;
  /** Dense fp16 tensor-core throughput with fp32 accumulation, TFLOPS. */
  readonly fp16TensorTflops: number;
  /** fp32 CUDA-core (non-tensor) throughput, TFLOPS. */
  readonly fp32Tflops: number;
  readonly l2Bytes: number;
}

export const GPUS: Readonly<Record<GpuId, GpuSpec>> = {
  // [A100] Table 1: 108 SMs, 1410 MHz boost, 40 MB L2, 312 dense fp16 TFLOPS (fp32 accumulate
  // runs at the same rate on A100), 19.5 fp32 TFLOPS; 40 GB HBM2 at 1555 GB/s.
  'a100-40': {
    id: 'a100-40',
    name: 'A100-SXM4-40GB',
    limits: ARCH_LIMITS.sm_80,
    sms: 108,
    clockMhz: 1410,
    memory: 'HBM2',
    dramGBs: 1555,
    fp16TensorTflops: 312,
    fp32Tflops: 19.5,
    l2Bytes: 40 * MiB,
  },
  // [A100] datasheet, A100 80GB SXM: same chip, HBM2e at 2039 GB/s. The paper's Table 3 GPU.
  'a100-80': {
    id: 'a100-80',
    name: 'A100-SXM4-80GB',
    limits: ARCH_LIMITS.sm_80,
    sms: 108,
    clockMhz: 1410,
    memory: 'HBM2e',
    dramGBs: 2039,
    fp16TensorTflops: 312,
    fp32Tflops: 19.5,
    l2Bytes: 40 * MiB,
  },
  // [A10]: 72 SMs (9216 CUDA cores / 128), 1695 MHz boost, 24 GB GDDR6 at 600 GB/s, 125 dense
  // fp16 tensor TFLOPS (250 with sparsity), 31.2 fp32 TFLOPS; [GA102]: 6 MB L2.
  a10: {
    id: 'a10',
    name: 'A10',
    limits: ARCH_LIMITS.sm_86,
    sms: 72,
    clockMhz: 1695,
    memory: 'GDDR6',
    dramGBs: 600,
    fp16TensorTflops: 125,
    fp32Tflops: 31.2,
    l2Bytes: 6 * MiB,
  },
  // [GA102] Table (RTX 3090): 82 SMs, 1695 MHz boost, GDDR6X at 936 GB/s, 6 MB L2; fp16
  // tensor with fp32 accumulate 71 dense TFLOPS (142 with fp16 accumulate); 35.6 fp32 TFLOPS.
  rtx3090: {
    id: 'rtx3090',
    name: 'GeForce RTX 3090',
    limits: ARCH_LIMITS.sm_86,
    sms: 82,
    clockMhz: 1695,
    memory: 'GDDR6X',
    dramGBs: 936,
    fp16TensorTflops: 71,
    fp32Tflops: 35.6,
    l2Bytes: 6 * MiB,
  },
  // [L4]: 58 SMs (7424 CUDA cores / 128), 2040 MHz boost, 24 GB GDDR6 at 300 GB/s, 242 fp16
  // tensor TFLOPS with sparsity = 121 dense, 30.3 fp32 TFLOPS; [ADA]: 48 MB L2.
  l4: {
    id: 'l4',
    name: 'L4',
    limits: ARCH_LIMITS.sm_89,
    sms: 58,
    clockMhz: 2040,
    memory: 'GDDR6',
    dramGBs: 300,
    fp16TensorTflops: 121,
    fp32Tflops: 30.3,
    l2Bytes: 48 * MiB,
  },
  // [ADA] Table (RTX 4090): 128 SMs, 2520 MHz boost, GDDR6X at 1008 GB/s, 72 MB L2; fp16 tensor
  // with fp32 accumulate 165.2 dense TFLOPS (330.3 with fp16 accumulate); 82.6 fp32 TFLOPS.
  rtx4090: {
    id: 'rtx4090',
    name: 'GeForce RTX 4090',
    limits: ARCH_LIMITS.sm_89,
    sms: 128,
    clockMhz: 2520,
    memory: 'GDDR6X',
    dramGBs: 1008,
    fp16TensorTflops: 165.2,
    fp32Tflops: 82.6,
    l2Bytes: 72 * MiB,
  },
  // [H100] SXM5: 132 SMs, 50 MB L2, 80 GB HBM3 at 3350 GB/s, 989.4 dense fp16 tensor TFLOPS
  // (1979 with sparsity), 66.9 fp32 TFLOPS. 1830 MHz is the clock those peaks are computed at
  // (989.4e12 = 132 SMs x 4096 FLOP/clk x 1.83 GHz); the fp32 peak uses the 1980 MHz maximum
  // boost (66.9e12 = 132 x 256 FLOP/clk x 1.98 GHz).
  'h100-sxm': {
    id: 'h100-sxm',
    name: 'H100-SXM5-80GB',
    limits: ARCH_LIMITS.sm_90a,
    sms: 132,
    clockMhz: 1830,
    memory: 'HBM3',
    dramGBs: 3350,
    fp16TensorTflops: 989.4,
    fp32Tflops: 66.9,
    l2Bytes: 50 * MiB,
  },
  // [H100] PCIe: 114 SMs, 50 MB L2, 80 GB HBM2e at 2000 GB/s, 756 dense fp16 tensor TFLOPS
  // (1513 with sparsity), 51.2 fp32 TFLOPS; 756e12 / (114 x 4096 FLOP/clk) puts those peaks at
  // 1620 MHz (the fp32 peak uses the 1755 MHz maximum boost: 114 x 256 x 1.755 GHz).
  'h100-pcie': {
    id: 'h100-pcie',
    name: 'H100-PCIe-80GB',
    limits: ARCH_LIMITS.sm_90a,
    sms: 114,
    clockMhz: 1620,
    memory: 'HBM2e',
    dramGBs: 2000,
    fp16TensorTflops: 756,
    fp32Tflops: 51.2,
    l2Bytes: 50 * MiB,
  },
  // [H200]: the H100 SXM chip (132 SMs, 50 MB L2, same compute peaks: 1979 sparse = 989.4 dense
  // fp16 tensor TFLOPS, 67 fp32) with 141 GB HBM3e at 4800 GB/s.
  h200: {
    id: 'h200',
    name: 'H200-SXM-141GB',
    limits: ARCH_LIMITS.sm_90a,
    sms: 132,
    clockMhz: 1830,
    memory: 'HBM3e',
    dramGBs: 4800,
    fp16TensorTflops: 989.4,
    fp32Tflops: 66.9,
    l2Bytes: 50 * MiB,
  },
};

/** Short names the CLI accepts (`--gpu a100`) for the product most people mean. */
const ALIASES: Readonly<Record<string, GpuId>> = {
  a100: 'a100-80',
  h100: 'h100-sxm',
  '3090': 'rtx3090',
  '4090': 'rtx4090',
};

export class UnknownGpuError extends Error {
  override name = 'UnknownGpuError';
}

/** The table entry for an id or alias (case-insensitive); throws naming the choices otherwise. */
export function findGpu(name: string): GpuSpec {
  const lower = name.toLowerCase();
  const id = (ALIASES[lower] ?? lower) as GpuId;
  const gpu = (GPUS as Record<string, GpuSpec | undefined>)[id];
  if (!gpu)
    throw new UnknownGpuError(
      `unknown GPU '${name}'; known: ${GPU_IDS.join(', ')} (aliases: ${Object.keys(ALIASES).join(', ')})`,
    );
  return gpu;
}
