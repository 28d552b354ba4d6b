// CTAs resident per SM, following the rules of cuda_occupancy.h (the code behind
// cudaOccupancyMaxActiveBlocksPerMultiprocessor) at the default (largest) shared-memory carveout:
//
//   warps      a CTA takes ceil(threads / 32) warp slots; CTAs by warps = maxWarpsPerSm / warps.
//   registers  a warp is allocated ceil(regs x 32 / 256) x 256 registers. The register file is
//              4 sub-partitions of 16K; each holds floor(16K / regsPerWarp) warps, so
//              CTAs by registers = 4 x floor(16K / regsPerWarp) / warps. A CTA must also pass
//              the hardware's per-CTA check, which rounds its warps up to a multiple of 4.
//   smem       a CTA takes static + dynamic + the 1 KB the driver reserves (sm_80+), rounded up
//              to 128 B; CTAs by smem = smemPerSm / that. Dynamic smem above the opt-in maximum
//              cannot launch at all.
//   CTAs       the per-SM CTA limit (32 on sm_80/sm_90, 16 on sm_86, 24 on sm_89).
//
// The inputs are what the build knows: threads and dynamic smem from the plan, registers and
// static smem from ptxas (codegen/ptxas.ts).

import type { KernelLaunchPlan } from '../codegen/plan.ts';
import type { KernelResources } from '../codegen/ptxas.ts';
import type { ArchLimits } from './gpus.ts';

export interface OccupancyInput {
  readonly threadsPerBlock: number;
  /** Registers per thread as ptxas reports them. */
  readonly registersPerThread: number;
  readonly staticSmemBytes: number;
  readonly dynamicSmemBytes: number;
}

export type OccupancyLimiter = 'threads' | 'warps' | 'registers' | 'smem' | 'ctas';

export interface Occupancy {
  readonly ctasPerSm: number;
  /** Every limit that equals the result (several may bind at once); for 0, why it cannot launch. */
  readonly limitedBy: readonly OccupancyLimiter[];
  /** CTAs per SM each resource alone would allow. */
  readonly byWarps: number;
  readonly byRegisters: number;
  readonly bySmem: number;
  readonly byCtas: number;
  readonly warpsPerCta: number;
  readonly registersPerWarp: number;
  /** Shared memory one resident CTA takes, reserve and rounding included. */
  readonly smemPerCtaBytes: number;
  /** Resident warps / maximum warps per SM. */
  readonly fraction: number;
}

const roundUp = (value: number, unit: number) => Math.ceil(value / unit) * unit;

function checkInput(input: OccupancyInput): void {
  for (const [name, value] of Object.entries(input))
    if (!Number.isInteger(value) || value < 0)
      throw new RangeError(`occupancy: ${name} must be a non-negative integer, got ${value}`);
  if (input.threadsPerBlock === 0) throw new RangeError('occupancy: threadsPerBlock must be at least 1');
}

