// chunkattn/cpu/kernels.h — register-blocked microkernels of the cpu target.
//
// Everything is f32 in registers; K/V/Q in f16/bf16 are converted on load. W = simd::kWidth.
//
// Phase 1 (many stacked query rows share one K/V chunk):
//   convert_k_transposed   K [C, D] (any dtype)  ->  KT [D, C] f32   (once per chunk and task)
//   convert_rows           V [C, D] (any dtype)  ->  Vf [C, D] f32
//   qk_tile_t<R, NKV>      S[R, NKV*W] = Q[R, D] KT[:, keys]   (broadcast q, vectors over keys)
//   pv_tile<R, NV>         O[R, NV*W] = alpha O + P[R, keys] V[keys, NV*W]
//   bf16 K/V on AVX512-BF16: the same tiles on vdpbf16ps over bf16 pairs (*_dp)
// Phase 2 (one row's G query heads stream that row's own chunks, K/V read once), and phase-1
// tiles too short to amortize a conversion:
//   qk_direct<NG, NK>      S[NG, NK] = Q[NG, D] K[NK, D]^T straight from the pool, NG*NK = W
//                          accumulators reduced by one transpose-sum (qk_direct_dp for bf16)
//   pv_tile<R, NV>         with V straight from the pool (converted per load)
// softmax_rows             online-softmax update of R rows of S in place (S becomes P)
#ifndef CHUNKATTN_CPU_KERNELS_H_
#define CHUNKATTN_CPU_KERNELS_H_

#include <math.h>
#include <stdint.h>

#include "chunkattn/cpu/simd.h"
#include "chunkattn/cpu/types.h"

