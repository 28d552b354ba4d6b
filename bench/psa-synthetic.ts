// Synthetic Q/K/V with the structure that makes attention sparse (PSA.md: no model weights are
// available here), a pure function of its options and seed.
//
// Keys: the context is a sequence of segments (32–512 tokens), each about one topic drawn from a
// pool of topics that recur. A key is its topic's centre plus noise, plus a few outlier channels
// with a large constant bias (the massive activations real keys carry), rotated by RoPE
// (neox pairing, base 500000) at its position. Token 0 is an attention sink: a key along a sink
// direction that every query partly aligns with. Topic centres live mostly in the low-frequency
// rotary pairs, where meaning survives long distances, as in trained models.
// Values: the topic's value centre plus noise.
// Queries (the decode position, n - 1), by the type of their KV head:
//   retrieval  sharp alignment with one earlier topic (the needle) + the sink
//   local      alignment with the current (last) segment's topic + the sink
//   diffuse    weak alignment with a mixture of three topics + a stronger sink
// The G query heads of a group draw their own targets, so a group's union is wider than a head.

import { mulberry32 } from './random.ts';

export type HeadType = 'retrieval' | 'local' | 'diffuse';
export const HEAD_TYPES: readonly HeadType[] = ['retrieval', 'local', 'diffuse'];

export interface SyntheticOptions {
  readonly seed: number;
  readonly tokens: number;
  readonly kvHeads: number;
  /** Query heads per KV head (G). */
  readonly group: number;
  readonly headDim: number;
  /** Type of each KV head (default: retrieval, local, diffuse, repeating). */
  readonly headTypes?: readonly HeadType[];
  /** Query draws (independent decode queries at the last position). Default 1. */
  readonly queries?: number;
  /** Distinct topics (default 48). */
  readonly topics?: number;
}

export interface SyntheticQkv {
  readonly tokens: number;
  readonly kvHeads: number;
  readonly group: number;
  readonly headDim: number;
  readonly headTypes: readonly HeadType[];
  /** [tokens, kvHeads, headDim] */
  readonly k: Float32Array;
  readonly v: Float32Array;
  /** queries × [kvHeads · group, headDim]: query draw i is q.subarray(i · Hq · D, (i + 1) · Hq · D). */
  readonly q: Float32Array;
  readonly queries: number;
  /** Topic of every token (for inspection). */
  readonly topicOf: Int32Array;
}

/** Standard normals by Box–Muller, both outputs of each pair used. */
function gaussian(rand: () => number): () => number {
  let spare: number | null = null;
  return () => {
    if (spare !== null) {
      const x = spare;
      spare = null;
      return x;
    }
    const r = Math.sqrt(-2 * Math.log(Math.max(rand(), 1e-12)));
    const phi = 2 * Math.PI * rand();
    spare = r * Math.sin(phi);
    return r * Math.cos(phi);
  };
}

const ROPE_BASE = 500_000;
/** Query weight on its target topic(s), per head type (a score of about this much over others). */
export const SHARPNESS: Readonly<Record<HeadType, number>> = { retrieval: 9, local: 9, diffuse: 2.5 };
/** Query weight on the sink direction; the sink key is SINK_KEY times a key's norm. */
export const SINK_QUERY: Readonly<Record<HeadType, number>> = { retrieval: 2.2, local: 2.2, diffuse: 2.2 };
export const SINK_KEY = 4;

/** Rotary angles of one position: cos and sin of pos · base^(-2i/D) for each pair i < D/2. */
export function ropeAngles(pos: number, dim: number): { cos: Float64Array; sin: Float64Array } {
  const half = dim / 2;
  const cos = new Float64Array(half);
  const sin = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    const theta = pos * ROPE_BASE ** (-(2 * i) / dim);
    cos[i] = Math.cos(theta);
    sin[i] = Math.sin(theta);
  }
  return { cos, sin };
}

/** Rotates vec (neox pairs (i, i + D/2)) in place by the angles of ropeAngles. */
export function applyRope(vec: Float64Array, angles: { cos: Float64Array; sin: Float64Array }): void {
  const half = angles.cos.length;
  for (let i = 0; i < half; i++) {
    const c = angles.cos[i]!;
    const s = angles.sin[i]!;
    const a = vec[i]!;
    const b = vec[i + half]!;
    vec[i] = a * c - b * s;
    vec[i + half] = a * s + b * c;
  }
}