export function occupancy(limits: ArchLimits, input: OccupancyInput): Occupancy {
  checkInput(input);
  const warpsPerCta = Math.ceil(input.threadsPerBlock / limits.warpSize);
  const registersPerWarp = roundUp(input.registersPerThread * limits.warpSize, limits.registerAllocationUnit);
  const smemPerCtaBytes = roundUp(
    input.staticSmemBytes + input.dynamicSmemBytes + limits.smemReservedPerBlockBytes,
    limits.smemAllocationUnit,
  );

  const byWarps = Math.floor(limits.maxWarpsPerSm / warpsPerCta);
  const perSubPartition = limits.registersPerSm / limits.registerSubPartitions;
  const registersFitCta =
    input.registersPerThread <= limits.maxRegistersPerThread &&
    registersPerWarp * roundUp(warpsPerCta, limits.registerSubPartitions) <= limits.registersPerBlock;
  const byRegisters = !registersFitCta
    ? 0
    : registersPerWarp === 0
      ? Number.POSITIVE_INFINITY
      : Math.floor(
          (Math.floor(perSubPartition / registersPerWarp) * limits.registerSubPartitions) / warpsPerCta,
        );
  // The per-CTA cap is the opt-in maximum plus the reserve (cudaOccSMemPerBlock adds it back).
  const smemFitsCta =
    input.dynamicSmemBytes <= limits.smemPerBlockOptinBytes &&
    smemPerCtaBytes <= limits.smemPerBlockOptinBytes + limits.smemReservedPerBlockBytes;
  const bySmem = smemFitsCta ? Math.floor(limits.smemPerSmBytes / smemPerCtaBytes) : 0;
  const byCtas = limits.maxCtasPerSm;

  const threadsFit = input.threadsPerBlock <= limits.maxThreadsPerBlock;
  const ctasPerSm = threadsFit ? Math.min(byWarps, byRegisters, bySmem, byCtas) : 0;
  const limitedBy: OccupancyLimiter[] = [];
  if (!threadsFit) limitedBy.push('threads');
  else {
    if (byWarps === ctasPerSm) limitedBy.push('warps');
    if (byRegisters === ctasPerSm) limitedBy.push('registers');
    if (bySmem === ctasPerSm) limitedBy.push('smem');
    if (byCtas === ctasPerSm) limitedBy.push('ctas');
  }
  return {
    ctasPerSm,
    limitedBy,
    byWarps,
    byRegisters,
    bySmem,
    byCtas,
    warpsPerCta,
    registersPerWarp,
    smemPerCtaBytes,
    fraction: (ctasPerSm * warpsPerCta) / limits.maxWarpsPerSm,
  };
}

/** Occupancy of a planned kernel from the resources ptxas reported for it. */
export function kernelOccupancy(
  limits: ArchLimits,
  launch: Pick<KernelLaunchPlan, 'threadsPerBlock' | 'smemBytes'>,
  resources: Pick<KernelResources, 'registers' | 'smemBytes'>,
): Occupancy {
  return occupancy(limits, {
    threadsPerBlock: launch.threadsPerBlock,
    registersPerThread: resources.registers,
    staticSmemBytes: resources.smemBytes,
    dynamicSmemBytes: launch.smemBytes,
  });
}

/** Why a candidate is rejected before it is timed: spills, local memory, or too few CTAs per SM. */
export function pruneReason(
  limits: ArchLimits,
  launch: Pick<KernelLaunchPlan, 'kernel' | 'threadsPerBlock' | 'smemBytes'>,
  resources: KernelResources,
  minCtasPerSm = 1,
): string | null {
  if (resources.spillStoreBytes > 0 || resources.spillLoadBytes > 0)
    return `${launch.kernel} (${resources.arch}): spills ${resources.spillStoreBytes} B stores, ${resources.spillLoadBytes} B loads`;
  if (resources.stackBytes > 0)
    return `${launch.kernel} (${resources.arch}): ${resources.stackBytes} B stack frame (local memory)`;
  const occ = kernelOccupancy(limits, launch, resources);
  if (occ.ctasPerSm < minCtasPerSm)
    return `${launch.kernel} (${resources.arch}): ${occ.ctasPerSm} CTAs/SM (limited by ${occ.limitedBy.join(', ')}), below ${minCtasPerSm}`;
  return null;
}

export interface KernelOccupancy {
  readonly kernel: string;
  readonly occupancy: Occupancy;
  readonly resources: KernelResources;
}

/**
 * Occupancy of every kernel of a built module on one architecture, from its plan and the ptxas
 * records in its manifest (matched by kernel name, as the build's resource gate matches them).
 */
export function moduleOccupancy(
  limits: ArchLimits,
  module: { readonly kernels: readonly KernelLaunchPlan[]; readonly resources: readonly KernelResources[] },
): KernelOccupancy[] {
  return module.kernels.map((launch) => {
    const resources = module.resources.find(
      (r) => r.arch === limits.arch && r.symbol.includes(launch.kernel),
    );
    if (!resources)
      throw new RangeError(
        `${launch.kernel}: the module has no ptxas record for ${limits.arch} (build it for that arch)`,
      );
    return { kernel: launch.kernel, occupancy: kernelOccupancy(limits, launch, resources), resources };
  });
}