namespace ca {
namespace cpu {
namespace kern {

using simd::V;
inline constexpr int W = simd::kWidth;

// Register budget per ISA: accumulator tiles of the phase-1 QK and the PV microkernels.
#if defined(__AVX512F__)
inline constexpr int kQkKeyVecs = 4;  // keys per QK tile = 4 * 16
inline constexpr int kTileRows = 6;   // 6 x 4 = 24 zmm accumulators (32 registers)
inline constexpr int kPvAccs = 24;
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr int kQkKeyVecs = 2;  // 6 x 2 = 12 ymm accumulators (16 registers)
inline constexpr int kTileRows = 6;
inline constexpr int kPvAccs = 12;
#else
inline constexpr int kQkKeyVecs = 4;
inline constexpr int kTileRows = 4;
inline constexpr int kPvAccs = 16;
#endif

// d-vectors per PV tile for R rows: enough independent FMA chains for one row, no more
// accumulators than the register file holds.
constexpr int pv_vecs_for(int rows) {
  return (kPvAccs / rows) > 8 ? 8 : (kPvAccs / rows) < 1 ? 1 : (kPvAccs / rows);
}

// ---------------------------------------------------------------------------------------------
// Conversions.

// dst[i] = scale * src[i], i in [0, n), n a multiple of W.
template <class T>
CA_CPU_INLINE void convert_scaled(float* dst, const T* src, int n, float scale) {
  const V s = simd::bcast(scale);
  for (int i = 0; i < n; i += W) simd::store(dst + i, simd::mul(simd::load(src + i), s));
}

template <class T>
CA_CPU_INLINE void convert_rows(float* dst, const T* src, int n) {
#pragma GCC unroll 4
  for (int i = 0; i < n; i += W) simd::store(dst + i, simd::load(src + i));
}

// KT[d * C + c] = K[c * D + d].
template <int C, int D, class T>
inline void convert_k_transposed(float* __restrict KT, const T* __restrict K) {
  static_assert(C % W == 0 && D % W == 0,
                "chunk size and head dim must be multiples of the vector width");
  for (int c0 = 0; c0 < C; c0 += W) {
    for (int d0 = 0; d0 < D; d0 += W) {
      V r[W];
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i) r[i] = simd::load(K + (c0 + i) * D + d0);
      simd::transpose(r);
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) simd::store(KT + (d0 + j) * C + c0, r[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Phase-1 QK: S[i, j*W + l] = sum_d Q[i, d] * KT[d, j*W + l]  for i < R, j < NKV.
template <int R, int NKV, int D>
CA_CPU_INLINE void qk_tile_t(float* __restrict S, int ldS, const float* __restrict Q, int ldQ,
                             const float* __restrict KT, int ldKT) {
  V acc[R][NKV];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NKV; ++j) acc[i][j] = simd::zero();
#pragma GCC unroll 2
  for (int d = 0; d < D; ++d) {
    V k[NKV];
#pragma GCC unroll 8
    for (int j = 0; j < NKV; ++j) k[j] = simd::load(KT + d * ldKT + j * W);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const V q = simd::bcast(Q[i * ldQ + d]);
#pragma GCC unroll 8
      for (int j = 0; j < NKV; ++j) acc[i][j] = simd::fmadd(q, k[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NKV; ++j) simd::store(S + i * ldS + j * W, acc[i][j]);
}

// All C keys of a chunk, in key blocks of kQkKeyVecs vectors.
template <int R, int C, int D>
CA_CPU_INLINE void qk_rows_t(float* S, int ldS, const float* Q, int ldQ, const float* KT) {
  constexpr int vecs = C / W, nkv = vecs < kQkKeyVecs ? vecs : kQkKeyVecs;
  constexpr int full = vecs / nkv, rest = vecs % nkv;
  for (int b = 0; b < full; ++b)
    qk_tile_t<R, nkv, D>(S + b * nkv * W, ldS, Q, ldQ, KT + b * nkv * W, C);
  if constexpr (rest > 0)
    qk_tile_t<R, rest, D>(S + full * nkv * W, ldS, Q, ldQ, KT + full * nkv * W, C);
}

// ---------------------------------------------------------------------------------------------
// PV: O[i, j*W + l] = alpha[i] * O[i, ..] + sum_{t < keys} P[i, t] * V[t, j*W + l].
template <int R, int NV, class VT>
CA_CPU_INLINE void pv_tile(float* __restrict O, int ldO, const float* __restrict alpha,
                           const float* __restrict P, int ldP, const VT* __restrict Vp, int ldV,
                           int keys) {
  V acc[R][NV];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    const V a = simd::bcast(alpha[i]);
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[i][j] = simd::mul(simd::load(O + i * ldO + j * W), a);
  }
#pragma GCC unroll 2
  for (int t = 0; t < keys; ++t) {
    V v[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) v[j] = simd::load(Vp + t * ldV + j * W);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const V p = simd::bcast(P[i * ldP + t]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = simd::fmadd(p, v[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) simd::store(O + i * ldO + j * W, acc[i][j]);
}

// All D columns, in d blocks of pv_vecs_for(R) vectors.
template <int R, int D, class VT>
CA_CPU_INLINE void pv_rows(float* O, int ldO, const float* alpha, const float* P, int ldP,
                           const VT* Vp, int keys) {
  constexpr int vecs = D / W, nv = vecs < pv_vecs_for(R) ? vecs : pv_vecs_for(R);
  constexpr int full = vecs / nv, rest = vecs % nv;
  for (int b = 0; b < full; ++b)
    pv_tile<R, nv>(O + b * nv * W, ldO, alpha, P, ldP, Vp + b * nv * W, D, keys);
  if constexpr (rest > 0)
    pv_tile<R, rest>(O + full * nv * W, ldO, alpha, P, ldP, Vp + full * nv * W, D, keys);
}

// ---------------------------------------------------------------------------------------------
// Phase-2 QK straight from the pool: S[g, k] = sum_d Q[g, d] * K[k, d], g < NG, k < NK,
// NG * NK == W. Each loaded K vector is reused by the NG query heads of the group.
template <int NG, int NK, int D, class KT>
CA_CPU_INLINE void qk_direct(float* S, int ldS, const float* __restrict Q, const KT* __restrict K) {
  static_assert(NG * NK == W, "one accumulator per output lane");
  V acc[W];
#pragma GCC unroll 16
  for (int a = 0; a < W; ++a) acc[a] = simd::zero();
#pragma GCC unroll 2
  for (int d = 0; d < D; d += W) {
    V q[NG];
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) q[g] = simd::load(Q + g * D + d);
#pragma GCC unroll 16
    for (int k = 0; k < NK; ++k) {
      const V kv = simd::load(K + k * D + d);
#pragma GCC unroll 16
      for (int g = 0; g < NG; ++g) acc[g * NK + k] = simd::fmadd(q[g], kv, acc[g * NK + k]);
    }
  }
  const V r = simd::reduce_transpose(acc);  // lane g * NK + k
  if constexpr (NG == 1) {
    simd::store(S, r);
  } else {
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) simd::store_lanes(S + g * ldS - g * NK, r, g * NK, (g + 1) * NK);
  }
}

// ---------------------------------------------------------------------------------------------
// bf16 K/V with AVX512-BF16: vdpbf16ps does 32 multiply-adds of bf16 pairs per instruction, twice
// the rate of f32 FMAs. Operands are bf16 pairs packed in 32-bit lanes (low half first):
//   KT2 [D/2, C]  pair (K[c, 2p], K[c, 2p+1])  at [p, c]     (phase-1 QK, vectors over keys)
//   V2  [C/2, D]  pair (V[2k, d], V[2k+1, d])  at [k, d]     (phase-1 PV, vectors over d)
//   Qb  [rows, D/2], Pb [rows, C/2]            pairs along d / along keys
// Products of bf16 are exact and accumulate in f32; Q (unless already bf16) and the softmax
// weights P are rounded to bf16, well inside the bf16 error gate. Q is not pre-scaled here: the
// caller scales S.
#if defined(__AVX512BF16__)
#define CA_CPU_DPBF16 1

CA_CPU_INLINE __m512 dpbf16(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

// KT2[p * C + c] = pair p of key c.
template <int C, int D>
inline void convert_k_pairs(uint32_t* __restrict KT2, const bf16* __restrict K) {
  static_assert(C % 16 == 0 && (D / 2) % 16 == 0, "pair transpose needs 16 | C and 32 | D");
  const uint32_t* k32 = reinterpret_cast<const uint32_t*>(K);
  for (int c0 = 0; c0 < C; c0 += 16) {
    for (int p0 = 0; p0 < D / 2; p0 += 16) {
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        r[i] = _mm512_castsi512_ps(_mm512_loadu_si512(k32 + (c0 + i) * (D / 2) + p0));
      simd::transpose(r);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j)
        _mm512_storeu_si512(KT2 + (p0 + j) * C + c0, _mm512_castps_si512(r[j]));
    }
  }
}

// V2[k * D + d] = (V[2k, d], V[2k+1, d]); rows at or past `keys` read as 0 (they may hold NaN).
template <int C, int D>
inline void convert_v_pairs(uint32_t* __restrict V2, const bf16* __restrict Vp, int keys) {
  static_assert(D % 32 == 0, "pair interleave needs 32 | D");
  const __m512i idx_lo = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i idx_hi = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  const int pairs = (keys + 1) / 2;
  for (int k = 0; k < pairs; ++k) {
    const bf16* r0 = Vp + (2 * k) * D;
    const bool has_odd = 2 * k + 1 < keys;
    for (int d = 0; d < D; d += 32) {
      const __m512i a = _mm512_loadu_si512(r0 + d);
      const __m512i b = has_odd ? _mm512_loadu_si512(r0 + D + d) : _mm512_setzero_si512();
      const __m512i lo = _mm512_unpacklo_epi16(a, b), hi = _mm512_unpackhi_epi16(a, b);
      _mm512_storeu_si512(V2 + k * D + d, _mm512_permutex2var_epi64(lo, idx_lo, hi));
      _mm512_storeu_si512(V2 + k * D + d + 16, _mm512_permutex2var_epi64(lo, idx_hi, hi));
    }
  }
}

// dst[p] = bf16 pair (q[2p], q[2p+1]) for p < D/2.
template <int D, class T>
CA_CPU_INLINE void convert_pairs(uint32_t* dst, const T* q) {
  for (int d = 0; d < D; d += 32) {
    const __m512bh b = _mm512_cvtne2ps_pbh(simd::load(q + d + 16), simd::load(q + d));
    _mm512_storeu_si512(dst + d / 2, (__m512i)b);
  }
}

// Pb[i, k] = bf16 pair (P[i, 2k], P[i, 2k+1]).
template <int R, int C>
CA_CPU_INLINE void pack_p_pairs(uint32_t* __restrict Pb, const float* __restrict P) {
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int c = 0; c < C; c += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(Pb + i * (C / 2) + c / 2),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(P + i * C + c)));
}

// S[i, j*16 + l] = sum_p Qb[i, p] . KT2[p, j*16 + l]  (unscaled).
template <int R, int NKV, int D>
CA_CPU_INLINE void qk_tile_dp(float* __restrict S, int ldS, const uint32_t* __restrict Qb, int ldQ,
                              const uint32_t* __restrict KT2, int ldKT) {
  __m512 acc[R][NKV];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NKV; ++j) acc[i][j] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int p = 0; p < D / 2; ++p) {
    __m512i k[NKV];
#pragma GCC unroll 8
    for (int j = 0; j < NKV; ++j) k[j] = _mm512_loadu_si512(KT2 + p * ldKT + j * 16);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512i q = _mm512_set1_epi32(int(Qb[i * ldQ + p]));
#pragma GCC unroll 8
      for (int j = 0; j < NKV; ++j) acc[i][j] = dpbf16(acc[i][j], k[j], q);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NKV; ++j) _mm512_storeu_ps(S + i * ldS + j * 16, acc[i][j]);
}

template <int R, int C, int D>
CA_CPU_INLINE void qk_rows_dp(float* S, int ldS, const uint32_t* Qb, const uint32_t* KT2) {
  constexpr int vecs = C / 16, nkv = vecs < kQkKeyVecs ? vecs : kQkKeyVecs;
  constexpr int full = vecs / nkv, rest = vecs % nkv;
  for (int b = 0; b < full; ++b)
    qk_tile_dp<R, nkv, D>(S + b * nkv * 16, ldS, Qb, D / 2, KT2 + b * nkv * 16, C);
  if constexpr (rest > 0)
    qk_tile_dp<R, rest, D>(S + full * nkv * 16, ldS, Qb, D / 2, KT2 + full * nkv * 16, C);
}

// O[i, j*16 + l] = alpha[i] O[i, ..] + sum_{k < pairs} Pb[i, k] . V2[k, j*16 + l].
template <int R, int NV>
CA_CPU_INLINE void pv_tile_dp(float* __restrict O, int ldO, const float* __restrict alpha,
                              const uint32_t* __restrict Pb, int ldP, const uint32_t* __restrict V2,
                              int ldV, int pairs) {
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    const __m512 a = _mm512_set1_ps(alpha[i]);
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j)
      acc[i][j] = _mm512_mul_ps(_mm512_loadu_ps(O + i * ldO + j * 16), a);
  }
#pragma GCC unroll 2
  for (int k = 0; k < pairs; ++k) {
    __m512i v[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) v[j] = _mm512_loadu_si512(V2 + k * ldV + j * 16);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512i pb = _mm512_set1_epi32(int(Pb[i * ldP + k]));
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = dpbf16(acc[i][j], v[j], pb);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(O + i * ldO + j * 16, acc[i][j]);
}

template <int R, int C, int D>
CA_CPU_INLINE void pv_rows_dp(float* O, int ldO, const float* alpha, const uint32_t* Pb,
                              const uint32_t* V2, int pairs) {
  constexpr int vecs = D / 16, nv = vecs < pv_vecs_for(R) ? vecs : pv_vecs_for(R);
  constexpr int full = vecs / nv, rest = vecs % nv;
  for (int b = 0; b < full; ++b)
    pv_tile_dp<R, nv>(O + b * nv * 16, ldO, alpha, Pb, C / 2, V2 + b * nv * 16, D, pairs);
  if constexpr (rest > 0)
    pv_tile_dp<R, rest>(O + full * nv * 16, ldO, alpha, Pb, C / 2, V2 + full * nv * 16, D, pairs);
}

// Phase-2 QK straight from a bf16 pool: S[g, k] = sum_d Qb[g, d] K[k, d] (unscaled), NG*NK = 16.
template <int NG, int NK, int D>
CA_CPU_INLINE void qk_direct_dp(float* S, int ldS, const uint32_t* __restrict Qb,
                                const bf16* __restrict K) {
  static_assert(NG * NK == 16, "one accumulator per output lane");
  __m512 acc[16];
#pragma GCC unroll 16
  for (int a = 0; a < 16; ++a) acc[a] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int d = 0; d < D; d += 32) {
    __m512i q[NG];
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) q[g] = _mm512_loadu_si512(Qb + g * (D / 2) + d / 2);
#pragma GCC unroll 16
    for (int k = 0; k < NK; ++k) {
      const __m512i kv = _mm512_loadu_si512(K + k * D + d);
#pragma GCC unroll 16
      for (int g = 0; g < NG; ++g) acc[g * NK + k] = dpbf16(acc[g * NK + k], kv, q[g]);
    }
  }
  const __m512 r = simd::reduce_transpose(acc);
  if constexpr (NG == 1) {
    _mm512_storeu_ps(S, r);
  } else {
#pragma GCC unroll 16
    for (int g = 0; g < NG; ++g) simd::store_lanes(S + g * ldS - g * NK, r, g * NK, (g + 1) * NK);
  }
}
#endif  // __AVX512BF16__

