// chunkattn/cpu/chunk_meta.h — per-chunk key metadata for progressive sparse attention.
//
//   k_pool  [num_slots, Hkv, C, D]                    Cfg::KvT
//   meta    [num_slots, Hkv, CA_PSA_META_VECTORS, D]  Cfg::KvT: mean, variance, min, max
//
// Computed once per chunk, when it becomes full (the runtime calls ca_psa_meta after the write
// that fills it): f32 accumulation, two passes (mean, then the centred variance, clamped ≥ 0),
// stored in the KV dtype. The metadata belongs to the slot, so every sharer of a chunk reads the
// same vectors, and a slot reused for a new chunk gets new ones when that chunk fills.
#ifndef CHUNKATTN_CPU_CHUNK_META_H_
#define CHUNKATTN_CPU_CHUNK_META_H_

#include <stdint.h>

#include "chunkattn/cpu/types.h"
#include "chunkattn/module_status.h"
#include "chunkattn/psa_abi.h"
#include "chunkattn/psa_math.h"

namespace ca {
namespace cpu {

template <class Cfg>
inline constexpr int64_t meta_elems_per_slot() {
  return int64_t(Cfg::kKvHeads) * CA_PSA_META_VECTORS * Cfg::kHeadDim;
}

// Summarizes one (slot, KV head): K [C, D] -> mean, variance, min, max [D] each.
template <class Cfg>
inline void summarize_chunk(typename Cfg::KvT* meta, const typename Cfg::KvT* k) {
  using KvT = typename Cfg::KvT;
  constexpr int C = Cfg::kChunk, D = Cfg::kHeadDim;
  float mean[D], var[D], lo[D], hi[D];
  for (int d = 0; d < D; ++d) {
    mean[d] = 0.f;
    var[d] = 0.f;
    lo[d] = INFINITY;
    hi[d] = -INFINITY;
  }
  for (int t = 0; t < C; ++t)
    for (int d = 0; d < D; ++d) {
      const float x = to_f32(k[t * D + d]);
      mean[d] += x;
      lo[d] = x < lo[d] ? x : lo[d];
      hi[d] = x > hi[d] ? x : hi[d];
    }
  for (int d = 0; d < D; ++d) mean[d] = ca::psa::meta_mean(mean[d], C);
  for (int t = 0; t < C; ++t)
    for (int d = 0; d < D; ++d) {
      const float x = to_f32(k[t * D + d]) - mean[d];
      var[d] += x * x;
    }
  for (int d = 0; d < D; ++d) {
    meta[0 * D + d] = from_f32<KvT>(mean[d]);
    meta[1 * D + d] = from_f32<KvT>(ca::psa::meta_variance(var[d], C));
    meta[2 * D + d] = from_f32<KvT>(lo[d]);
    meta[3 * D + d] = from_f32<KvT>(hi[d]);
  }
}

// ca_psa_meta: every KV head of every listed slot. Never throws.
template <class Cfg>
inline int chunk_meta(const CaPsaMetaParams& p) noexcept {
  using KvT = typename Cfg::KvT;
  constexpr int C = Cfg::kChunk, D = Cfg::kHeadDim, Hkv = Cfg::kKvHeads;
  if (p.num_chunks < 0) return ca::fail(CA_ERR_INVALID, "ca_psa_meta: negative num_chunks");
  if (p.num_chunks == 0) return CA_OK;
  if (!p.k_pool || !p.meta || !p.slots)
    return ca::fail(CA_ERR_INVALID, "ca_psa_meta: null pointer");
  for (int i = 0; i < p.num_chunks; ++i)
    if (p.slots[i] < 0 || p.slots[i] >= p.num_slots)
      return ca::fail(CA_ERR_INVALID, "ca_psa_meta: slot outside the pool");
  const KvT* k_pool = static_cast<const KvT*>(p.k_pool);
  KvT* meta = static_cast<KvT*>(p.meta);
  for (int i = 0; i < p.num_chunks; ++i)
    for (int h = 0; h < Hkv; ++h) {
      const int64_t slot_head = int64_t(p.slots[i]) * Hkv + h;
      summarize_chunk<Cfg>(meta + slot_head * CA_PSA_META_VECTORS * D, k_pool + slot_head * C * D);
    }
  return CA_OK;
}

}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_CHUNK_META_H_
