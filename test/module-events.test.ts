// The module ABI's timing entry points (abi.h ca_event_*) through the addon: on an emu module they
// read the host clock (emulator wall time, labelled so), with every argument checked; cpu modules
// have none; the cuda timer (CUDA events around each decode) runs end-to-end through them on emu.

import { describe, expect, test } from 'vitest';
import { cudaEventTimer } from '../autotune/measure.ts';
import { candidate } from '../autotune/space.ts';
import { buildModule } from '../codegen/index.ts';
import { Attention } from '../index.ts';
import { ArgumentError } from '../runtime/errors.ts';
import { NativeModule, type TimingEvent } from '../runtime/native-module.ts';
import { tinySpec } from './specs.ts';

const emuSpec = tinySpec('f16', 'plain', ['emu']);
const cpuSpec = tinySpec('f16', 'plain', ['cpu']);

function codeOf(f: () => unknown): { error: unknown; code: string | undefined } {
  try {
    f();
  } catch (error) {
    return { error, code: (error as { code?: string }).code };
  }
  throw new Error('expected a throw');
}

describe('timing events', () => {
  test('an emu module stamps the host clock around a decode: emulator wall time, never GPU time', async () => {
    const attn = await Attention.create(emuSpec, { layers: 1, capacityTokens: 256, target: 'emu' });
    try {
      const m = attn.module;
      expect(m.hasEvents).toBe(true);
      expect(m.eventClock).toBe('emu-host-clock');
      const kv = emuSpec.heads.kv * emuSpec.headDim;
      const { seq } = attn.insert(Array.from({ length: 40 }, (_, i) => i + 1));
      const rows = new Uint16Array(40 * kv).fill(0x3c00);
      attn.writeKV(0, seq, 0, rows, rows);
      const q = new Uint16Array(emuSpec.heads.q * emuSpec.headDim).fill(0x3c00);
      const [start, stop] = [m.createEvent(), m.createEvent()];
      const before = performance.now();
      m.recordEvent(start);
      attn.decode(0, q, undefined, [seq]);
      m.recordEvent(stop);
      m.synchronizeEvent(stop);
      const wallMs = performance.now() - before;
      const ms = m.elapsedMs(start, stop);
      expect(ms).toBeGreaterThan(0);
      expect(ms).toBeLessThanOrEqual(wallMs + 1); // the stamps lie inside the host's own window
      m.destroyEvent(start);
      m.destroyEvent(stop);
    } finally {
      attn.close();
    }
  });

  test('every argument is checked: order, ownership, lifetime and kind', async () => {
    const built = await buildModule(emuSpec, { target: 'emu' });
    const a = NativeModule.load(built.libraryPath);
    const b = NativeModule.load(built.libraryPath);
    const [start, stop] = [a.createEvent(), a.createEvent()];
    // Elapsed before either is recorded, and before the stop event is synchronized.
    expect(codeOf(() => a.elapsedMs(start, stop)).code).toBe('ERR_CA_INVALID');
    expect(codeOf(() => a.synchronizeEvent(start)).code).toBe('ERR_CA_INVALID');
    a.recordEvent(start);
    a.recordEvent(stop);
    expect(codeOf(() => a.elapsedMs(start, stop)).code).toBe('ERR_CA_INVALID');
    a.synchronizeEvent(stop);
    expect(a.elapsedMs(start, stop)).toBeGreaterThanOrEqual(0);
    // Recording again needs a fresh synchronize before the next elapsed.
    a.recordEvent(stop);
    expect(codeOf(() => a.elapsedMs(start, stop)).code).toBe('ERR_CA_INVALID');
    // Another handle's event, a value that is not an event, a destroyed event.
    const other = codeOf(() => b.recordEvent(start));
    expect(other.code).toBe('ERR_CA_FOREIGN');
    expect(other.error).toBeInstanceOf(ArgumentError);
    for (const bad of [undefined, null, {}, { handle: {} }, 7] as unknown as TimingEvent[])
      expect(codeOf(() => a.recordEvent(bad)).code).toBe('ERR_CA_TYPE');
    a.destroyEvent(start);
    expect(codeOf(() => a.recordEvent(start)).code).toBe('ERR_CA_FREED');
    expect(codeOf(() => a.destroyEvent(start)).code).toBe('ERR_CA_FREED');
    expect(codeOf(() => a.elapsedMs(start, stop)).code).toBe('ERR_CA_FREED');
    a.destroyEvent(stop);
  });

  test('a cpu module has no events', async () => {
    const built = await buildModule(cpuSpec, { target: 'cpu' });
    const m = NativeModule.load(built.libraryPath);
    expect(m.hasEvents).toBe(false);
    expect(codeOf(() => m.createEvent()).code).toBe('ERR_CA_UNSUPPORTED');
    expect(codeOf(() => m.eventClock).code).toBe('ERR_CA_UNSUPPORTED');
  });

  test('the cuda timer goes through the module events: on emu it times real decodes, labelled emulator wall time', async () => {
    const timer = cudaEventTimer({ spec: emuSpec, target: 'emu', reps: 3 });
    try {
      expect(timer.kind).toBe('cuda');
      const timing = await timer.time(candidate({}), { batch: 3, sharedTokens: 32, privateTokens: 5 });
      expect(timing.clock).toBe('emu-host-clock');
      expect(timing.predicted).toBe(false);
      expect(timing.samplesUs).toHaveLength(3);
      for (const us of timing.samplesUs) expect(us).toBeGreaterThan(0);
      expect(timing.maxError).toBeLessThan(2e-3);
    } finally {
      timer.close();
    }
  });
});