constexpr int pow2_floor(int x) {
  int p = 1;
  while (p * 2 <= x) p *= 2;
  return p;
}

// S[g, k] for g < G, k < keys (rounded up to the key block), G split into power-of-two groups
// of at most W / 2 heads.
template <int G, int C, int D, class KT, int G0 = 0>
CA_CPU_INLINE void qk_direct_rows(float* S, const float* Q, const KT* K, int keys) {
  if constexpr (G0 < G) {
    constexpr int left = G - G0;
    // At most W / 2 heads per group: with NK = 1 every FMA would need its own Q load.
    constexpr int ng_cap = W / 2 > 0 ? W / 2 : 1;
    constexpr int ng = pow2_floor(left < ng_cap ? left : ng_cap);
    constexpr int nk = W / ng;
    for (int k0 = 0; k0 < keys; k0 += nk)
      qk_direct<ng, nk, D>(S + G0 * C + k0, C, Q + G0 * D, K + k0 * D);
    qk_direct_rows<G, C, D, KT, G0 + ng>(S, Q, K, keys);
  }
}

// exp of one float x <= 0 through the vector exp (no libm call in the chunk loop).
CA_CPU_INLINE float exp_scalar(float x) {
#if defined(__AVX512F__)
  return _mm_cvtss_f32(_mm512_castps512_ps128(simd::exp_nonpos(_mm512_set1_ps(x))));
#elif defined(__AVX2__) && defined(__FMA__)
  return _mm_cvtss_f32(_mm256_castps256_ps128(simd::exp(_mm256_set1_ps(x))));
#else
  return expf(x);
#endif
}

