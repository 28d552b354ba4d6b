// K/V is never read before it is written: the tree tracks, per chunk and layer, which positions
// hold K/V; an insert matches only chunks complete in every layer; a decode refuses (typed
// error, nothing changed) a sequence with unwritten K/V in that layer; NaN/Inf K/V is refused at
// write time, so it can never poison a later prompt that shares the chunk.

import { describe, expect, test } from 'vitest';
import { ArgumentError, Attention, PrefixTree, UnwrittenKvError } from '../index.ts';
import { referenceDecode } from '../runtime/reference.ts';
import { tinySpec } from './specs.ts';

const C = 16;
const HKV = 2;
const HQ = 8;
const D = 64;

function tree(layers: number): PrefixTree {
  return new PrefixTree({ chunkSize: 4, maxCapacity: 16, kvLayers: layers });
}

const all = (n: number, from = 0) => Int32Array.from({ length: n }, (_, i) => i + from);

describe('the prefix tree tracks written K/V per chunk and layer', () => {
  test('an insert matches only chunks whose K/V is complete in every layer', () => {
    const t = tree(2);
    const prompt = [...all(9)];
    const a = t.insert(prompt);
    // Layer 0 complete, layer 1 only the first chunk.
    t.checkKvWrites(0, a.writes.slots, a.writes.offsets);
    t.markKvWritten(0, a.writes.slots, a.writes.offsets);
    t.markKvWritten(1, a.writes.slots.subarray(0, 4), a.writes.offsets.subarray(0, 4));
    t.release(a.seq);
    expect(t.insert(prompt).matchedTokens).toBe(4);
  });

  test('a write past the written prefix of a chunk is refused and changes nothing', () => {
    const t = tree(1);
    const { writes } = t.insert(all(6));
    expect(() => t.checkKvWrites(0, writes.slots.subarray(2, 4), writes.offsets.subarray(2, 4))).toThrow(
      ArgumentError,
    );
    expect(t.writtenTokens(0, writes.slots[0]!)).toBe(0);
    t.checkKvWrites(0, writes.slots, writes.offsets); // in order: fine
  });

  test('a new or reused slot starts unwritten; a fork copies the written prefix of its tail', () => {
    const t = tree(1);
    const a = t.insert(all(6));
    t.markKvWritten(0, a.writes.slots, a.writes.offsets);
    expect(t.firstUnwritten(0, a.seq)).toBe(-1);
    const { seqs } = t.fork(a.seq, 1);
    expect(t.firstUnwritten(0, seqs[0]!)).toBe(-1);
    t.append(seqs[0]!, 99);
    expect(t.firstUnwritten(0, seqs[0]!)).toBe(6);
    t.release(a.seq);
    t.release(seqs[0]!);
    t.evict();
    const b = t.insert(all(6, 100));
    expect(t.firstUnwritten(0, b.seq)).toBe(0);
  });
});

