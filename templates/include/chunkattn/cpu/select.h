// chunkattn/cpu/select.h — PSA `select`: which chunks of one (row, KV head) to attend.
//
//   q       [G, D] f32, already multiplied by the softmax scale s (the group's query heads)
//   meta    [num_slots, Hkv, CA_PSA_META_VECTORS, D] Cfg::KvT   (chunk_meta.h)
//   sel     [num_chunks] bytes out: 1 = selected (forced included)
//
// Estimated log-mass of full chunk j for head g (n = C tokens; PSA.md):
//   ℓ = ln n + q·μ + ½ Σ_i q_i² v_i,   capped (use_box) by   ln n + Σ_i max(q_i m_i, q_i M_i)
// The tail chunk (the last; maybe partial, always read) gets its exact log-sum-exp instead.
// π_j = softmax_j(ℓ_j) per head. Forced: chunk 0, the last recent_chunks chunks and the tail.
// Per head, the non-forced chunks with π ≥ τ are added, τ the largest threshold whose coverage
// (forced + added) reaches `mass`: found by bisection over the order-preserving integer image of
// ℓ (32 steps, no sort). Union over the G heads; safety net: the top ⌈safety_net·n⌉ non-forced
// chunks by Quest bound (max over heads); then clamp the count to [k_min, k_max] by the chunks'
// max-over-heads log π (forced chunks always stay). Top-k is again a bisection on the keys.
#ifndef CHUNKATTN_CPU_SELECT_H_
#define CHUNKATTN_CPU_SELECT_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "chunkattn/cpu/simd.h"
#include "chunkattn/cpu/types.h"
#include "chunkattn/psa_abi.h"
#include "chunkattn/psa_math.h"

