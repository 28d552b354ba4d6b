// Property: random interleavings of insert / extend / rollback / fork / release / decode keep
// the prefix tree's invariants (validate() against the model's tokens) and every attend and
// decode matches float64 attention with each query token's causal length.

import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import type { Partition } from '../dsl/spec.ts';
import { Attention } from '../index.ts';
import { tinySpec } from './specs.ts';
import { MultiTokenModel, Rng } from './workload-model.ts';

const C = 16;

type Op =
  | { kind: 'insert'; system: number; suffix: number }
  | { kind: 'extend'; pick: number; counts: number[] }
  | { kind: 'rollback'; pick: number; n: number }
  | { kind: 'fork'; pick: number; n: number }
  | { kind: 'release'; pick: number }
  | { kind: 'decode'; pick: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('insert' as const), system: fc.nat(4), suffix: fc.nat(C + 4) }),
  fc.record({
    kind: fc.constant('extend' as const),
    pick: fc.nat(),
    counts: fc.array(fc.integer({ min: 1, max: 2 * C + 5 }), { minLength: 1, maxLength: 5 }),
  }),
  fc.record({
    kind: fc.constant('rollback' as const),
    pick: fc.nat(),
    n: fc.integer({ min: 1, max: 2 * C + 3 }),
  }),
  fc.record({ kind: fc.constant('fork' as const), pick: fc.nat(), n: fc.integer({ min: 1, max: 2 }) }),
  fc.record({ kind: fc.constant('release' as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant('decode' as const), pick: fc.nat() }),
);

function apply(model: MultiTokenModel, op: Op, systems: number[][]): void {
  const live = [...model.seqs.keys()];
  const at = (i: number) => live[i % live.length]!;
  switch (op.kind) {
    case 'insert':
      if (live.length < 12)
        model.insert([
          ...systems[op.system]!,
          ...Array.from({ length: op.suffix }, (_, i) => (i * 7 + op.suffix) % 50),
        ]);
      return;
    case 'extend': {
      if (live.length === 0) return;
      const seqs = [...new Set(op.counts.map((_, i) => at(op.pick + i * 3)))];
      model.extendStep(seqs, op.counts.slice(0, seqs.length));
      return;
    }
    case 'rollback': {
      if (live.length === 0) return;
      const seq = at(op.pick);
      const length = model.attn.cache.length(seq);
      if (length > 0) model.rollback(seq, Math.min(op.n, length));
      return;
    }
    case 'fork':
      if (live.length > 0 && live.length < 12) model.fork(at(op.pick), op.n);
      return;
    case 'release':
      if (live.length > 1) model.release(at(op.pick));
      return;
    case 'decode': {
      const seqs = live.filter((_seq, i) => (op.pick >> i) & 1 || i === 0);
      if (seqs.length > 0) model.step(seqs);
      return;
    }
  }
}

describe('random extend / rollback / fork / release / decode interleavings (fast-check)', () => {
  test.each(['two-phase', 'sequence-first', 'chunk-first'] as Partition[])(
    'keep the tree invariants and match float64 attention (cpu, f32, %s)',
    async (mode) => {
      const spec = tinySpec('f32', 'plain', ['cpu']);
      const attn = await Attention.create(spec, { layers: 1, capacityTokens: C * 600, target: 'cpu', mode });
      let attends = 0;
      let rollbacks = 0;
      try {
        await fc.assert(
          fc.asyncProperty(fc.array(opArb, { minLength: 5, maxLength: 30 }), fc.nat(), async (ops, seed) => {
            const model = new MultiTokenModel(attn, spec, new Rng(seed + 1));
            const base = Array.from({ length: 2 * C + 3 }, (_, i) => (i * 13 + 5) % 50);
            const systems = [[], base.slice(0, C - 1), base.slice(0, C), base.slice(0, C + 1), base];
            try {
              // Two prompts first, so the ops have sequences to work on.
              model.insert(systems[4]!.slice(0, C + 2));
              model.insert(systems[4]!);
              for (const op of ops) {
                apply(model, op, systems);
                if (op.kind === 'rollback') rollbacks++;
                attn.cache.validate(new Map([...model.seqs].map(([seq, m]) => [seq, m.tokens])));
              }
            } finally {
              attends += model.attends;
              for (const seq of [...model.seqs.keys()]) model.release(seq);
              attn.cache.evict();
            }
            expect(model.maxError).toBeLessThanOrEqual(1e-5);
          }),
          { numRuns: 25 },
        );
        // The interleavings did attend over multi-token steps and roll back.
        expect(attends).toBeGreaterThan(20);
        expect(rollbacks).toBeGreaterThan(10);
      } finally {
        attn.close();
      }
    },
  );
});