describe('Attention refuses to read K/V that was never written', () => {
  const spec = tinySpec('f32', 'plain', ['cpu']);
  const rowElems = HKV * D;

  const create = () => Attention.create(spec, { layers: 2, capacityTokens: C * 32, target: 'cpu' });

  function kvRows(tokens: number, value: number): Float32Array {
    return new Float32Array(tokens * rowElems).fill(value);
  }

  test('the stale-KV scenario: layer 1 never written, prompt released and inserted again', async () => {
    const attn = await create();
    try {
      const prompt = all(50);
      const first = attn.insert(prompt);
      attn.writeKV(0, first.seq, 0, kvRows(50, 0.5), kvRows(50, 0.5));
      attn.release(first.seq);
      const again = attn.insert(prompt);
      expect(again.matchedTokens).toBe(0); // was 48: chunks with no layer-1 K/V were matched
      attn.writeKV(0, again.seq, 0, kvRows(50, 0.5), kvRows(50, 0.5));
      const q = new Float32Array(HQ * D).fill(0.1);
      const error = (() => {
        try {
          attn.decode(1, q, undefined, [again.seq]);
        } catch (e) {
          return e;
        }
      })();
      expect(error).toBeInstanceOf(UnwrittenKvError);
      expect((error as UnwrittenKvError).layer).toBe(1);
      expect((error as UnwrittenKvError).position).toBe(0);
      attn.writeKV(1, again.seq, 0, kvRows(50, 0.5), kvRows(50, 0.5));
      const out = attn.decode(1, q, undefined, [again.seq]);
      for (const value of out) expect(value).toBeCloseTo(0.5, 5);
    } finally {
      attn.close();
    }
  });

  test('a decode before any writeKV, and after appendStep without writeDecodeKV, is refused', async () => {
    const attn = await create();
    try {
      const { seq } = attn.insert(all(20));
      const q = new Float32Array(HQ * D).fill(0.1);
      expect(() => attn.decode(0, q, undefined, [seq])).toThrow(UnwrittenKvError);
      attn.writeKV(0, seq, 0, kvRows(20, 1), kvRows(20, 1));
      attn.appendStep([seq], [7]);
      expect(() => attn.decode(0, q)).toThrow(/K\/V of tokens \[20, …\) is not written in layer 0/);
      attn.writeDecodeKV(0, kvRows(1, 1), kvRows(1, 1));
      expect(attn.decode(0, q)).toHaveLength(HQ * D);
    } finally {
      attn.close();
    }
  });

  test("a reused slot does not expose the previous owner's K/V", async () => {
    const attn = await Attention.create(spec, { layers: 1, capacityTokens: C * 4, target: 'cpu' });
    try {
      const a = attn.insert(all(40));
      attn.writeKV(0, a.seq, 0, kvRows(40, 3), kvRows(40, 3));
      attn.release(a.seq);
      const b = attn.insert(all(60, 1000)); // needs every slot: evicts a's cached chunks
      const q = new Float32Array(HQ * D).fill(0.1);
      expect(() => attn.decode(0, q, undefined, [b.seq])).toThrow(UnwrittenKvError);
    } finally {
      attn.close();
    }
  });

  test('NaN or ±Inf K/V is refused at write time: nothing written, nothing poisoned', async () => {
    const attn = await create();
    try {
      const prompt = all(40);
      const { seq } = attn.insert(prompt);
      for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
        const k = kvRows(40, 0.25);
        k[17 * rowElems + 3] = bad;
        expect(() => attn.writeKV(0, seq, 0, k, kvRows(40, 0.25))).toThrow(
          /k holds NaN or ±Inf at element .*token row 17/,
        );
        expect(attn.cache.firstUnwritten(0, seq)).toBe(0);
      }
      const keys = Float32Array.from({ length: 41 * rowElems }, (_, i) => Math.sin(i * 0.37));
      const values = Float32Array.from({ length: 41 * rowElems }, (_, i) => Math.cos(i * 0.11));
      const rows = (from: number, to: number) =>
        [
          keys.subarray(from * rowElems, to * rowElems),
          values.subarray(from * rowElems, to * rowElems),
        ] as const;
      for (const layer of [0, 1]) attn.writeKV(layer, seq, 0, ...rows(0, 40));
      attn.release(seq);
      // A later prompt sharing the chunks reads finite K/V and matches the float64 reference.
      const other = attn.insert([...prompt, 77]);
      expect(other.matchedTokens).toBe(32);
      for (const layer of [0, 1]) attn.writeKV(layer, other.seq, 32, ...rows(32, 41));
      const q = Float32Array.from({ length: HQ * D }, (_, i) => Math.sin(i));
      const out = attn.decode(1, q, undefined, [other.seq]);
      const [ref] = referenceDecode(
        { qHeads: HQ, kvHeads: HKV, headDim: D, softmaxScale: spec.softmaxScale },
        [{ seq: other.seq, q, k: keys, v: values, length: 41 }],
      );
      for (let i = 0; i < out.length; i++) expect(out[i]!).toBeCloseTo(ref![i]!, 4);
    } finally {
      attn.close();
    }
  });

  test('f16/bf16 bit patterns with an all-ones exponent are refused too', async () => {
    const attn = await Attention.create(tinySpec('bf16', 'plain', ['cpu']), {
      layers: 1,
      capacityTokens: C * 4,
      target: 'cpu',
    });
    try {
      const { seq } = attn.insert(all(3));
      const k = new Uint16Array(3 * rowElems).fill(0x3f80); // 1.0 in bf16
      const v = k.slice();
      v[5] = 0x7fc0; // NaN
      expect(() => attn.writeKV(0, seq, 0, k, v)).toThrow(/v holds NaN or ±Inf/);
      attn.writeKV(0, seq, 0, k, k);
    } finally {
      attn.close();
    }
  });
});
