// Parsing `nvcc -Xptxas -v`: one resource record per kernel per arch. There is no cuobjdump
// here, so this report is the only source of spill counts.

export interface KernelResources {
  /** Mangled entry name as ptxas prints it. */
  readonly symbol: string;
  readonly arch: string;
  readonly registers: number;
  /** Static shared memory, bytes (dynamic shared memory is set at launch). */
  readonly smemBytes: number;
  readonly stackBytes: number;
  readonly spillStoreBytes: number;
  readonly spillLoadBytes: number;
  readonly barriers: number;
}

export function parsePtxasReport(text: string): KernelResources[] {
  const records: KernelResources[] = [];
  let current: { symbol: string; arch: string } | null = null;
  let frame = { stackBytes: 0, spillStoreBytes: 0, spillLoadBytes: 0 };
  for (const line of text.split('\n')) {
    const entry = /Compiling entry function '([^']+)' for '([^']+)'/.exec(line);
    if (entry) {
      current = { symbol: entry[1]!, arch: entry[2]! };
      frame = { stackBytes: 0, spillStoreBytes: 0, spillLoadBytes: 0 };
      continue;
    }
    const stack = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
    if (stack && current) {
      frame = {
        stackBytes: Number(stack[1]),
        spillStoreBytes: Number(stack[2]),
        spillLoadBytes: Number(stack[3]),
      };
      continue;
    }
    const used = /Used (\d+) registers/.exec(line);
    if (used && current) {
      records.push({
        ...current,
        ...frame,
        registers: Number(used[1]),
        smemBytes: Number(/(\d+) bytes smem/.exec(line)?.[1] ?? 0),
        barriers: Number(/used (\d+) barriers/.exec(line)?.[1] ?? 0),
      });
      current = null;
    }
  }
  return records;
}