#if defined(CA_CPU_DPBF16)
template <int G, int C, int D, int G0 = 0>
CA_CPU_INLINE void qk_direct_rows_dp(float* S, const uint32_t* Qb, const bf16* K, int keys) {
  if constexpr (G0 < G) {
    constexpr int left = G - G0;
    constexpr int ng = pow2_floor(left < 8 ? left : 8);
    constexpr int nk = 16 / ng;
    for (int k0 = 0; k0 < keys; k0 += nk)
      qk_direct_dp<ng, nk, D>(S + G0 * C + k0, C, Qb + G0 * (D / 2), K + k0 * D);
    qk_direct_rows_dp<G, C, D, G0 + ng>(S, Qb, K, keys);
  }
}
#endif

// Multiplies s[0, n) by x, n a multiple of W.
CA_CPU_INLINE void scale_in_place(float* s, int n, float x) {
  const V v = simd::bcast(x);
  for (int i = 0; i < n; i += W) simd::store(s + i, simd::mul(simd::load(s + i), v));
}

// ---------------------------------------------------------------------------------------------
// Online softmax over one chunk for R rows. S[i, 0..C) holds scores (-inf where invisible);
// on return it holds p = exp(s - m_new) and alpha[i] the factor for the row's old o.
template <int C>
CA_CPU_INLINE void softmax_row(float* __restrict s, float& m, float& l, float& alpha) {
  V mx = simd::load(s);
#pragma GCC unroll 8
  for (int c = W; c < C; c += W) mx = simd::max(mx, simd::load(s + c));
  const float m_chunk = simd::reduce_max(mx);
  if (m_chunk == -INFINITY) {  // nothing visible: p = 0, state unchanged
    alpha = 1.f;
#pragma GCC unroll 8
    for (int c = 0; c < C; c += W) simd::store(s + c, simd::zero());
    return;
  }
  const float m_new = m > m_chunk ? m : m_chunk;
  alpha = m_new == m ? 1.f : exp_scalar(m - m_new);  // 0 when m = -inf
  const V mv = simd::bcast(m_new);
  V sum = simd::zero();
#pragma GCC unroll 8
  for (int c = 0; c < C; c += W) {
    const V p = simd::exp_nonpos(simd::sub(simd::load(s + c), mv));
    simd::store(s + c, p);
    sum = simd::add(sum, p);
  }
  l = l * alpha + simd::reduce_add(sum);
  m = m_new;
}

