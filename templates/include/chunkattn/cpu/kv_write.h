// chunkattn/cpu/kv_write.h — writing new tokens into the chunk pool and copying chunks.
//
//   k_pool, v_pool [num_slots, Hkv, C, D]  Cfg::KvT
//   k, v           [num_tokens, Hkv, D]    CA_F32 or the pool's own dtype
// write_kv: token i goes to (slots[i], offsets[i]) of every KV head, converted (round to nearest
// even) when the source is f32. copy_chunks: for each {src, dst, tokens} the first `tokens`
// tokens of every KV head of src are copied to dst (copy-on-write of a partially filled chunk).
// Module memory is host memory on this target; each call is one "launch" for the counters.
#ifndef CHUNKATTN_CPU_KV_WRITE_H_
#define CHUNKATTN_CPU_KV_WRITE_H_

#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "chunkattn/abi.h"
#include "chunkattn/cpu/decode.h"
#include "chunkattn/cpu/simd.h"
#include "chunkattn/cpu/types.h"

namespace ca {
namespace cpu {

template <class Cfg>
inline int write_kv(const CaWriteKvParams& p) noexcept {
  using KvT = typename Cfg::KvT;
  constexpr int Hkv = Cfg::kKvHeads, C = Cfg::kChunk, D = Cfg::kHeadDim;
  if (p.num_tokens < 0 || p.num_slots < 0)
    return fail(CA_ERR_INVALID, "ca_write_kv: negative count");
  if (p.num_tokens == 0) return CA_OK;
  if (!p.k_pool || !p.v_pool || !p.slots || !p.offsets || !p.k || !p.v)
    return fail(CA_ERR_INVALID, "ca_write_kv: null pointer");
  const bool from_f32 = p.src_dtype == CA_F32;
  if (!from_f32 && p.src_dtype != DTypeOf<KvT>::value)
    return fail(CA_ERR_INVALID,
                "ca_write_kv: source dtype %d is neither f32 nor the pool's dtype %d", p.src_dtype,
                DTypeOf<KvT>::value);
  for (int i = 0; i < p.num_tokens; ++i) {
    if (p.slots[i] < 0 || p.slots[i] >= p.num_slots)
      return fail(CA_ERR_INVALID, "ca_write_kv: token %d: slot %d out of range [0, %d)", i,
                  p.slots[i], p.num_slots);
    if (p.offsets[i] < 0 || p.offsets[i] >= C)
      return fail(CA_ERR_INVALID, "ca_write_kv: token %d: offset %d out of range [0, %d)", i,
                  p.offsets[i], C);
  }
  KvT* pools[2] = {static_cast<KvT*>(p.k_pool), static_cast<KvT*>(p.v_pool)};
  const void* srcs[2] = {p.k, p.v};
  for (int which = 0; which < 2; ++which) {
    for (int i = 0; i < p.num_tokens; ++i) {
      for (int h = 0; h < Hkv; ++h) {
        KvT* dst = pools[which] + ((size_t(p.slots[i]) * Hkv + h) * C + p.offsets[i]) * D;
        const size_t src_index = (size_t(i) * Hkv + h) * D;
        if (from_f32) {
          const float* src = static_cast<const float*>(srcs[which]) + src_index;
          for (int d = 0; d < D; d += simd::kWidth) simd::store(dst + d, simd::load(src + d));
        } else {
          memcpy(dst, static_cast<const KvT*>(srcs[which]) + src_index, D * sizeof(KvT));
        }
      }
    }
  }
  return CA_OK;
}

template <class Cfg>
inline int copy_chunks(void* k_pool, void* v_pool, int num_slots, const int32_t* copies,
                       int num_copies) noexcept {
  using KvT = typename Cfg::KvT;
  constexpr int Hkv = Cfg::kKvHeads, C = Cfg::kChunk, D = Cfg::kHeadDim;
  if (num_copies < 0) return fail(CA_ERR_INVALID, "ca_copy_chunks: negative count");
  if (num_copies > 0 && (!k_pool || !v_pool || !copies))
    return fail(CA_ERR_INVALID, "ca_copy_chunks: null pointer");
  for (int i = 0; i < num_copies; ++i) {
    const int src_slot = copies[3 * i], dst_slot = copies[3 * i + 1],
              num_tokens = copies[3 * i + 2];
    if (src_slot < 0 || src_slot >= num_slots || dst_slot < 0 || dst_slot >= num_slots)
      return fail(CA_ERR_INVALID, "ca_copy_chunks: slots %d -> %d out of range [0, %d)", src_slot,
                  dst_slot, num_slots);
    if (num_tokens < 0 || num_tokens > C)
      return fail(CA_ERR_INVALID, "ca_copy_chunks: %d tokens, chunk holds %d", num_tokens, C);
  }
  for (int i = 0; i < num_copies; ++i) {
    const int src_slot = copies[3 * i], dst_slot = copies[3 * i + 1],
              num_tokens = copies[3 * i + 2];
    if (src_slot == dst_slot || num_tokens == 0) continue;
    for (KvT* pool : {static_cast<KvT*>(k_pool), static_cast<KvT*>(v_pool)})
      for (int h = 0; h < Hkv; ++h)
        memcpy(pool + (size_t(dst_slot) * Hkv + h) * C * D,
               pool + (size_t(src_slot) * Hkv + h) * C * D, size_t(num_tokens) * D * sizeof(KvT));
  }
  return CA_OK;
}

}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_KV_WRITE_H_
