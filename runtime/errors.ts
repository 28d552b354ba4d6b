// Typed runtime errors. Every operation that throws one leaves the cache and the tree unchanged.

export class ChunkattnError extends Error {
  override name = 'ChunkattnError';
}

/** The pool is full and nothing can be evicted. */
export class CapacityError extends ChunkattnError {
  override name = 'CapacityError';
  constructor(
    message: string,
    readonly neededChunks: number,
    readonly freeChunks: number,
  ) {
    super(message);
  }
}

/** A sequence handle that is not live (never issued, or released). */
export class UnknownSequenceError extends ChunkattnError {
  override name = 'UnknownSequenceError';
  constructor(readonly seq: number) {
    super(`unknown sequence ${seq}: not live (never issued or already released)`);
  }
}

/** A tensor or list whose length, dtype or layout does not match what the call needs. */
export class ShapeError extends ChunkattnError {
  override name = 'ShapeError';
}

/**
 * A call needs more kernel scratch than was reserved (Attention.create sizes every scratch buffer
 * once from `options.capacity`, so that no call allocates): raise `option`. Nothing was done.
 */
export class ReservedCapacityError extends ChunkattnError {
  override name = 'ReservedCapacityError';
  constructor(
    message: string,
    /** The `options.capacity` field to raise ('capacity.rows', …), when known. */
    readonly option?: string,
  ) {
    super(message);
  }
}

/** An argument outside its allowed range (layer index, token id, count, option). */
export class ArgumentError extends ChunkattnError {
  override name = 'ArgumentError';
}

/** A decode would read K/V that was never written (in that layer) for one of its sequences. */
export class UnwrittenKvError extends ChunkattnError {
  override name = 'UnwrittenKvError';
  constructor(
    readonly seq: number,
    readonly layer: number,
    /** The first token position without K/V. */
    readonly position: number,
    readonly length: number,
  ) {
    super(
      `sequence ${seq}: K/V of tokens [${position}, …) is not written in layer ${layer} (length ${length}); write it with writeKV / writeDecodeKV before decode`,
    );
  }
}

/** A module whose ABI version or spec does not match what the runtime expects. */
export class ModuleError extends ChunkattnError {
  override name = 'ModuleError';
}

/** A call on an Attention (or module handle) while its decodeAsync is still in flight: await it first. */
export class BusyError extends ChunkattnError {
  override name = 'BusyError';
}

/** A kernel failed: a CUDA error, or a CUDA-on-CPU shim diagnostic (deadlock, divergent barrier, ...). */
export class KernelError extends ChunkattnError {
  override name = 'KernelError';
  constructor(
    message: string,
    readonly kernel?: string,
    readonly location?: string,
  ) {
    super(message);
  }
}

/** The prefix tree's internal bookkeeping is inconsistent: a bug in chunkattn, never a user error. */
export class InvariantError extends ChunkattnError {
  override name = 'InvariantError';
  constructor(readonly problems: readonly string[]) {
    const more = problems.length > 20 ? `\n  ... ${problems.length - 20} more` : '';
    super(`prefix tree invariants violated:\n  ${problems.slice(0, 20).join('\n  ')}${more}`);
  }
}
