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
// (forced + added) reaches `mass`: a search over the order-preserving integer image of ℓ that
// tests one candidate key per step and drops the candidates it decides (O(n) on average, no
// sort). Union over the G heads; safety net: the top ⌈safety_net·n⌉ non-forced chunks by Quest
// bound (max over heads); then clamp the count to [k_min, k_max] by the chunks' max-over-heads
// log π (forced chunks always stay). Top-k is a bisection on the keys.
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
  std::vector<float> best;        // [n] max over heads of log π
  std::vector<float> w;           // [n] exp(ℓ - max ℓ) of one head
  std::vector<int32_t> cand_key;  // [n] the bisection's undecided chunks
  std::vector<float> cand_w;
  std::vector<int32_t> key;                // [n]
  std::vector<uint8_t> forced, elig, add;  // [n]
  std::vector<float> q4;                   // [G, 4, D]: q, ½q², max(q, 0), min(q, 0)
  void ensure(int g, int n, int d) {
    if (int(q4.size()) < 4 * g * d) q4.resize(size_t(4) * g * d);
    if (int(best.size()) < n) {
      best.resize(n);
      key.resize(n);
      w.resize(n + simd::kWidth);  // whole vectors
      cand_key.resize(n);
      cand_w.resize(n);
      forced.resize(n);
      elig.resize(n);
      add.resize(n);
    }
  }
};

inline SelectScratch& select_scratch() {
  thread_local SelectScratch s;
  return s;
}

// What score_chunks needs of one (row, KV head).
struct ScoreRow {
  const float* q4;  // [G, 4, D]: q, ½q², max(q, 0), min(q, 0) of the scaled queries (make_q4)
  float* ell;       // [G, ld] estimated log-mass of chunk j for head g at ell[g * ld + j]
  float* bound;     // [ld] the max over heads of the Quest bound
  int ld;           // the row's chunk count
  int end;          // chunks from here on are not scored (the tail)
};

template <class Cfg>
inline void make_q4(const float* q, float* q4) {
  constexpr int D = Cfg::kHeadDim, G = Cfg::kQHeads / Cfg::kKvHeads;
  for (int g = 0; g < G; ++g)
    for (int d = 0; d < D; ++d) {
      const float x = q[g * D + d];
      float* r = q4 + size_t(g) * 4 * D;
      r[d] = x;
      r[D + d] = 0.5f * x * x;
      r[2 * D + d] = x > 0.f ? x : 0.f;
      r[3 * D + d] = x < 0.f ? x : 0.f;
    }
}

// The 2G sums of a block of NB chunks for one row (see score_chunks): m[b] the metadata of
// chunk b of the block ([4, D], KvT or f32).
template <class Cfg, int NB, int NR, class MT>
CA_CPU_INLINE void score_block(const float* q4, const MT* const* m, float* sums) {
  using simd::V;
  constexpr int D = Cfg::kHeadDim, G = Cfg::kQHeads / Cfg::kKvHeads, W = simd::kWidth, P = 2 * G;
  V acc[NR * W];
  for (int i = 0; i < NR * W; ++i) acc[i] = simd::zero();
  for (int d = 0; d < D; d += W) {
    V mu[NB], var[NB], lo[NB], hi[NB];
    for (int b = 0; b < NB; ++b) {
      mu[b] = simd::load(m[b] + d);
      var[b] = simd::load(m[b] + D + d);
      lo[b] = simd::load(m[b] + 2 * D + d);
      hi[b] = simd::load(m[b] + 3 * D + d);
    }
    for (int g = 0; g < G; ++g) {
      const float* r = q4 + size_t(g) * 4 * D + d;
      const V qv = simd::load(r), q2 = simd::load(r + D), qp = simd::load(r + 2 * D),
              qn = simd::load(r + 3 * D);
      for (int b = 0; b < NB; ++b) {
        V& e = acc[b * P + g];
        V& x = acc[b * P + G + g];
        e = simd::fmadd(qv, mu[b], simd::fmadd(q2, var[b], e));
        x = simd::fmadd(qp, hi[b], simd::fmadd(qn, lo[b], x));
      }
    }
  }
  for (int r = 0; r < NR; ++r) simd::store(sums + r * W, simd::reduce_transpose(acc + r * W));
}

