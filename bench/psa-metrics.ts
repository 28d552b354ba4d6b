// Accuracy of a chunk selection against float64 attention (PSA.md), for one query head:
//
//   recall      R = Σ_{t ∈ selected chunks} p_t, p the exact softmax of the head's scores
//   relError    ‖out − ref‖ / ‖ref‖, ref the exact dense output
//   oracle      the fewest chunks whose exact mass reaches `mass` (the true top-p)
// and, per (query, KV head): the group's oracle (union of its heads' top-p sets), the oracle gap
// (chunks selected / oracle chunks) and the bytes read as a fraction of dense (selected chunks'
// K and V plus the metadata select read for every full chunk).

export interface ExactAttention {
  /** Exact mass of each chunk, [chunks]. */
  readonly chunkMass: Float64Array;
  /** Exact dense output, [D]. */
  readonly out: Float64Array;
}

/**
 * Exact attention of one query head over `tokens` keys of KV head kvHead.
 * q [D]; k, v [tokens, kvHeads, D] (the values the pool holds, e.g. bf16-rounded).
 */
export function exactAttention(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  shape: { tokens: number; kvHeads: number; headDim: number; chunkSize: number; scale: number },
  kvHead: number,
): ExactAttention {
  const { tokens, kvHeads, headDim: d, chunkSize, scale } = shape;
  const scores = new Float64Array(tokens);
  let max = Number.NEGATIVE_INFINITY;
  for (let t = 0; t < tokens; t++) {
    const base = (t * kvHeads + kvHead) * d;
    let dot = 0;
    for (let i = 0; i < d; i++) dot += q[i]! * k[base + i]!;
    scores[t] = dot * scale;
    if (scores[t]! > max) max = scores[t]!;
  }
  let z = 0;
  for (let t = 0; t < tokens; t++) {
    scores[t] = Math.exp(scores[t]! - max);
    z += scores[t]!;
  }
  const chunkMass = new Float64Array(Math.ceil(tokens / chunkSize));
  const out = new Float64Array(d);
  for (let t = 0; t < tokens; t++) {
    const p = scores[t]! / z;
    chunkMass[Math.floor(t / chunkSize)]! += p;
    const base = (t * kvHeads + kvHead) * d;
    for (let i = 0; i < d; i++) out[i]! += p * v[base + i]!;
  }
  return { chunkMass, out };
}

/** Σ of the chunk masses of `selected` (chunk indices). */
export function massRecall(chunkMass: Float64Array, selected: ArrayLike<number>): number {
  let r = 0;
  for (let i = 0; i < selected.length; i++) r += chunkMass[selected[i]!]!;
  return r;
}

/** The true top-p set: the fewest chunks, largest mass first, whose mass reaches `mass`. */
export function oracleChunks(chunkMass: Float64Array, mass: number): number[] {
  const order = Array.from(chunkMass.keys()).sort((a, b) => chunkMass[b]! - chunkMass[a]!);
  const picked: number[] = [];
  let covered = 0;
  for (const j of order) {
    if (covered >= mass) break;
    picked.push(j);
    covered += chunkMass[j]!;
  }
  return picked;
}

/** The `count` chunks of highest score (a fixed top-k baseline), ties by index. */
export function topKChunks(
  score: ArrayLike<number>,
  count: number,
  forced: readonly number[] = [],
): number[] {
  const picked = new Set(forced);
  const order = Array.from({ length: score.length }, (_, j) => j).sort(
    (a, b) => score[b]! - score[a]! || a - b,
  );
  for (const j of order) {
    if (picked.size >= count) break;
    picked.add(j);
  }
  return [...picked].sort((a, b) => a - b);
}

export function relativeErrorF64(out: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (out[i]! - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-300));
}

/** Mean and 5th percentile (nearest rank) of samples. */
export function meanAndP5(samples: readonly number[]): { mean: number; p5: number } {
  if (samples.length === 0) return { mean: Number.NaN, p5: Number.NaN };
  const sorted = [...samples].sort((a, b) => a - b);
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  return { mean, p5: sorted[Math.max(0, Math.ceil(0.05 * sorted.length) - 1)]! };
}

/**
 * Bytes read for one (query, KV head) as a fraction of dense: selected chunks × K+V bytes of a
 * chunk, plus the metadata of every full chunk scored (`metaVectors` vectors of D), over all
 * chunks × K+V bytes. Per element sizes cancel.
 */
export function bytesFraction(
  selectedChunks: number,
  chunks: number,
  shape: { chunkSize: number; headDim: number; metaVectors: number; scoredChunks: number },
): number {
  const kv = 2 * shape.chunkSize * shape.headDim;
  const meta = shape.metaVectors * shape.headDim;
  return (selectedChunks * kv + shape.scoredChunks * meta) / (chunks * kv);
}