/** Generates Q/K/V (see the file comment). Deterministic in options (seed included). */
export function syntheticQkv(options: SyntheticOptions): SyntheticQkv {
  const { tokens: n, kvHeads: hkv, group: g, headDim: d } = options;
  const queries = options.queries ?? 1;
  const numTopics = options.topics ?? 48;
  const headTypes = options.headTypes ?? Array.from({ length: hkv }, (_, h) => HEAD_TYPES[h % 3]!);
  const rand = mulberry32(options.seed);
  const normal = gaussian(rand);
  const half = d / 2;
  // Weight of each channel in topic directions: low-frequency rotary pairs (high index) carry them.
  const profile = Float64Array.from({ length: d }, (_, i) => (i % half >= 0.8 * half ? 1 : 0.15));
  const unit = (weights: Float64Array | null): Float64Array => {
    const x = Float64Array.from({ length: d }, (_, i) => normal() * (weights ? weights[i]! : 1));
    let norm = 0;
    for (const y of x) norm += y * y;
    norm = Math.sqrt(norm);
    return x.map((y) => y / norm);
  };
  // Per KV head: topic key centres, value centres, a sink direction, outlier channels.
  const keyCentre: Float64Array[][] = [];
  const valueCentre: Float64Array[][] = [];
  const sinkDir: Float64Array[] = [];
  const outliers: number[][] = [];
  // Topic directions orthogonal to the sink's, so a query's sink score does not depend on its topic.
  const orthogonal = (x: Float64Array, to: Float64Array): Float64Array => {
    let dot = 0;
    for (let i = 0; i < d; i++) dot += x[i]! * to[i]!;
    const y = x.map((xi, i) => xi - dot * to[i]!);
    let norm = 0;
    for (const yi of y) norm += yi * yi;
    return y.map((yi) => yi / Math.sqrt(norm));
  };
  for (let h = 0; h < hkv; h++) {
    const sink = unit(profile);
    sinkDir.push(sink);
    keyCentre.push(Array.from({ length: numTopics }, () => orthogonal(unit(profile), sink)));
    valueCentre.push(Array.from({ length: numTopics }, () => unit(null)));
    outliers.push([Math.floor(rand() * half), Math.floor(rand() * half), half + Math.floor(rand() * half)]);
  }
  // Segments of topics.
  const topicOf = new Int32Array(n);
  for (let t = 0; t < n; ) {
    const len = 32 + Math.floor(rand() * 480);
    const topic = Math.floor(rand() * numTopics);
    for (let i = t; i < Math.min(n, t + len); i++) topicOf[i] = topic;
    t += len;
  }
  const keyNorm = Math.sqrt(d); // |k| ~ √D like normalized hidden states
  const k = new Float32Array(n * hkv * d);
  const v = new Float32Array(n * hkv * d);
  const row = new Float64Array(d);
  for (let t = 0; t < n; t++) {
    const angles = ropeAngles(t, d);
    for (let h = 0; h < hkv; h++) {
      const base = (t * hkv + h) * d;
      const centre = t === 0 ? sinkDir[h]! : keyCentre[h]![topicOf[t]!]!;
      const scale = t === 0 ? SINK_KEY * keyNorm : keyNorm;
      for (let i = 0; i < d; i++) row[i] = centre[i]! * scale + 0.55 * normal();
      for (const o of outliers[h]!) row[o] = row[o]! + 6;
      applyRope(row, angles);
      for (let i = 0; i < d; i++) k[base + i] = row[i]!;
      const vc = valueCentre[h]![topicOf[t]!]!;
      for (let i = 0; i < d; i++) v[base + i] = vc[i]! * 2 + 0.5 * normal();
    }
  }
  // Queries at position n - 1.
  const hq = hkv * g;
  const q = new Float32Array(queries * hq * d);
  const lastTopic = topicOf[n - 1]!;
  const lastAngles = ropeAngles(n - 1, d);
  const earlierTopics = [...new Set(topicOf.subarray(1, Math.max(2, n - 1024)))];
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  for (let s = 0; s < queries; s++) {
    for (let h = 0; h < hkv; h++) {
      for (let j = 0; j < g; j++) {
        const type = headTypes[h]!;
        const target = new Float64Array(d);
        const add = (dir: Float64Array, w: number) => {
          for (let i = 0; i < d; i++) target[i] = target[i]! + dir[i]! * w;
        };
        if (type === 'retrieval') {
          add(keyCentre[h]![pick(earlierTopics)]!, SHARPNESS.retrieval);
          add(sinkDir[h]!, SINK_QUERY.retrieval);
        } else if (type === 'local') {
          add(keyCentre[h]![lastTopic]!, SHARPNESS.local);
          add(sinkDir[h]!, SINK_QUERY.local);
        } else {
          for (let m = 0; m < 3; m++) add(keyCentre[h]![pick(earlierTopics)]!, SHARPNESS.diffuse);
          add(sinkDir[h]!, SINK_QUERY.diffuse);
        }
        for (let i = 0; i < d; i++) row[i] = target[i]! + 0.25 * normal();
        applyRope(row, lastAngles);
        const base = (s * hq + h * g + j) * d;
        for (let i = 0; i < d; i++) q[base + i] = row[i]!;
      }
    }
  }
  return { tokens: n, kvHeads: hkv, group: g, headDim: d, headTypes, k, v, q, queries, topicOf };
}
