// chunkattn/cpu/simd.h — the vector layer every cpu kernel is written in.
//
// One f32 vector type `V` of `kWidth` lanes, chosen at compile time from the feature macros:
//   __AVX512F__              V = __m512, 16 lanes (AVX512BF16 used for bf16 stores when present)
//   __AVX2__ && __FMA__      V = __m256,  8 lanes (F16C for f16)
//   otherwise                V = float,   1 lane  (portable scalar fallback)
// Head dims and chunk sizes are multiples of 16, so no kernel needs a lane tail.
//
// Loads convert on the fly: load(const f16*), load(const bf16*), load(const float*) all yield
// f32 lanes; store(OutT*, V) rounds to nearest even. exp() is a vector exp accurate to ~2 ulp
// over the whole f32 range (exp(-inf) = 0, exp(+inf) = inf, NaN propagates).
#ifndef CHUNKATTN_CPU_SIMD_H_
#define CHUNKATTN_CPU_SIMD_H_

#include <math.h>
#include <stdint.h>

#include "chunkattn/cpu/types.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define CA_CPU_INLINE inline __attribute__((always_inline))

namespace ca {
namespace cpu {
namespace simd {

#if defined(__AVX512F__)
#define CA_CPU_ISA "avx512"
inline constexpr int kWidth = 16;
using V = __m512;

CA_CPU_INLINE V zero() { return _mm512_setzero_ps(); }
CA_CPU_INLINE V bcast(float x) { return _mm512_set1_ps(x); }
CA_CPU_INLINE V load(const float* p) { return _mm512_loadu_ps(p); }
CA_CPU_INLINE V load(const f16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
CA_CPU_INLINE V load(const bf16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
CA_CPU_INLINE void store(float* p, V v) { _mm512_storeu_ps(p, v); }
CA_CPU_INLINE void store(f16* p, V v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
CA_CPU_INLINE void store(bf16* p, V v) {
#if defined(__AVX512BF16__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
#else
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan,
                            _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
#endif
}
CA_CPU_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
CA_CPU_INLINE V sub(V a, V b) { return _mm512_sub_ps(a, b); }
CA_CPU_INLINE V mul(V a, V b) { return _mm512_mul_ps(a, b); }
CA_CPU_INLINE V max(V a, V b) { return _mm512_max_ps(a, b); }
CA_CPU_INLINE V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
CA_CPU_INLINE float reduce_add(V v) { return _mm512_reduce_add_ps(v); }
CA_CPU_INLINE float reduce_max(V v) { return _mm512_reduce_max_ps(v); }

// Lanes [valid, kWidth) replaced by x.
CA_CPU_INLINE V fill_from(V v, int valid, float x) {
  const __mmask16 keep =
      valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << (valid < 0 ? 0 : valid)) - 1u);
  return _mm512_mask_mov_ps(_mm512_set1_ps(x), keep, v);
}

// Writes lanes [begin, end) of v to p[begin..end) (p may point before the destination).
CA_CPU_INLINE void store_lanes(float* p, V v, int begin, int end) {
  const __mmask16 m = __mmask16(((1u << end) - 1u) & ~((1u << begin) - 1u));
  _mm512_mask_storeu_ps(p, m, v);
}

CA_CPU_INLINE V exp(V x) {
  const V nan_mask_src = x;
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-110.f)), _mm512_set1_ps(89.f));
  const V n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  V p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  const V y = _mm512_scalef_ps(p, n);
  const __mmask16 nan = _mm512_cmp_ps_mask(nan_mask_src, nan_mask_src, _CMP_UNORD_Q);
  return _mm512_mask_mov_ps(y, nan, nan_mask_src);
}

// exp for x <= 0 (softmax weights): exp(-inf) = 0, NaN propagates; 3 ops cheaper than exp().
CA_CPU_INLINE V exp_nonpos(V x) {
  x = _mm512_max_ps(_mm512_set1_ps(-110.f), x);  // NaN in x is returned as is
  const V n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  V p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// In-register transpose of a kWidth x kWidth tile: r[i] lane j  ->  r[j] lane i.
CA_CPU_INLINE void transpose(V r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m512 u[16];
  for (int i = 0; i < 4; ++i) {
    const __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d b0 = _mm512_castps_pd(t[4 * i + 2]), b1 = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
  }
  // u[4i + j] holds, in each 128-bit lane L, column 4L + j of rows 4i..4i+3.
  __m512 w[16];
  for (int j = 0; j < 4; ++j) {
    // Rows 0-3 and 4-7: lanes (L0 of i=0, L0 of i=1, L1 of i=0, L1 of i=1) etc.
    const __m512 a = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);  // L0,L2 of u[j] | L0,L2 of u[4+j]
    const __m512 b = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);  // L1,L3 | L1,L3
    const __m512 c = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);  // same for rows 8-15
    const __m512 d = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
    w[j] = _mm512_shuffle_f32x4(a, c, 0x88);       // column j      (L0 everywhere)
    w[8 + j] = _mm512_shuffle_f32x4(a, c, 0xdd);   // column 8 + j  (L2)
    w[4 + j] = _mm512_shuffle_f32x4(b, d, 0x88);   // column 4 + j  (L1)
    w[12 + j] = _mm512_shuffle_f32x4(b, d, 0xdd);  // column 12 + j (L3)
  }
  for (int i = 0; i < 16; ++i) r[i] = w[i];
}

