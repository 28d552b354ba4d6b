// Gemma-2-style attention: logits soft-capped at 50 (tanh) and a 4096-token sliding window.
// 32 query heads over 16 KV heads, head dim 128, bf16. Both numbers are run-time params.

import { attention } from '../dsl/index.ts';

export default attention({
  name: 'softcap-window',
  heads: { q: 32, kv: 16 },
  headDim: 128,
  dtype: 'bf16',
  partition: 'two-phase',
  chunkSize: 64,
  params: { softcap: 50, window: 4096 },
  scoreMod: (s, _pos, p) => p.softcap * Math.tanh(s / p.softcap),
  mask: (pos, p) => pos.q - pos.kv < p.window,
  targets: ['sm_80', 'sm_90a', 'emu', 'cpu'],
});