namespace ca {
namespace cpu {
namespace psa {

using ca::psa::order_key;
using ca::psa::SelectArgs;

// Marks (in out, where eligible) the k entries of largest key; ties broken by lower index.
// Bisection on the key: the largest T with count(key ≥ T) ≥ k. O(32 n), no sort.
inline void mark_top_k(const int32_t* key, const uint8_t* eligible, int n, int k, uint8_t* out) {
  if (k <= 0) return;
  int count = 0;
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (int j = 0; j < n; ++j)
    if (eligible[j]) {
      ++count;
      lo = key[j] < lo ? key[j] : lo;
      hi = key[j] > hi ? key[j] : hi;
    }
  if (count <= k) {
    for (int j = 0; j < n; ++j)
      if (eligible[j]) out[j] = 1;
    return;
  }
  // count(key ≥ lo) = count ≥ k holds; count(key ≥ hi + 1) = 0 < k.
  hi += 1;
  while (hi - lo > 1) {
    const int64_t mid = ca::psa::bisect_mid(lo, hi);
    int c = 0;
    for (int j = 0; j < n; ++j) c += eligible[j] && key[j] >= mid;
    if (c >= k)
      lo = mid;
    else
      hi = mid;
  }
  int taken = 0;
  for (int j = 0; j < n; ++j)
    if (eligible[j] && key[j] > lo) out[j] = 1, ++taken;
  for (int j = 0; j < n && taken < k; ++j)
    if (eligible[j] && key[j] == lo && !out[j]) out[j] = 1, ++taken;
}

// Scratch of one select call (thread-local, grows only).
struct SelectScratch {
  std::vector<float> ell;         // [G, n] estimated log-mass per head
  std::vector<float> best;        // [n] max over heads of log π
  std::vector<float> bound;       // [n] max over heads of the Quest bound
  std::vector<float> w;           // [n] exp(ℓ - max ℓ) of one head
  std::vector<int32_t> cand_key;  // [n] the bisection's undecided chunks
  std::vector<float> cand_w;
  std::vector<int32_t> key;                // [n]
  std::vector<uint8_t> forced, elig, add;  // [n]
  void ensure(int g, int n) {
    if (int(best.size()) < n) {
      best.resize(n);
      bound.resize(n);
      key.resize(n);
      w.resize(n);
      cand_key.resize(n);
      cand_w.resize(n);
      forced.resize(n);
      elig.resize(n);
      add.resize(n);
    }
    if (int(ell.size()) < g * n) ell.resize(size_t(g) * n);
  }
};

inline SelectScratch& select_scratch() {
  thread_local SelectScratch s;
  return s;
}

// Selects the chunks of one (row, KV head). slots: the row's chunk slots (token order); len: its
// tokens; q: [G, D] scaled queries; k_tail: the tail chunk's K [C, D] (its first `valid` tokens
// are real). Returns the number selected; sel[j] = 1 for each.
template <class Cfg>
inline int select_row(const SelectArgs& a, const float* q, const typename Cfg::KvT* meta, int kvh,
                      const int32_t* slots, int n, int len, const typename Cfg::KvT* k_tail,
                      uint8_t* sel) {
  using KvT = typename Cfg::KvT;
  constexpr int D = Cfg::kHeadDim, C = Cfg::kChunk, Hkv = Cfg::kKvHeads,
                G = Cfg::kQHeads / Cfg::kKvHeads;
  if (n <= 0) return 0;
  if (ca::psa::selects_all(a, n)) {
    for (int j = 0; j < n; ++j) sel[j] = 1;
    return n;
  }
  SelectScratch& sc = select_scratch();
  sc.ensure(G, n);
  float* ell = sc.ell.data();
  uint8_t* forced = sc.forced.data();
  const int tail = n - 1;
  const int valid_tail = ca::psa::tail_tokens(len, n, C);
  for (int j = 0; j < n; ++j) {
    forced[j] = ca::psa::is_forced(j, n, a.recent_chunks);
    sel[j] = forced[j];
    sc.bound[j] = -INFINITY;
  }
  const float ln_c = logf(float(C));
  // Scores of the full chunks from their metadata.
  alignas(64) float q2[G][D];
  for (int g = 0; g < G; ++g)
    for (int d = 0; d < D; ++d) q2[g][d] = 0.5f * q[g * D + d] * q[g * D + d];
  // Per chunk, per head: q·μ, ½ Σ q² v and Σ max(q m, q M), W lanes at a time.
  for (int j = 0; j < tail; ++j) {
    const KvT* m = meta + (int64_t(slots[j]) * Hkv + kvh) * CA_PSA_META_VECTORS * D;
    simd::V dot[G], quad[G], box[G];
    for (int g = 0; g < G; ++g) dot[g] = quad[g] = box[g] = simd::zero();
    for (int d = 0; d < D; d += simd::kWidth) {
      const simd::V mu = simd::load(m + d), var = simd::load(m + D + d),
                    lo = simd::load(m + 2 * D + d), hi = simd::load(m + 3 * D + d);
      for (int g = 0; g < G; ++g) {
        const simd::V qv = simd::load(q + g * D + d);
        dot[g] = simd::fmadd(qv, mu, dot[g]);
        quad[g] = simd::fmadd(simd::load(&q2[g][d]), var, quad[g]);
        box[g] = simd::add(box[g], simd::max(simd::mul(qv, lo), simd::mul(qv, hi)));
      }
    }
    for (int g = 0; g < G; ++g) {
      const float b = simd::reduce_add(box[g]);
      const float cap = ca::psa::quest_bound(ln_c, b, a.use_box);
      sc.bound[j] = cap > sc.bound[j] ? cap : sc.bound[j];
      ell[g * n + j] = ca::psa::log_mass(ln_c, simd::reduce_add(dot[g]), simd::reduce_add(quad[g]),
                                         b, a.use_box);
    }
  }
  // The tail: exact log-sum-exp of its scores.
  for (int g = 0; g < G; ++g) {
    const float* qg = q + g * D;
    float mx = -INFINITY;
    float s[C];
    for (int t = 0; t < valid_tail; ++t) {
      simd::V acc = simd::zero();
      for (int d = 0; d < D; d += simd::kWidth)
        acc = simd::fmadd(simd::load(qg + d), simd::load(k_tail + t * D + d), acc);
      s[t] = simd::reduce_add(acc);
      mx = s[t] > mx ? s[t] : mx;
    }
    float sum = 0.f;
    for (int t = 0; t < valid_tail; ++t) sum += expf(s[t] - mx);
    ell[g * n + tail] = valid_tail > 0 ? mx + logf(sum) : -INFINITY;
  }

  // Per head: normalize, then bisect the threshold.
  for (int j = 0; j < n; ++j) sc.best[j] = -INFINITY;
  uint8_t* add = sc.add.data();
  memset(add, 0, size_t(n));
  for (int g = 0; g < G; ++g) {
    const float* e = ell + g * n;
    float mx = -INFINITY;
    for (int j = 0; j < n; ++j) mx = e[j] > mx ? e[j] : mx;
    // Weights w_j = e^(ℓ_j - max) (0 for forced chunks, whose mass is `covered`); forced keys
    // are INT32_MIN, below every threshold, so the coverage sum is one branch-free pass.
    float* w = sc.w.data();
    int32_t* key = sc.key.data();
    float total = 0.f, covered = 0.f;
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (int j = 0; j < n; ++j) {
      const float wj = expf(e[j] - mx);
      total += wj;
      if (forced[j]) {
        covered += wj;
        w[j] = 0.f;
        key[j] = INT32_MIN;
      } else {
        w[j] = wj;
        key[j] = order_key(e[j]);
        lo = key[j] < lo ? key[j] : lo;
        hi = key[j] > hi ? key[j] : hi;
      }
    }
    const float log_total = mx + logf(total);
    for (int j = 0; j < n; ++j) {
      const float lp = e[j] - log_total;
      sc.best[j] = lp > sc.best[j] ? lp : sc.best[j];
    }
    const float target = a.mass * total;
    if (covered >= target || lo > hi) continue;
    // Bisection on the threshold over a shrinking candidate set (the undecided chunks, keys in
    // [lo, hi1)): coverage(lo) ≥ target > coverage(hi1) throughout; each step decides every
    // candidate on one side of mid, so the passes total O(n) on average. No sort.
    int32_t* ck = sc.cand_key.data();
    float* cw = sc.cand_w.data();
    int m = 0;
    float all = covered;
    for (int j = 0; j < n; ++j)
      if (!forced[j]) {
        ck[m] = key[j];
        cw[m++] = w[j];
        all += w[j];
      }
    if (all < target) {  // rounding: everything it can add
      for (int j = 0; j < n; ++j) add[j] |= !forced[j];
      continue;
    }
    float fixed = covered;  // mass of the chunks decided in (keys ≥ hi1) and the forced ones
    int64_t hi1 = hi + 1;
    while (hi1 - lo > 1 && m > 0) {
      const int64_t mid = ca::psa::bisect_mid(lo, hi1);
      const int32_t t = int32_t(mid);
      float ge = 0.f;
      for (int i = 0; i < m; ++i) ge += ck[i] >= t ? cw[i] : 0.f;
      const bool reaches = fixed + ge >= target;
      int kept = 0;
      for (int i = 0; i < m; ++i)
        if ((ck[i] >= t) == reaches) {
          ck[kept] = ck[i];
          cw[kept++] = cw[i];
        }
      m = kept;
      if (reaches) {
        lo = mid;
      } else {
        hi1 = mid;
        fixed += ge;
      }
    }
    for (int j = 0; j < n; ++j)
      if (!forced[j] && sc.key[j] >= lo) add[j] = 1;
  }
  for (int j = 0; j < n; ++j) sel[j] |= add[j];

  // Safety net: the top ⌈safety_net · non-forced⌉ by Quest bound.
  int free_chunks = 0;
  for (int j = 0; j < n; ++j) free_chunks += !forced[j];
  if (const int k = ca::psa::safety_count(a, free_chunks)) {
    for (int j = 0; j < n; ++j) {
      sc.elig[j] = !forced[j];
      sc.key[j] = order_key(sc.bound[j]);
    }
    mark_top_k(sc.key.data(), sc.elig.data(), n, k, sel);
  }

  // Clamp to [k_min, k_max] by max-over-heads log π; forced chunks always stay.
  int count = 0, num_forced = 0;
  for (int j = 0; j < n; ++j) {
    count += sel[j];
    num_forced += forced[j];
    sc.key[j] = order_key(sc.best[j]);
  }
  if (count < a.k_min) {
    for (int j = 0; j < n; ++j) sc.elig[j] = !sel[j];
    mark_top_k(sc.key.data(), sc.elig.data(), n, a.k_min - count, sel);
  } else if (count > a.k_max) {
    const int keep = ca::psa::clamp_keep(a, num_forced);
    for (int j = 0; j < n; ++j) {
      sc.elig[j] = sel[j] && !forced[j];
      add[j] = 0;
    }
    mark_top_k(sc.key.data(), sc.elig.data(), n, keep, add);
    for (int j = 0; j < n; ++j) sel[j] = forced[j] || add[j];
  }
  count = 0;
  for (int j = 0; j < n; ++j) count += sel[j];
  return count;
}

}  // namespace psa
}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_SELECT_H_
