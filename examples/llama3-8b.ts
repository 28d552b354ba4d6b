// Llama 3 8B: grouped-query attention, 32 query heads share 8 KV heads (groups of 4), head dim 128, bf16.

import { attention } from '../dsl/index.ts';

export default attention({
  name: 'llama3-8b',
  heads: { q: 32, kv: 8 },
  headDim: 128,
  dtype: 'bf16',
  partition: 'two-phase',
  chunkSize: 64,
  targets: ['sm_80', 'sm_90a', 'emu', 'cpu'],
});
