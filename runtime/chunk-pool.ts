// ChunkPool: the slot allocator behind the prefix tree.
//
// A slot is one chunk's storage in EVERY layer (the KV store keeps, per layer, K and V pools of
// shape [capacity, Hkv, C, D]; slot i is row i of each). The pool starts at `initialCapacity`
// slots and grows (doubling, capped) up to `maxCapacity` when it runs out of free slots; a
// growth is reported through `onGrow` so the store can enlarge its buffers before it applies the
// writes of the operation that caused it. Slots are never moved by a growth.
//
// alloc() and free() are O(1): the free slots are a stack in one Int32Array. A fresh pool hands
// out 0, 1, 2, ... in order, and a freed slot is the next one handed out (warm in caches).

import { ArgumentError } from './errors.ts';

export interface ChunkPoolOptions {
  /** Slots with storage at creation. Default: min(maxCapacity, 256). */
  readonly initialCapacity?: number;
  /** Slots the pool may grow to. */
  readonly maxCapacity: number;
  /** Called after the pool grew, with the new capacity (before the new slot is handed out). */
  readonly onGrow?: (capacity: number, previousCapacity: number) => void;
}

function checkCount(name: string, value: unknown, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > 0x3fffffff) {
    throw new ArgumentError(`${name} must be an integer in [${min}, 2^30], got ${String(value)}`);
  }
  return value;
}

export class ChunkPool {
  readonly maxCapacity: number;
  private capacityNow: number;
  /** Free slots, a stack: freeStack[0 .. freeTop) ; the top is handed out next. */
  private freeStack: Int32Array;
  private freeTop = 0;
  /** 1 where the slot is allocated. */
  private allocated: Uint8Array;
  private usedNow = 0;
  private peak = 0;
  private readonly onGrow: ((capacity: number, previousCapacity: number) => void) | undefined;

  constructor(options: ChunkPoolOptions) {
    this.maxCapacity = checkCount('maxCapacity', options.maxCapacity, 1);
    const initial =
      options.initialCapacity === undefined
        ? Math.min(this.maxCapacity, 256)
        : checkCount('initialCapacity', options.initialCapacity, 0);
    if (initial > this.maxCapacity) {
      throw new ArgumentError(`initialCapacity ${initial} exceeds maxCapacity ${this.maxCapacity}`);
    }
    this.onGrow = options.onGrow;
    this.capacityNow = initial;
    this.freeStack = new Int32Array(Math.max(initial, 1));
    this.allocated = new Uint8Array(Math.max(initial, 1));
    this.pushFreeRange(0, initial);
  }

  /** Slots that have storage now (free or allocated). */
  get capacity(): number {
    return this.capacityNow;
  }

  /** Allocated slots. */
  get used(): number {
    return this.usedNow;
  }

  /** Free slots within the current capacity (not counting growth room). */
  get freeSlots(): number {
    return this.freeTop;
  }

  /** Slots that alloc() can still hand out without anything being freed: free + growth room. */
  get available(): number {
    return this.freeTop + (this.maxCapacity - this.capacityNow);
  }

  /** The largest number of slots ever allocated at once. */
  get peakUsed(): number {
    return this.peak;
  }

  /** Forgets the peak (the next peak starts from what is allocated now). */
  resetPeak(): void {
    this.peak = this.usedNow;
  }

  isAllocated(slot: number): boolean {
    return slot >= 0 && slot < this.capacityNow && this.allocated[slot] === 1;
  }

  /** A free slot, growing the pool if needed; -1 when the pool is at maxCapacity and full. */
  alloc(): number {
    if (this.freeTop === 0 && !this.grow()) return -1;
    const slot = this.freeStack[--this.freeTop]!;
    this.allocated[slot] = 1;
    if (++this.usedNow > this.peak) this.peak = this.usedNow;
    return slot;
  }

  /** Returns a slot to the pool. Throws ArgumentError for a slot that is not allocated. */
  free(slot: number): void {
    if (!this.isAllocated(slot)) throw new ArgumentError(`slot ${slot} is not allocated`);
    this.allocated[slot] = 0;
    this.freeStack[this.freeTop++] = slot;
    this.usedNow--;
  }

  /** The free slots in the order alloc() would hand them out (for tests and debugging). */
  freeOrder(): number[] {
    const out: number[] = [];
    for (let i = this.freeTop - 1; i >= 0; i--) out.push(this.freeStack[i]!);
    return out;
  }

  private grow(): boolean {
    const previous = this.capacityNow;
    if (previous >= this.maxCapacity) return false;
    const next = Math.min(this.maxCapacity, Math.max(previous * 2, previous + 16));
    if (next > this.freeStack.length) {
      const stack = new Int32Array(next);
      stack.set(this.freeStack.subarray(0, this.freeTop));
      this.freeStack = stack;
      const allocated = new Uint8Array(next);
      allocated.set(this.allocated);
      this.allocated = allocated;
    }
    this.capacityNow = next;
    this.pushFreeRange(previous, next);
    this.onGrow?.(next, previous);
    return true;
  }

  /** Pushes [begin, end) so that `begin` is handed out first. */
  private pushFreeRange(begin: number, end: number): void {
    for (let slot = end - 1; slot >= begin; slot--) this.freeStack[this.freeTop++] = slot;
  }
}
