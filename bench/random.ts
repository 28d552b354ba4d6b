// Seeded pseudo-random generators of the benchmarks: pure functions of their seed, so every
// report is reproducible. Tests import them from here (one definition).

/** A generator of uniforms in [0, 1). */
export type Rng = () => number;

/** mulberry32: a small, fast, seedable generator of uniforms in [0, 1). */
export function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** xorshift32 (13, 17, 5): uniforms in [0, 1); a zero seed counts as 1. */
export function xorshift32(seed: number): Rng {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}
