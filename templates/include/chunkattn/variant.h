// chunkattn/variant.h — what generated score/mask functions see.
//
// The generated module defines
//   struct Variant {
//     static constexpr bool kHasScoreMod, kHasMask;
//     CA_HD static float score_mod(float score, const ca::Pos& pos, const float* params);
//     CA_HD static bool mask(const ca::Pos& pos, const float* params);
//   };
// `score` is already multiplied by the softmax scale. The mask is evaluated before any score
// function runs, and a masked token never contributes.
#ifndef CHUNKATTN_VARIANT_H_
#define CHUNKATTN_VARIANT_H_

// The build defines exactly one of CA_TARGET_CUDA, CA_TARGET_EMU (g++ + cucpu) or CA_TARGET_CPU.
#if defined(CA_TARGET_CPU)
#define CA_HD inline __attribute__((always_inline))
#else
#define CA_HD __host__ __device__ __forceinline__
#endif

namespace ca {

// Logical positions of one (query, key) pair, as the DSL's `pos` names them.
struct Pos {
  int seq;      // sequence handle
  int q_head;   // query head in [0, Hq)
  int kv_head;  // KV head in [0, Hkv)
  int q;        // query token position (length - 1 while decoding)
  int kv;       // key token position
};

}  // namespace ca

#endif  // CHUNKATTN_VARIANT_H_
