// Attention's pools are freed deterministically: by `using` at the end of a scope, and for objects
// dropped without close() by the FinalizationRegistry once collected. The addon reports the pools
// to V8 as external memory, so collection happens even when nothing calls gc().
// Each case runs test/fixtures/drop-attention.ts in its own process to measure RSS.

import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, test } from 'vitest';
import { attention } from '../dsl/index.ts';
import { Attention, poolBytes, poolMemoryWarning } from '../runtime/attention.ts';
import { mockModulePath } from '../runtime/native/fixtures/testing.ts';

const SCRIPT = join(import.meta.dirname, 'fixtures', 'drop-attention.ts');
const GIB_IN_MIB = 1024;

async function measure(...args: string[]): Promise<Record<string, number>> {
  const { stdout } = await execa('node', ['--expose-gc', '--import', 'tsx', SCRIPT, ...args], {
    cwd: join(import.meta.dirname, '..'),
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, number>;
}

describe('Attention lifetime', () => {
  test('50 dropped 64 MiB Attention objects with gc() between keep RSS under 1 GiB', async () => {
    const { peak } = await measure('drop', '--gc');
    expect(peak).toBeLessThan(GIB_IN_MIB);
  });

  test('50 dropped 64 MiB Attention objects without any gc() call keep RSS under 1 GiB (external memory is reported)', async () => {
    const { peak } = await measure('drop');
    expect(peak).toBeLessThan(GIB_IN_MIB);
  });

  test('`using` frees the pools at the end of the block', async () => {
    const { before, inside, after } = await measure('using');
    expect(inside! - before!).toBeGreaterThan(48); // the 64 MiB pool is resident (zeroed at allocation)
    expect(inside! - after!).toBeGreaterThan(48);
    expect(after! - before!).toBeLessThan(16);
  });
});

describe('the memory warning of Attention.create', () => {
  const spec = attention({
    name: 'llama3-like',
    heads: { q: 32, kv: 8 },
    headDim: 128,
    dtype: 'bf16',
    chunkSize: 64,
  });
  const options = { layers: 32, capacityTokens: 65_536 };

  test('pools are K and V of every layer in whole chunks: 32 layers × 65,536 tokens of Llama3-8B is 8 GiB', () => {
    expect(poolBytes(spec, options)).toBe(8 * 2 ** 30);
    expect(poolBytes(spec, { layers: 1, capacityTokens: 65 })).toBe(2 * 64 * 2 * 8 * 128 * 2);
  });

  test('it warns, stating the size, only above half of the free memory', () => {
    expect(poolMemoryWarning(spec, options, 16 * 2 ** 30)).toBeUndefined();
    expect(poolMemoryWarning(spec, options, 12 * 2 ** 30)).toBe(
      'the KV pools of 32 layers × 65536 tokens take 8.0 GiB, more than half of the 12.0 GiB of free memory',
    );
  });
});

test('a two-phase spec on a module without phase 1 runs sequence-first, and create says so', async () => {
  const spec = attention({
    name: 'no-phase1',
    heads: { q: 4, kv: 2 },
    headDim: 64,
    dtype: 'f32',
    chunkSize: 16,
    targets: ['cpu'],
  });
  const warnings: Error[] = [];
  const listen = (warning: Error) => warnings.push(warning);
  process.on('warning', listen);
  try {
    const loadable = {
      libraryPath: mockModulePath({ MOCK_PHASE1: 0 }),
      manifest: { key: 'mock', target: 'cpu' as const, spec },
    };
    using attn = await Attention.create(loadable, { layers: 1, capacityTokens: 64 });
    expect(attn.mode).toBe('sequence-first');
    await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on the next tick
  } finally {
    process.off('warning', listen);
  }
  const ours = warnings.filter((w) => (w as { code?: string }).code === 'CHUNKATTN_SEQUENCE_FIRST');
  expect(ours.map((w) => w.message)).toEqual([
    'spec "no-phase1" is two-phase, but the cpu module has no phase-1 kernel: it runs sequence-first',
  ]);
});
