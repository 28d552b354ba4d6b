// chunkattn/psa_math.h — the pure pieces of PSA `select` shared by the cpu select
// (chunkattn/cpu/select.h) and the cuda/emu select kernel (chunkattn/select.cuh), so both apply
// one rule (PSA.md):
//
//   ℓ_j = ln C + q·μ_j + ½ Σ_i q_i² v_i,   capped (use_box) by   ln C + Σ_i max(q_i m_i, q_i M_i)
//
// (q already multiplied by the softmax scale), forced chunks (0, the recent window, the tail),
// the order-preserving integer image of a float that every bisection searches, the safety net's
// size and the k_max clamp's share. Scalar, CA_HD: callable from host, device and the cpu target.
#ifndef CHUNKATTN_PSA_MATH_H_
#define CHUNKATTN_PSA_MATH_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "chunkattn/psa_abi.h"
#include "chunkattn/variant.h"

namespace ca {
namespace psa {

// The guard's batch: max(k_min, kGuardBatch) unselected chunks (cpu/sparse_decode.h,
// psa_guard.cuh).
inline constexpr int kGuardBatch = 4;

// The options of one select call (from CaPsaParams).
struct SelectArgs {
  float mass;
  int k_min, k_max, recent_chunks;
  float safety_net;
  bool use_box;
  int dense_below_tokens;

  static SelectArgs from(const CaPsaParams& s) {
    return SelectArgs{s.mass,
                      s.k_min,
                      s.k_max,
                      s.recent_chunks,
                      s.safety_net,
                      s.use_box != 0,
                      s.dense_below_tokens};
  }
};

// Whether a row of len tokens attends every chunk without a selection (a short row).
CA_HD bool dense_row(const SelectArgs& a, int len) { return len <= a.dense_below_tokens; }

// Order-preserving map float -> int32 (a < b  <=>  key(a) < key(b); -0 == +0 up to one step).
CA_HD int32_t order_key(float x) {
  int32_t i;
  memcpy(&i, &x, 4);
  return i >= 0 ? i : int32_t(uint32_t(i) ^ 0x7fffffffu);
}

// Whether chunk j of n is forced: the attention sink, the last recent_chunks, the tail.
CA_HD bool is_forced(int j, int n, int recent_chunks) {
  return j == 0 || j >= n - recent_chunks || j == n - 1;
}

// Tokens of the tail chunk (the last of n) of a row of len tokens.
CA_HD int tail_tokens(int len, int n, int chunk) {
  const int rest = len - (n - 1) * chunk;
  return rest < chunk ? rest : chunk;
}

// Whether a row selects all its chunks without scoring: mass ≥ 1, a single chunk.
CA_HD bool selects_all(const SelectArgs& a, int n) { return a.mass >= 1.f || n == 1; }

// The corrected log-mass estimate of a full chunk from its three sums (dot = q·μ,
// quad = ½ Σ q² v, box = Σ max(q m, q M)); ln_c = ln C. The cap applies with use_box.
CA_HD float log_mass(float ln_c, float dot, float quad, float box, bool use_box) {
  const float e = ln_c + dot + quad;
  const float cap = ln_c + box;
  return use_box && cap < e ? cap : e;
}

// The Quest bound of a full chunk (what the safety net ranks by); -inf without use_box.
CA_HD float quest_bound(float ln_c, float box, bool use_box) {
  return use_box ? ln_c + box : -INFINITY;
}

// Chunks the safety net adds: ⌈safety_net · free⌉ of the free (non-forced) chunks, or 0.
CA_HD int safety_count(const SelectArgs& a, int free_chunks) {
  if (!a.use_box || !(a.safety_net > 0.f) || free_chunks <= 0) return 0;
  return int(ceilf(a.safety_net * float(free_chunks)));
}

// Free chunks the k_max clamp keeps beside the forced ones.
CA_HD int clamp_keep(const SelectArgs& a, int num_forced) {
  return a.k_max > num_forced ? a.k_max - num_forced : 0;
}

// The stored mean and variance of a channel from its sums over the chunk's C tokens (Σ x, then
// the centred Σ (x - mean)²); the variance is clamped ≥ 0.
CA_HD float meta_mean(float sum, int chunk) { return sum * (1.f / float(chunk)); }
CA_HD float meta_variance(float centred_sq, int chunk) {
  const float v = centred_sq * (1.f / float(chunk));
  return v > 0.f ? v : 0.f;
}

// Midpoint of an integer bisection interval [lo, hi) over keys (no overflow).
CA_HD int64_t bisect_mid(int64_t lo, int64_t hi) { return lo + (hi - lo) / 2; }

}  // namespace psa
}  // namespace ca

#endif  // CHUNKATTN_PSA_MATH_H_