// Returns the vector whose lane i is the sum of the lanes of acc[i].
CA_CPU_INLINE V reduce_transpose(const V acc[16]) {
  __m512 s[8];
  for (int i = 0; i < 8; ++i)
    s[i] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * i], acc[2 * i + 1]),
                         _mm512_unpackhi_ps(acc[2 * i], acc[2 * i + 1]));
  __m512 u[4];
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(s[2 * i]), b = _mm512_castps_pd(s[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // u[i], 128-bit lane L: partial sums (over lane L) of acc[4i..4i+3].
  const __m512 x =
      _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
  const __m512 y =
      _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xdd));
}

#elif defined(__AVX2__) && defined(__FMA__)
#define CA_CPU_ISA "avx2"
inline constexpr int kWidth = 8;
using V = __m256;

CA_CPU_INLINE V zero() { return _mm256_setzero_ps(); }
CA_CPU_INLINE V bcast(float x) { return _mm256_set1_ps(x); }
CA_CPU_INLINE V load(const float* p) { return _mm256_loadu_ps(p); }
#if defined(__F16C__)
CA_CPU_INLINE V load(const f16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
CA_CPU_INLINE void store(f16* p, V v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
#else
CA_CPU_INLINE V load(const f16* p) {
  alignas(32) float t[8];
  for (int i = 0; i < 8; ++i) t[i] = to_f32(p[i]);
  return _mm256_load_ps(t);
}
CA_CPU_INLINE void store(f16* p, V v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int i = 0; i < 8; ++i) p[i] = from_f32<f16>(t[i]);
}
#endif
CA_CPU_INLINE V load(const bf16* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
CA_CPU_INLINE void store(float* p, V v) { _mm256_storeu_ps(p, v); }
CA_CPU_INLINE void store(bf16* p, V v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int i = 0; i < 8; ++i) p[i] = from_f32<bf16>(t[i]);
}
CA_CPU_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
CA_CPU_INLINE V sub(V a, V b) { return _mm256_sub_ps(a, b); }
CA_CPU_INLINE V mul(V a, V b) { return _mm256_mul_ps(a, b); }
CA_CPU_INLINE V max(V a, V b) { return _mm256_max_ps(a, b); }
CA_CPU_INLINE V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
CA_CPU_INLINE float reduce_add(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
CA_CPU_INLINE float reduce_max(V v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
CA_CPU_INLINE __m256i lane_index() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
CA_CPU_INLINE V fill_from(V v, int valid, float x) {
  const __m256 keep =
      _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lane_index()));
  return _mm256_blendv_ps(_mm256_set1_ps(x), v, keep);
}
CA_CPU_INLINE void store_lanes(float* p, V v, int begin, int end) {
  const __m256i i = lane_index();
  const __m256i m = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(end), i),
                                     _mm256_cmpgt_epi32(i, _mm256_set1_epi32(begin - 1)));
  _mm256_maskstore_ps(p, m, v);
}

