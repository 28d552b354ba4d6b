// The kernel specs the suites run, in one place, so the global setup can build every module
// once per run before the tests start (builds are cached by content).

import { demoSpec } from '../bench/demo.ts';
import { attention } from '../dsl/index.ts';
import type { DType, KernelSpec } from '../dsl/spec.ts';

export type Variant = 'plain' | 'softcap-window';

/** Small shapes for end-to-end workloads: GQA group 4, d = 64, c = 16. */
export function tinySpec(dtype: DType, variant: Variant, targets: ('cpu' | 'emu')[]): KernelSpec {
  const common = {
    name: `e2e-${dtype}-${variant}`,
    heads: { q: 8, kv: 2 },
    headDim: 64 as const,
    dtype,
    chunkSize: 16 as const,
    targets,
  };
  if (variant === 'plain') return attention(common);
  return attention({
    ...common,
    params: { softcap: 5, window: 37 },
    scoreMod: (s, _pos, p) => p.softcap * Math.tanh(s / p.softcap),
    mask: (pos, p) => pos.q - pos.kv < p.window,
  });
}

/** Multi-token (prefill) tests at other GQA groups: 1 (Hq = Hkv = 4, f16) and 8 (Hq 8, Hkv 1, bf16). */
export function gqaSpec(group: 1 | 8): KernelSpec {
  return attention({
    name: `prefill-gqa${group}`,
    heads: group === 1 ? { q: 4, kv: 4 } : { q: 8, kv: 1 },
    headDim: 64,
    dtype: group === 1 ? 'f16' : 'bf16',
    chunkSize: 16,
    targets: ['cpu'],
  });
}

/** Compile-time configurations of the emu shape tests (GQA 1/4/6/8, every head-dim family). */
export const EMU_CONFIGS = [
  { heads: { q: 4, kv: 4 }, headDim: 64, chunkSize: 16, dtype: 'f16' },
  { heads: { q: 8, kv: 2 }, headDim: 80, chunkSize: 32, dtype: 'bf16' },
  { heads: { q: 12, kv: 2 }, headDim: 96, chunkSize: 16, dtype: 'f16' },
  { heads: { q: 16, kv: 2 }, headDim: 128, chunkSize: 64, dtype: 'bf16' },
  { heads: { q: 2, kv: 1 }, headDim: 256, chunkSize: 128, dtype: 'f16' },
] as const;

export function emuShapeSpec(index: number): KernelSpec {
  const config = EMU_CONFIGS[index]!;
  return attention({ name: `emu-shape-${index}`, ...config, dtype: config.dtype as DType, targets: ['emu'] });
}

/** Phase 2 on tensor cores (G ≥ 4): every G ∈ {4, 6, 8}, head dim, dtype and chunk size at least once. */
export const EMU_TC_SHAPES = [
  { heads: { q: 16, kv: 2 }, headDim: 64, chunkSize: 128, dtype: 'bf16' },
  { heads: { q: 8, kv: 2 }, headDim: 96, chunkSize: 64, dtype: 'f16' },
  { heads: { q: 12, kv: 2 }, headDim: 128, chunkSize: 16, dtype: 'bf16' },
  { heads: { q: 4, kv: 1 }, headDim: 256, chunkSize: 32, dtype: 'f16' },
] as const;

export function emuTcSpec(index: number): KernelSpec {
  const s = EMU_TC_SHAPES[index]!;
  return attention({ name: `emu-tc-${index}`, ...s, dtype: s.dtype as DType, targets: ['emu'] });
}

export function emuTrafficSpec(): KernelSpec {
  return attention({
    name: 'emu-traffic',
    heads: { q: 8, kv: 2 },
    headDim: 64,
    dtype: 'bf16',
    chunkSize: 16,
    targets: ['emu'],
  });
}

/** Heads of the small `chunkattn demo` runs in test/cli.test.ts (cpu and emu; also `bench tpp --target emu`). */
export const DEMO_TEST_HEADS = 2;

/** Every (spec, target) the suites build, for the global setup. */
export interface ModuleRequest {
  readonly spec: KernelSpec;
  readonly target: 'cpu' | 'emu';
  readonly sanitize?: 'address' | 'thread';
}

export function precompiledModules(): ModuleRequest[] {
  const out: ModuleRequest[] = [];
  for (const dtype of ['f32', 'f16', 'bf16'] as const)
    out.push({ spec: tinySpec(dtype, 'plain', ['cpu']), target: 'cpu' });
  for (const dtype of ['bf16', 'f32'] as const)
    out.push({ spec: tinySpec(dtype, 'softcap-window', ['cpu']), target: 'cpu' });
  for (const group of [1, 8] as const) out.push({ spec: gqaSpec(group), target: 'cpu' });
  for (const dtype of ['f16', 'bf16'] as const)
    out.push({ spec: tinySpec(dtype, 'plain', ['emu']), target: 'emu' });
  out.push({ spec: tinySpec('bf16', 'softcap-window', ['emu']), target: 'emu' });
  for (let i = 0; i < EMU_CONFIGS.length; i++) out.push({ spec: emuShapeSpec(i), target: 'emu' });
  for (let i = 0; i < EMU_TC_SHAPES.length; i++) out.push({ spec: emuTcSpec(i), target: 'emu' });
  out.push({ spec: emuTrafficSpec(), target: 'emu' });
  for (const sanitize of ['address', 'thread'] as const)
    out.push({ spec: tinySpec('f16', 'plain', ['emu']), target: 'emu', sanitize });
  out.push({ spec: demoSpec(DEMO_TEST_HEADS), target: 'cpu' });
  out.push({ spec: demoSpec(DEMO_TEST_HEADS, 'emu'), target: 'emu' });
  return out;
}