// Scores the full chunks [j0, j1) (slots[i]: the slot of chunk j0 + i) for each of `rows`, which
// share them (a shared run's chunks: each block's metadata is read and converted to f32 once
// for all of them, then stays in L1 while every row scores it). Per chunk and head two dot
// products over D: q·μ + ½q²·v, and the box q⁺·M + q⁻·m (= Σ max(q m, q M), as m ≤ M). Their
// 2G sums of a block of chunks are reduced together (reduce_transpose: one vector of lane sums
// per kWidth accumulators) instead of one horizontal sum each. A (row, chunk)'s figures do not
// depend on the other rows or on where the range starts.
template <class Cfg>
inline void score_chunks(const SelectArgs& a, const typename Cfg::KvT* meta, int kvh,
                         const int32_t* slots, int j0, int j1, const ScoreRow* rows, int nrows) {
  using KvT = typename Cfg::KvT;
  constexpr int D = Cfg::kHeadDim, C = Cfg::kChunk, Hkv = Cfg::kKvHeads,
                G = Cfg::kQHeads / Cfg::kKvHeads;
  constexpr int W = simd::kWidth;
  constexpr int P = 2 * G;                  // sums per chunk
  constexpr int NB = P >= W ? 1 : W / P;    // chunks per block
  constexpr int NR = (NB * P + W - 1) / W;  // reduce_transpose calls per block
  constexpr int kMetaElems = CA_PSA_META_VECTORS * D;
  const float ln_c = logf(float(C));
  for (int jb = j0; jb < j1; jb += NB) {
    const int in_range = j1 - jb < NB ? j1 - jb : NB;
    const KvT* m[NB];
    for (int b = 0; b < NB; ++b)
      m[b] = meta + (int64_t(slots[jb - j0 + (b < in_range ? b : 0)]) * Hkv + kvh) * kMetaElems;
    // The next block's metadata streams in while this one is scored.
    for (int b = 0; b < NB && jb + NB + b < j1; ++b) {
      const char* next = reinterpret_cast<const char*>(
          meta + (int64_t(slots[jb + NB + b - j0]) * Hkv + kvh) * kMetaElems);
      for (size_t i = 0; i < kMetaElems * sizeof(KvT); i += 64) __builtin_prefetch(next + i, 0, 3);
    }
    // Several rows: the block's metadata in f32, converted once for all of them.
    alignas(64) float mf[NB][kMetaElems];
    const float* mfp[NB];
    if (nrows > 1)
      for (int b = 0; b < NB; ++b) {
        for (int i = 0; i < kMetaElems; i += W) simd::store(mf[b] + i, simd::load(m[b] + i));
        mfp[b] = mf[b];
      }
    for (int ri = 0; ri < nrows; ++ri) {
      const ScoreRow& row = rows[ri];
      const int nb = row.end - jb < in_range ? row.end - jb : in_range;
      if (nb <= 0) continue;
      alignas(64) float sums[NR * W];
      if (nrows > 1)
        score_block<Cfg, NB, NR>(row.q4, mfp, sums);
      else
        score_block<Cfg, NB, NR>(row.q4, m, sums);
      for (int b = 0; b < nb; ++b) {
        const int j = jb + b;
        float bound = -INFINITY;
        for (int g = 0; g < G; ++g) {
          const float e = sums[b * P + g], box = sums[b * P + G + g];
          const float cap = ca::psa::quest_bound(ln_c, box, a.use_box);
          bound = cap > bound ? cap : bound;
          row.ell[g * row.ld + j] = ca::psa::log_mass(ln_c, e, 0.f, box, a.use_box);
        }
        row.bound[j] = bound;
      }
    }
  }
}

// Floats of the ell and bound buffers select_row takes for a row of n chunks (padded: whole
// vectors are read past the end).
template <class Cfg>
inline constexpr size_t score_floats(int n) {
  return (size_t(Cfg::kQHeads / Cfg::kKvHeads + 1) * size_t(n) + 2 * simd::kWidth + 15) / 16 * 16;
}