CA_CPU_INLINE V exp(V x) {
  const V src = x;
  // Below -87.3 the result is subnormal or zero: flushed to zero (harmless for softmax weights).
  const V tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
  const V big = _mm256_cmp_ps(src, _mm256_set1_ps(88.7f), _CMP_GT_OQ);
  const V n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  V p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  // 2^n for n in [-126, 128]: n = 128 (x close to 88.7) is split into two factors.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256 s1 =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
  const __m256 s2 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23));
  V y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  y = _mm256_andnot_ps(tiny, y);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), big);
  return _mm256_blendv_ps(y, src, _mm256_cmp_ps(src, src, _CMP_UNORD_Q));
}

CA_CPU_INLINE V exp_nonpos(V x) { return exp(x); }

CA_CPU_INLINE void transpose(V r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

CA_CPU_INLINE V reduce_transpose(const V acc[8]) {
  __m256 s[4];
  for (int i = 0; i < 4; ++i)
    s[i] = _mm256_add_ps(_mm256_unpacklo_ps(acc[2 * i], acc[2 * i + 1]),
                         _mm256_unpackhi_ps(acc[2 * i], acc[2 * i + 1]));
  __m256 u[2];
  for (int i = 0; i < 2; ++i) {
    const __m256d a = _mm256_castps_pd(s[2 * i]), b = _mm256_castps_pd(s[2 * i + 1]);
    u[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
                         _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
  }
  return _mm256_add_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20),
                       _mm256_permute2f128_ps(u[0], u[1], 0x31));
}

#else
#define CA_CPU_ISA "scalar"
inline constexpr int kWidth = 1;
using V = float;

CA_CPU_INLINE V zero() { return 0.f; }
CA_CPU_INLINE V bcast(float x) { return x; }
CA_CPU_INLINE V load(const float* p) { return *p; }
CA_CPU_INLINE V load(const f16* p) { return to_f32(*p); }
CA_CPU_INLINE V load(const bf16* p) { return to_f32(*p); }
CA_CPU_INLINE void store(float* p, V v) { *p = v; }
CA_CPU_INLINE void store(f16* p, V v) { *p = from_f32<f16>(v); }
CA_CPU_INLINE void store(bf16* p, V v) { *p = from_f32<bf16>(v); }
CA_CPU_INLINE V add(V a, V b) { return a + b; }
CA_CPU_INLINE V sub(V a, V b) { return a - b; }
CA_CPU_INLINE V mul(V a, V b) { return a * b; }
CA_CPU_INLINE V max(V a, V b) { return a > b ? a : b; }
CA_CPU_INLINE V fmadd(V a, V b, V c) { return a * b + c; }
CA_CPU_INLINE float reduce_add(V v) { return v; }
CA_CPU_INLINE float reduce_max(V v) { return v; }
CA_CPU_INLINE V fill_from(V v, int valid, float x) { return valid >= 1 ? v : x; }
CA_CPU_INLINE void store_lanes(float* p, V v, int begin, int end) {
  if (begin <= 0 && end >= 1) *p = v;
}
CA_CPU_INLINE V exp(V x) { return expf(x); }
CA_CPU_INLINE V exp_nonpos(V x) { return expf(x); }
CA_CPU_INLINE void transpose(V*) {}
CA_CPU_INLINE V reduce_transpose(const V acc[1]) { return acc[0]; }
#endif

}  // namespace simd
}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_SIMD_H_
