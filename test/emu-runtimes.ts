// One emu-target Attention per EMU_CONFIGS entry, created on first use and shared by a suite's
// tests (building and loading a module costs seconds).

import type { KernelSpec } from '../dsl/spec.ts';
import { Attention } from '../index.ts';
import { emuShapeSpec } from './specs.ts';

export class EmuShapeRuntimes {
  readonly #entries = new Map<number, { attn: Attention; spec: KernelSpec }>();

  constructor(readonly capacityTokens: number) {}

  async get(index: number): Promise<{ attn: Attention; spec: KernelSpec }> {
    let entry = this.#entries.get(index);
    if (!entry) {
      const spec = emuShapeSpec(index);
      const attn = await Attention.create(spec, {
        layers: 1,
        capacityTokens: this.capacityTokens,
        target: 'emu',
      });
      entry = { attn, spec };
      this.#entries.set(index, entry);
    }
    return entry;
  }

  closeAll(): void {
    for (const { attn } of this.#entries.values()) attn.close();
    this.#entries.clear();
  }
}