// Selects the chunks of one (row, KV head). slots: the row's chunk slots (token order); len: its
// tokens; q: [G, D] scaled queries; k_tail: the tail chunk's K [C, D] (its first `valid` tokens
// are real). scores: score_floats<Cfg>(n) floats, of which the ell and bound of chunks
// [0, scored) are already filled in by score_chunks (a shared run's, scored once per tile of
// sharers); the rest it scores itself. Returns the number selected; sel[j] = 1 for each.
template <class Cfg>
inline int select_row(const SelectArgs& a, const float* q, const typename Cfg::KvT* meta, int kvh,
                      const int32_t* slots, int n, int len, const typename Cfg::KvT* k_tail,
                      uint8_t* sel, float* scores, int scored) {
  using KvT = typename Cfg::KvT;
  constexpr int D = Cfg::kHeadDim, C = Cfg::kChunk, Hkv = Cfg::kKvHeads,
                G = Cfg::kQHeads / Cfg::kKvHeads;
  if (n <= 0) return 0;
  if (ca::psa::selects_all(a, n)) {
    for (int j = 0; j < n; ++j) sel[j] = 1;
    return n;
  }
  SelectScratch& sc = select_scratch();
  sc.ensure(G, n, D);
  float* ell = scores;            // [G, n]
  float* bound = scores + G * n;  // [n]
  uint8_t* forced = sc.forced.data();
  const int tail = n - 1;
  const int valid_tail = ca::psa::tail_tokens(len, n, C);
  for (int j = 0; j < n; ++j) {
    forced[j] = ca::psa::is_forced(j, n, a.recent_chunks);
    sel[j] = forced[j];
  }
  // Scores of the full chunks from their metadata (those the caller has not scored).
  if (scored > tail) scored = tail;
  if (scored < tail) {
    make_q4<Cfg>(q, sc.q4.data());
    const ScoreRow row{sc.q4.data(), ell, bound, n, tail};
    score_chunks<Cfg>(a, meta, kvh, slots + scored, scored, tail, &row, 1);
  }
  bound[tail] = -INFINITY;
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
    // Weights w_j = e^(ℓ_j - max), kWidth at a time (spare lanes of the last block: -inf, so
    // weight 0); then 0 for forced chunks, whose mass is `covered`. Forced keys are INT32_MIN,
    // below every threshold, so the coverage sum is one branch-free pass.
    constexpr int W = simd::kWidth;
    simd::V vmx = simd::bcast(-INFINITY);
    for (int j = 0; j < n; j += W)
      vmx = simd::max(vmx, simd::fill_from(simd::load(e + j), n - j, -INFINITY));
    const simd::V vref = simd::bcast(simd::reduce_max(vmx));
    float* w = sc.w.data();
    simd::V vtotal = simd::zero();
    for (int j = 0; j < n; j += W) {
      const simd::V x =
          simd::exp_nonpos(simd::sub(simd::fill_from(simd::load(e + j), n - j, -INFINITY), vref));
      simd::store(w + j, x);
      vtotal = simd::add(vtotal, x);
    }
    const float mx = simd::reduce_max(vmx);
    const float total = simd::reduce_add(vtotal);
    int32_t* key = sc.key.data();
    float covered = 0.f;
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    for (int j = 0; j < n; ++j) {
      if (forced[j]) {
        covered += w[j];
        w[j] = 0.f;
        key[j] = INT32_MIN;
      } else {
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
    // The threshold: the largest key T among the free chunks whose coverage (forced + the free
    // chunks with key ≥ T) reaches the target. Searched over a shrinking candidate set (the
    // undecided chunks): each step tests one candidate's key t and decides every candidate on one
    // side of it (coverage(lo) ≥ target throughout; `fixed`: the mass decided in), so the passes
    // total O(n) on average. No sort.
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
    float fixed = covered;
    while (m > 0) {
      // Pivot: the median of the first, middle and last candidates' keys.
      const int32_t a0 = ck[0], a1 = ck[m / 2], a2 = ck[m - 1];
      const int32_t t =
          a0 < a1 ? (a1 < a2 ? a1 : (a0 < a2 ? a2 : a0)) : (a0 < a2 ? a0 : (a1 < a2 ? a2 : a1));
      float ge = 0.f;
      for (int i = 0; i < m; ++i) ge += ck[i] >= t ? cw[i] : 0.f;
      const bool reaches = fixed + ge >= target;
      if (reaches)
        lo = t;
      else
        fixed += ge;
      // Undecided: keys above t when t reaches (T ≥ t), below t otherwise (T < t).
      int kept = 0;
      for (int i = 0; i < m; ++i) {
        const bool keep = reaches ? ck[i] > t : ck[i] < t;
        ck[kept] = ck[i];
        cw[kept] = cw[i];
        kept += keep;
      }
      m = kept;
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
      sc.key[j] = order_key(bound[j]);
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