// softmax_row for R rows of S (row stride C) at once: the rows' reductions and exps are
// independent, so doing them in lockstep hides their latency.
template <int R, int C>
CA_CPU_INLINE void softmax_rows(float* __restrict S, float* __restrict m, float* __restrict l,
                                float* __restrict alpha) {
  float m_new[R];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    V mx = simd::load(S + i * C);
#pragma GCC unroll 8
    for (int c = W; c < C; c += W) mx = simd::max(mx, simd::load(S + i * C + c));
    const float m_chunk = simd::reduce_max(mx);
    m_new[i] = m[i] > m_chunk ? m[i] : m_chunk;
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    // A row with nothing visible so far keeps m = -inf: use 0 as the reference so that
    // exp(-inf - 0) = 0 (never -inf - -inf = NaN); its alpha is 1 and o stays 0.
    const float ref = m_new[i] == -INFINITY ? 0.f : m_new[i];
    alpha[i] = m_new[i] == m[i] ? 1.f : exp_scalar(m[i] - ref);
    const V mv = simd::bcast(ref);
    V sum = simd::zero();
#pragma GCC unroll 8
    for (int c = 0; c < C; c += W) {
      const V p = simd::exp_nonpos(simd::sub(simd::load(S + i * C + c), mv));
      simd::store(S + i * C + c, p);
      sum = simd::add(sum, p);
    }
    l[i] = l[i] * alpha[i] + simd::reduce_add(sum);
    m[i] = m_new[i];
  }
}

