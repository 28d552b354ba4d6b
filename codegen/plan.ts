// KernelSpec + build target (+ tuning) → KernelPlan: everything the renderer and the builder
// need, as plain data. The plan predicts each kernel's launch geometry and shared memory; the
// build checks the compiled result against it.

import { validateSpec } from '../dsl/attention.ts';
import { ARCHS, type Arch, type BuildTarget, type DType, type KernelSpec, type Target } from '../dsl/spec.ts';
import { canonicalJson, compilerFingerprint, sha256 } from './cache-key.ts';
import { tunablesFor } from './target-tunables.ts';
import type { Toolchain } from './toolchain.ts';

export type Sanitizer = 'none' | 'address' | 'thread';

export interface KernelLaunchPlan {
  readonly kernel: string;
  /** Human-readable grid, e.g. "rows × kvHeads". */
  readonly grid: string;
  readonly threadsPerBlock: number;
  /** Dynamic shared memory per block, bytes (static shared memory is planned as 0). */
  readonly smemBytes: number;
  /** Register budget per thread; more means fewer resident blocks than planned. */
  readonly maxRegisters: number;
}

export interface KernelPlan {
  /** Readable and machine-independent: name, target and a hash of spec, archs, tunables, compiler. */
  readonly key: string;
  /** The cache folder: the key plus a hash of the toolchain (compiler versions, host CPU for cpu). */
  readonly buildId: string;
  readonly name: string;
  readonly target: BuildTarget;
  readonly archs: readonly Arch[];
  readonly sanitize: Sanitizer;
  readonly spec: KernelSpec;
  readonly tunables: Readonly<Record<string, number>>;
  /** Whether the module has a phase-1 (shared-run) kernel; without one, contexts carry no runs. */
  readonly phase1: boolean;
  readonly kernels: readonly KernelLaunchPlan[];
  readonly compilerVersion: string;
}

export interface PlanOptions {
  readonly target: BuildTarget;
  /** GPU archs for the cuda target; default: the spec's arch targets. */
  readonly archs?: readonly Arch[];
  readonly sanitize?: Sanitizer;
  /** Tunable overrides (autotuner results); default: each tunable's default. */
  readonly tunables?: Readonly<Record<string, number>>;
}

export class PlanError extends Error {
  override name = 'PlanError';
}

const DTYPE_BYTES: Record<DType, number> = { f16: 2, bf16: 2, f32: 4 };

const pow2AtLeast = (n: number): number => (n <= 1 ? 1 : 2 * pow2AtLeast(Math.ceil(n / 2)));

/** Mirrors TcEngine in templates/include/chunkattn/tc_engine.cuh: stage tokens, Q registers, ring + Q region. */
function tcEngineGeometry(d: number, kvBytes: number, blocksPerWarp: number, mTile: number) {
  const qInSmem = d > 128;
  // k16 steps of Q held in registers; the others are re-read from a Q region after the ring.
  const qRegSteps = qInSmem ? 0 : blocksPerWarp === 2 && d > 96 ? d / 16 - 1 : d / 16;
  const qRegionBytes = qRegSteps === d / 16 ? 0 : mTile * (d - 16 * qRegSteps + 8) * kvBytes;
  const tileTokens = qInSmem ? 32 : 64;
  const ringBytes = 2 * 2 * tileTokens * (d + 8) * kvBytes;
  return { tileTokens, qRegSteps, loopBytes: ringBytes + qRegionBytes };
}

/**
 * Mirrors Phase2Plan<Cfg, kListed> in templates/include/chunkattn/decode_phase2.cuh (a test checks
 * each instance); `listed`: the PSA decode's list-driven instances, on CUDA cores for every G.
 */
