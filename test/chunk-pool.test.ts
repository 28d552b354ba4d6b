import { describe, expect, test } from 'vitest';
import { ChunkPool } from '../runtime/chunk-pool.ts';
import { ArgumentError } from '../runtime/errors.ts';

describe('ChunkPool', () => {
  test('a fresh pool hands out slots 0, 1, 2, ... and a freed slot comes back first', () => {
    const pool = new ChunkPool({ initialCapacity: 4, maxCapacity: 4 });
    expect([pool.alloc(), pool.alloc(), pool.alloc()]).toEqual([0, 1, 2]);
    pool.free(1);
    expect(pool.alloc()).toBe(1);
    expect(pool.alloc()).toBe(3);
    expect(pool.alloc()).toBe(-1);
    expect(pool.used).toBe(4);
    expect(pool.freeSlots).toBe(0);
  });

  test('grows by doubling up to maxCapacity, reporting each growth, never moving slots', () => {
    const growths: [number, number][] = [];
    const pool = new ChunkPool({
      initialCapacity: 2,
      maxCapacity: 40,
      onGrow: (capacity, previous) => growths.push([capacity, previous]),
    });
    const slots: number[] = [];
    for (let i = 0; i < 40; i++) slots.push(pool.alloc());
    expect(slots).toEqual([...Array(40).keys()]);
    expect(growths).toEqual([
      [18, 2],
      [36, 18],
      [40, 36],
    ]);
    expect(pool.alloc()).toBe(-1);
    expect(pool.capacity).toBe(40);
    expect(pool.available).toBe(0);
  });

  test('available counts free slots plus growth room', () => {
    const pool = new ChunkPool({ initialCapacity: 3, maxCapacity: 10 });
    pool.alloc();
    expect(pool.freeSlots).toBe(2);
    expect(pool.available).toBe(9);
  });

  test('peak tracks the most slots allocated at once, and can be reset', () => {
    const pool = new ChunkPool({ initialCapacity: 8, maxCapacity: 8 });
    const a = pool.alloc();
    const b = pool.alloc();
    pool.alloc();
    pool.free(a);
    pool.free(b);
    expect(pool.peakUsed).toBe(3);
    pool.resetPeak();
    expect(pool.peakUsed).toBe(1);
  });

  test('freeing a slot that is not allocated is an ArgumentError and changes nothing', () => {
    const pool = new ChunkPool({ initialCapacity: 4, maxCapacity: 4 });
    const slot = pool.alloc();
    pool.free(slot);
    const before = pool.freeOrder();
    expect(() => pool.free(slot)).toThrow(ArgumentError);
    expect(() => pool.free(7)).toThrow(ArgumentError);
    expect(() => pool.free(-1)).toThrow(ArgumentError);
    expect(pool.freeOrder()).toEqual(before);
    expect(pool.used).toBe(0);
  });

  test('rejects bad capacities', () => {
    expect(() => new ChunkPool({ maxCapacity: 0 })).toThrow(ArgumentError);
    expect(() => new ChunkPool({ maxCapacity: 1.5 })).toThrow(ArgumentError);
    expect(() => new ChunkPool({ initialCapacity: 5, maxCapacity: 4 })).toThrow(ArgumentError);
  });

  test('alloc and free stay O(1): a million operations on a large pool take well under a second', () => {
    const pool = new ChunkPool({ initialCapacity: 1 << 16, maxCapacity: 1 << 16 });
    const held = new Int32Array(1 << 16);
    const start = performance.now();
    for (let round = 0; round < 8; round++) {
      for (let i = 0; i < held.length; i++) held[i] = pool.alloc();
      for (let i = 0; i < held.length; i++) pool.free(held[i]!);
    }
    expect(performance.now() - start).toBeLessThan(1000);
    expect(pool.used).toBe(0);
  });
});
