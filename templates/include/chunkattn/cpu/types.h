// chunkattn/cpu/types.h — 16-bit storage types of the cpu target and their scalar conversions.
//
//   f16   IEEE 754 binary16 bits (what a JS Uint16Array of half floats holds)
//   bf16  bfloat16 bits (the upper half of an IEEE binary32)
//   float plain binary32
//
// Conversions to f32 are exact. Conversions from f32 round to nearest even; NaN stays NaN.
// Vector conversions live in simd.h; these scalar ones serve tails, write_kv and tests.
#ifndef CHUNKATTN_CPU_TYPES_H_
#define CHUNKATTN_CPU_TYPES_H_

#include <stdint.h>
#include <string.h>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ca {
namespace cpu {

struct f16 {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(f16) == 2 && sizeof(bf16) == 2, "16-bit storage types must be 2 bytes");

inline float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

inline float to_f32(float x) { return x; }

inline float to_f32(bf16 x) { return bits_to_float(uint32_t(x.bits) << 16); }

// Portable binary16 conversions (used when F16C is absent; tested against F16C).
inline float f16_bits_to_f32_soft(uint16_t bits) {
  const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
  const uint32_t exp = (bits >> 10) & 0x1fu;
  uint32_t mant = bits & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    int e = -1;  // subnormal: normalize
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    mant &= 0x3ffu;
    return bits_to_float(sign | uint32_t(127 - 15 - e) << 23 | (mant << 13));
  }
  return bits_to_float(sign | (exp + 112u) << 23 | (mant << 13));
}

inline uint16_t f32_to_f16_bits_soft(float x) {
  const uint32_t u = float_to_bits(x);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {                                  // below 2^-14: subnormal or 0
    if (a < 0x33000000u) return sign;                     // below 2^-25: rounds to 0
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    const int shift = 126 - int(a >> 23);  // 14..24
    const uint32_t half = 1u << (shift - 1);
    const uint32_t rest = mant & ((1u << shift) - 1u);
    uint32_t r = mant >> shift;
    if (rest > half || (rest == half && (r & 1u))) ++r;
    return uint16_t(sign | r);
  }
  uint32_t r = (a >> 13) - (112u << 10);
  const uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;
  return uint16_t(sign | r);
}

inline float to_f32(f16 x) {
#if defined(__F16C__)
  return _cvtsh_ss(x.bits);
#else
  return f16_bits_to_f32_soft(x.bits);
#endif
}

template <class T>
T from_f32(float x);

template <>
inline float from_f32<float>(float x) {
  return x;
}

template <>
inline bf16 from_f32<bf16>(float x) {
  const uint32_t u = float_to_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  return bf16{uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

template <>
inline f16 from_f32<f16>(float x) {
#if defined(__F16C__)
  return f16{uint16_t(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT))};
#else
  return f16{f32_to_f16_bits_soft(x)};
#endif
}

// Data type tags of the ABI (CaDType) for each storage type.
template <class T>
struct DTypeOf;
template <>
struct DTypeOf<f16> {
  static constexpr int value = 0;  // CA_F16
};
template <>
struct DTypeOf<bf16> {
  static constexpr int value = 1;  // CA_BF16
};
template <>
struct DTypeOf<float> {
  static constexpr int value = 2;  // CA_F32
};

}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_TYPES_H_