export function phase2Geometry(spec: KernelSpec, listed = false) {
  const group = spec.heads.q / spec.heads.kv;
  const kvBytes = DTYPE_BYTES[spec.dtype.kv];
  const d = spec.headDim;
  // G ≥ 4: tensor cores (one m16 block of the G heads, warps splitting the tokens).
  const tensorCores = group >= 4 && !listed;
  const engine = tcEngineGeometry(d, kvBytes, 1, 16);
  const tcWarps = d > 128 ? 2 : 4;
  const threads = tensorCores ? 32 * tcWarps : 128;
  const laneBytes = group <= 4 || (d * kvBytes) / 8 > 32 ? 16 : 8;
  const vec = laneBytes / kvBytes;
  const minBlocks = tensorCores || 2 * group * vec > 64 ? 2 : 4;
  const maxRegisters = Math.min(255, Math.floor(65536 / (threads * minBlocks)));
  const lanesPerRow = pow2AtLeast(d / vec);
  const groups = tensorCores ? tcWarps : 128 / lanesPerRow;
  const tileTokens = tensorCores ? Math.max(engine.tileTokens, spec.chunkSize) : groups * (group > 4 ? 2 : 4);
  const ringBytes = tensorCores ? engine.loopBytes : 2 * 2 * tileTokens * d * kvBytes;
  const mergeBytes = groups * group * (tensorCores ? d + 8 : d + 4) * 4;
  return {
    tensorCores,
    threads,
    laneBytes,
    lanesPerRow,
    groups,
    tileTokens,
    maxRegisters,
    smemBytes: Math.max(ringBytes, mergeBytes),
    mergeSplitsSmemBytes: group * 16 * 4,
  };
}

/**
 * Archs whose ptxas keeps more registers live in phase 1's loop: two m16 blocks a warp at D = 128
 * spill 4 B there. A build that includes one keeps one block a warp at D = 128 on all its archs
 * (rendered as Cfg::kNarrowPhase1). They have 100 KB of shared memory per SM, so one 8-warp CTA
 * hides latency better there than one 4-warp CTA anyway.
 */
export const NARROW_PHASE1_ARCHS: readonly Arch[] = ['sm_86', 'sm_89'];
export const narrowPhase1 = (archs: readonly Arch[]): boolean =>
  archs.some((a) => NARROW_PHASE1_ARCHS.includes(a));

/**
 * Mirrors Phase1PlanOf<Cfg, Variant, kListed> in templates/include/chunkattn/decode_phase1.cuh (a test
 * checks each instance): its loop is heavier when the spec has a mask or a score mod, for the PSA
 * decode's list-driven instances (`listed`), and on the NARROW_PHASE1_ARCHS.
 */
export function phase1Geometry(spec: KernelSpec, listed = false, archs: readonly Arch[] = []) {
  const kvBytes = DTYPE_BYTES[spec.dtype.kv];
  const d = spec.headDim;
  const heavyLoop = spec.mask !== null || spec.scoreMod !== null || listed || narrowPhase1(archs);
  const blocksPerWarp = d <= 96 || (d <= 128 && !heavyLoop) ? 2 : 1;
  const warps = 8 / blocksPerWarp;
  const threads = 32 * warps;
  const mTile = 128;
  const engine = tcEngineGeometry(d, kvBytes, blocksPerWarp, mTile);
  const minBlocks = 8 / warps;
  const maxRegisters = Math.min(255, Math.floor(65536 / (threads * minBlocks)));
  const mergeBytes = mTile * (d + 8) * 4 + mTile * 8;
  return {
    blocksPerWarp,
    threads,
    mTile,
    tileTokens: engine.tileTokens,
    qRegSteps: engine.qRegSteps,
    maxRegisters,
    smemBytes: Math.max(engine.loopBytes, mergeBytes),
  };
}

/** The phase-1 (shared-run, tensor-core) kernel. */
function phase1Launch(spec: KernelSpec, archs: readonly Arch[]): KernelLaunchPlan {
  const geometry = phase1Geometry(spec, false, archs);
  return {
    kernel: 'decode_phase1',
    grid: '(runs + ⌊partials·G / 128⌋) × kvHeads × splits',
    threadsPerBlock: geometry.threads,
    smemBytes: geometry.smemBytes,
    maxRegisters: geometry.maxRegisters,
  };
}

/** The sequence-first / phase-2 kernel and the split-KV merge. */
function phase2Launches(spec: KernelSpec): KernelLaunchPlan[] {
  const geometry = phase2Geometry(spec);
  return [
    {
      kernel: 'decode_phase2',
      grid: 'rows × kvHeads × splits',
      threadsPerBlock: geometry.threads,
      smemBytes: geometry.smemBytes,
      maxRegisters: geometry.maxRegisters,
    },
    {
      kernel: 'decode_merge_splits',
      grid: 'rows × kvHeads (when splits > 1)',
      threadsPerBlock: geometry.threads,
      smemBytes: geometry.mergeSplitsSmemBytes,
      maxRegisters: geometry.maxRegisters,
    },
  ];
}

/** Which build targets a spec's `targets` list asks for, in a stable order. */
export function buildTargetsOf(targets: readonly Target[]): BuildTarget[] {
  const out: BuildTarget[] = [];
  if (targets.some((t) => (ARCHS as readonly string[]).includes(t))) out.push('cuda');
  if (targets.includes('emu')) out.push('emu');
  if (targets.includes('cpu')) out.push('cpu');
  return out;
}

