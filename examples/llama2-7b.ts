// Llama 2 7B: multi-head attention, 32 query heads over 32 KV heads, head dim 128, f16.

import { attention } from '../dsl/index.ts';

export default attention({
  name: 'llama2-7b',
  heads: { q: 32, kv: 32 },
  headDim: 128,
  dtype: 'f16',
  partition: 'two-phase',
  chunkSize: 64,
  targets: ['sm_80', 'sm_90a', 'emu', 'cpu'],
});
