// chunkattn/chunk_meta.cuh — per-chunk key metadata of PSA on cuda/emu (ca_psa_meta; the cpu
// target's is chunkattn/cpu/chunk_meta.h, the ABI chunkattn/psa_abi.h).
//
//   k_pool  [num_slots, Hkv, C, D]                    Cfg::KvT
//   slots   [num_chunks] int32                         full chunks to summarize (module memory)
//   meta    [num_slots, Hkv, CA_PSA_META_VECTORS, D]  Cfg::KvT: mean, variance, min, max
//
// Grid (num_chunks, Hkv), kMetaThreads threads; thread d owns channel d (and d + kMetaThreads…):
// the same per-channel f32 sums in token order as the cpu target (mean, then the centred
// variance clamped ≥ 0; psa_math.h finishes both), so the two agree to rounding. A slot outside
// the pool is skipped (the addon validated them).
#ifndef CHUNKATTN_CHUNK_META_CUH_
#define CHUNKATTN_CHUNK_META_CUH_

#include <math.h>
#include <stdint.h>

#include "chunkattn/dtype.cuh"
#include "chunkattn/prims.cuh"
#include "chunkattn/psa_abi.h"
#include "chunkattn/psa_math.h"

namespace ca {

inline constexpr int kMetaThreads = 128;

template <class Cfg>
__global__ void __launch_bounds__(kMetaThreads)
    psa_meta_kernel(const void* k_pool, int32_t num_slots, void* meta, const int32_t* slots) {
  using KvT = typename Cfg::KvT;
  constexpr int C = Cfg::kChunk, D = Cfg::kHeadDim, Hkv = Cfg::kKvHeads;
  const int slot = ldg<CA_TRAFFIC_CONTEXT>(slots + blockIdx.x);
  if (slot < 0 || slot >= num_slots) return;
  const size_t slot_head = size_t(slot) * Hkv + blockIdx.y;
  const KvT* k = static_cast<const KvT*>(k_pool) + slot_head * C * D;
  KvT* m = static_cast<KvT*>(meta) + slot_head * CA_PSA_META_VECTORS * D;
  for (int d = threadIdx.x; d < D; d += kMetaThreads) {
    float sum = 0.f, lo = INFINITY, hi = -INFINITY;
    for (int t = 0; t < C; ++t) {
      const float x = to_float(ldg<CA_TRAFFIC_KV>(k + t * D + d));
      sum += x;
      lo = x < lo ? x : lo;
      hi = x > hi ? x : hi;
    }
    const float mean = psa::meta_mean(sum, C);
    float sq = 0.f;
    for (int t = 0; t < C; ++t) {
      const float x = to_float(ldg<CA_TRAFFIC_KV>(k + t * D + d)) - mean;
      sq += x * x;
    }
    stg<CA_TRAFFIC_KV>(m + 0 * D + d, from_float<KvT>(mean));
    stg<CA_TRAFFIC_KV>(m + 1 * D + d, from_float<KvT>(psa::meta_variance(sq, C)));
    stg<CA_TRAFFIC_KV>(m + 2 * D + d, from_float<KvT>(lo));
    stg<CA_TRAFFIC_KV>(m + 3 * D + d, from_float<KvT>(hi));
  }
}

}  // namespace ca

#endif  // CHUNKATTN_CHUNK_META_CUH_