/**
 * The part of a spec that determines a module's bytes: variant functions count by their IR and
 * C++ only, so moving a function or running from another directory keeps the key.
 */
function keyedSpec(spec: KernelSpec): unknown {
  const variant = (fn: KernelSpec['scoreMod']) => fn && { ir: fn.ir, cpp: fn.cpp };
  return { ...spec, scoreMod: variant(spec.scoreMod), mask: variant(spec.mask) };
}

/** The toolchain facts a target's bytes depend on (they enter the cache key). */
export function toolchainIdentity(target: BuildTarget, toolchain: Toolchain): string {
  const gxx = toolchain.gxx?.version ?? 'no g++';
  if (target === 'cuda') return `${toolchain.nvcc?.version ?? 'no nvcc'} / ${gxx}`;
  if (target === 'cpu') return `${gxx} / ${toolchain.hostCpu}`;
  return gxx;
}

const BUILD_TARGETS: readonly unknown[] = ['cuda', 'emu', 'cpu'];
const SANITIZERS: readonly unknown[] = ['none', 'address', 'thread'];

/**
 * Plans a build. The spec is validated again whatever its origin (a JSON copy, a plain object):
 * the plan holds the validated copy, whose variant C++ is regenerated from the IR.
 */
export function plan(input: KernelSpec, options: PlanOptions, toolchain: Toolchain): KernelPlan {
  const spec = validateSpec(input);
  const { target } = options;
  if (!BUILD_TARGETS.includes(target))
    throw new PlanError(`target ${JSON.stringify(target)?.slice(0, 40)} is not one of cuda, emu, cpu`);
  const sanitize = options.sanitize ?? 'none';
  if (!SANITIZERS.includes(sanitize))
    throw new PlanError(`sanitizer ${JSON.stringify(sanitize)?.slice(0, 40)} is not one of address, thread`);
  for (const arch of options.archs ?? [])
    if (!(ARCHS as readonly unknown[]).includes(arch))
      throw new PlanError(`arch ${JSON.stringify(arch)?.slice(0, 40)} is not one of ${ARCHS.join(', ')}`);
  const specArchs = spec.targets.filter((t): t is Arch => (ARCHS as readonly string[]).includes(t));
  const archs = target === 'cuda' ? [...(options.archs ?? specArchs)] : [];
  if (target === 'cuda' && archs.length === 0)
    throw new PlanError(`spec "${spec.name}": the cuda target needs at least one arch (e.g. --arch sm_80)`);
  if (target !== 'cpu' && (spec.dtype.q === 'f32' || spec.dtype.kv === 'f32' || spec.dtype.out === 'f32'))
    throw new PlanError(
      `spec "${spec.name}": f32 tensors are supported by the cpu target only, not ${target}`,
    );
  if (sanitize !== 'none' && target !== 'emu')
    throw new PlanError(`sanitizer builds exist for the emu target only (asked: ${target})`);

  const declared = tunablesFor(target, spec.tunables);
  const tunables: Record<string, number> = {};
  for (const t of declared) {
    const given = options.tunables;
    const value = given && Object.hasOwn(given, t.name) ? given[t.name]! : t.default;
    if (!t.values.includes(value))
      throw new PlanError(`tunable ${t.name}: ${value} is not one of ${t.values.join(', ')}`);
    tunables[t.name] = value;
  }
  for (const name of Object.keys(options.tunables ?? {}))
    if (!declared.some((t) => t.name === name)) throw new PlanError(`unknown tunable ${name.slice(0, 64)}`);

  const phase1 = true;
  const kernels = target === 'cpu' ? [] : [phase1Launch(spec, archs), ...phase2Launches(spec)];
  const compilerVersion = compilerFingerprint();
  const hash = sha256(
    canonicalJson({ spec: keyedSpec(spec), target, archs, sanitize, tunables, compilerVersion }),
  ).slice(0, 16);
  const suffix = sanitize === 'none' ? target : `${target}-${sanitize}`;
  const key = `${spec.name}-${suffix}-${hash}`;
  return {
    key,
    buildId: `${key}.${sha256(toolchainIdentity(target, toolchain)).slice(0, 8)}`,
    name: spec.name,
    target,
    archs,
    sanitize,
    spec,
    tunables,
    phase1,
    kernels,
    compilerVersion,
  };
}