// Sets s[t] = -inf for t in [valid, C).
template <int C>
CA_CPU_INLINE void mask_tail(float* s, int valid) {
  if (valid >= C) return;
  int c = (valid / W) * W;
  if (c < valid) {
    simd::store(s + c, simd::fill_from(simd::load(s + c), valid - c, -INFINITY));
    c += W;
  }
  for (; c < C; c += W) simd::store(s + c, simd::bcast(-INFINITY));
}

// Prefetches n bytes from p into L2.
CA_CPU_INLINE void prefetch_l2(const void* p, int bytes) {
  const char* b = static_cast<const char*>(p);
  for (int i = 0; i < bytes; i += 64) __builtin_prefetch(b + i, 0, 2);
}

#ifndef CA_CPU_PREFETCH_LOCALITY
#define CA_CPU_PREFETCH_LOCALITY 2
#endif

// A byte range prefetched into L2 a slice at a time, so the prefetches spread over the compute
// instead of overflowing the miss queues at once.
struct PrefetchRange {
  const char* begin = nullptr;
  int bytes = 0;
  int issued = 0;
  void reset(const void* p, int n) {
    begin = static_cast<const char*>(p);
    bytes = n;
    issued = 0;
  }
  CA_CPU_INLINE void issue(int slice_bytes) {
    const int end = issued + slice_bytes < bytes ? issued + slice_bytes : bytes;
    for (; issued < end; issued += 64)
      __builtin_prefetch(begin + issued, 0, CA_CPU_PREFETCH_LOCALITY);
  }
  CA_CPU_INLINE void finish() { issue(bytes); }
};

}  // namespace kern
}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_KERNELS_H_
