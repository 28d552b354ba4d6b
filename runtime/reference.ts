// Float64 reference attention for decode: the ground truth every target is compared with. Shipped
// as a checking utility (`import { referenceDecode } from 'chunkattn'`), so users can verify a
// module the same way the test suites do.

import type { Pos } from '../dsl/spec.ts';

export interface ReferenceShape {
  readonly qHeads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly softmaxScale: number;
}

/** One sequence's decode query and its whole KV history. */
export interface ReferenceRow {
  readonly seq: number;
  /** [Hq, D] */
  readonly q: ArrayLike<number>;
  /** [length, Hkv, D] */
  readonly k: ArrayLike<number>;
  /** [length, Hkv, D] */
  readonly v: ArrayLike<number>;
  readonly length: number;
}

export interface ReferenceVariant {
  readonly scoreMod?: (score: number, pos: Pos, params: readonly number[]) => number;
  readonly mask?: (pos: Pos, params: readonly number[]) => boolean;
  readonly params?: readonly number[];
}

/** Returns [Hq, D] per row. A row with no visible token yields zeros. */
export function referenceDecode(
  shape: ReferenceShape,
  rows: readonly ReferenceRow[],
  variant: ReferenceVariant = {},
): Float64Array[] {
  const { qHeads, kvHeads, headDim: d, softmaxScale } = shape;
  const group = qHeads / kvHeads;
  const params = variant.params ?? [];
  return rows.map((row) => {
    const out = new Float64Array(qHeads * d);
    for (let qHead = 0; qHead < qHeads; qHead++) {
      const kvHead = Math.floor(qHead / group);
      const scores: number[] = [];
      const visible: number[] = [];
      for (let t = 0; t < row.length; t++) {
        const pos: Pos = { seq: row.seq, qHead, kvHead, q: row.length - 1, kv: t };
        if (variant.mask && !variant.mask(pos, params)) continue;
        let dot = 0;
        for (let i = 0; i < d; i++) dot += row.q[qHead * d + i]! * row.k[(t * kvHeads + kvHead) * d + i]!;
        let s = dot * softmaxScale;
        if (variant.scoreMod) s = variant.scoreMod(s, pos, params);
        scores.push(s);
        visible.push(t);
      }
      if (visible.length === 0) continue;
      const m = Math.max(...scores);
      let l = 0;
      const w = scores.map((s) => {
        const e = Math.exp(s - m);
        l += e;
        return e;
      });
      for (let j = 0; j < visible.length; j++) {
        const base = (visible[j]! * kvHeads + kvHead) * d;
        const p = w[j]! / l;
        for (let i = 0; i < d; i++) out[qHead * d + i]! += p * row.v[base + i]!;
      }
    }
    return out;
  });
}

/** ‖out − ref‖ / ‖ref‖ over all elements (absolute norm when ref is zero). */
export function relativeError(out: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (out.length !== ref.length) throw new Error(`length mismatch: ${out.length} vs ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const diff = out[i]! - ref[i]!;
    num += Number.isNaN(diff) ? Number.POSITIVE_INFINITY : diff * diff;
    den += ref[i]! * ref[i]!;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Tolerances from KERNELS.md, by the lowest-precision dtype involved. */
export const TOLERANCE = { f32: 1e-5, f16: 2e-3, bf16: 1e-2 } as const;
