// Kernel counters are per module: two modules loaded in one process count only what each issued
// (the counters are function-local statics in headers; as GNU-unique symbols the dynamic linker
// would share them across every module), and a runtime that dispatches over several instances
// sums them, each library once.

import { describe, expect, test } from 'vitest';
import type { KernelSpec } from '../dsl/spec.ts';
import { Attention } from '../index.ts';
import type { DispatchRules, KernelTunables } from '../runtime/dispatch.ts';
import { NativeModule } from '../runtime/native-module.ts';
import { tinySpec } from './specs.ts';

/** One sequence of `tokens` ones (K, V and q all 1.0 in f16/bf16), decoded once. */
function decodeOnce(attn: Attention, spec: KernelSpec, tokens = 40): void {
  const kv = spec.heads.kv * spec.headDim;
  const one = spec.dtype.kv === 'bf16' ? 0x3f80 : 0x3c00;
  const { seq } = attn.insert(Array.from({ length: tokens }, (_, i) => i + 1));
  const rows = new Uint16Array(tokens * kv).fill(one);
  attn.writeKV(0, seq, 0, rows, rows);
  attn.decode(0, new Uint16Array(spec.heads.q * spec.headDim).fill(one), undefined, [seq]);
}

describe.each([
  ['emu', tinySpec('f16', 'plain', ['emu']), tinySpec('bf16', 'plain', ['emu'])],
  ['cpu', tinySpec('f16', 'plain', ['cpu']), tinySpec('bf16', 'plain', ['cpu'])],
] as const)('%s modules in one process', (target, specA, specB) => {
  test("one module's launches, copies and traffic never show in another's stats", async () => {
    const a = await Attention.create(specA, { layers: 1, capacityTokens: 256, target, dispatch: false });
    const b = await Attention.create(specB, { layers: 1, capacityTokens: 256, target, dispatch: false });
    try {
      expect(a.module.path).not.toBe(b.module.path);
      a.module.resetStats();
      b.module.resetStats();
      decodeOnce(a, specA);
      const sa = a.module.stats();
      const sb = b.module.stats();
      expect(sa.launches).toBeGreaterThan(0);
      expect(sa.memcpy.h2d.calls).toBeGreaterThan(0);
      expect(sb.launches).toBe(0);
      expect(sb.memcpy.h2d.calls + sb.memcpy.d2h.calls).toBe(0);
      expect(sb.contextUploads).toBe(0);
      expect(sb.kernels).toEqual({});
      if (target === 'emu') {
        expect(sa.bytesRead.kv).toBeGreaterThan(0);
        expect(sb.bytesRead.kv).toBe(0);
      }
      // And the other way round, after resetting only b: a's counts stay.
      b.module.resetStats();
      decodeOnce(b, specB);
      expect(a.module.stats().launches).toBe(sa.launches);
      expect(b.module.stats().launches).toBe(sa.launches);
    } finally {
      a.close();
      b.close();
    }
  });
});

describe('runtime stats over dispatch instances', () => {
  test('Attention.stats().kernel sums the instance a decode ran on with the primary', async () => {
    const spec = tinySpec('f16', 'plain', ['cpu']);
    const tuned: KernelTunables = { cpu_tile_rows: 16 };
    const rules: DispatchRules = {
      instances: [tuned],
      bucket: () => 'all',
      choose: () => ({ kernel: tuned, minSharers: 2, reason: 'test: the tuned instance' }),
    };
    const attn = await Attention.create(spec, {
      layers: 1,
      capacityTokens: 256,
      target: 'cpu',
      dispatch: async () => rules,
    });
    try {
      const [primary, instance] = attn.dispatcher.modules() as [NativeModule, NativeModule];
      expect(instance).toBeDefined();
      expect(instance.path).not.toBe(primary.path);
      primary.resetStats();
      instance.resetStats();
      decodeOnce(attn, spec);
      const own = { primary: primary.stats(), instance: instance.stats() };
      // write_kv ran on the primary (it owns the memory), the decode kernels on the instance.
      expect(own.primary.kernels['write_kv']?.launches).toBe(1);
      expect(own.primary.kernels['cpu_phase2']).toBeUndefined();
      expect(own.instance.kernels['cpu_phase2']?.launches).toBe(1);
      expect(own.instance.kernels['write_kv']).toBeUndefined();
      const total = attn.stats().kernel;
      expect(total.launches).toBe(own.primary.launches + own.instance.launches);
      expect(total.kernels['cpu_phase2']?.launches).toBe(1);
      expect(total.kernels['write_kv']?.launches).toBe(1);
      expect(total.contextUploads).toBe(own.primary.contextUploads + own.instance.contextUploads);
      // A second handle on one library shares its counters: they are counted once.
      const again = NativeModule.load(instance.path);
      expect(again.stats().kernels['cpu_phase2']?.launches).toBe(1);
    } finally {
      attn.close();
    }
  });
});
