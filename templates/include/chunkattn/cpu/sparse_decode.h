// chunkattn/cpu/sparse_decode.h — PSA decode on the cpu target: select, then two-phase decode
// driven by the selected lists (ca_psa_decode; ABI in chunkattn/psa_abi.h).
//
//   q, out, k_pool, v_pool, context, workspace: as ca_decode (chunkattn/cpu/decode.h)
//   meta     [num_slots, Hkv, CA_PSA_META_VECTORS, D]  Cfg::KvT
//   lists    [num_rows, Hkv, max_chunks] int32 out;  counts [num_rows, Hkv] int32 out
//
// Step 0, scores of the shared chunks: one task per (shared run, KV head, tile of
// ≤ kScoreTileRows sharers) scores the run's chunks for every sharer of the tile (score_chunks,
// select.h), each chunk's metadata read once for the tile. A row's figures are the same as when
// it scores the chunks alone, so sharing never changes a selection.
// Step 1, select: one task per (requested row, KV head) (select.h); scores the row's own chunks,
// writes the row's byte mask and its compacted list. When every requested list holds all of its
// row's chunks, the dense two-phase kernel runs instead (so mass 1 is dense, bit for bit).
// Step 2 (no guard): the dense two-phase kernel (decode.h) run with the selection as an extra
// mask (Selected<Variant>, a per-chunk mask: kChunkMask): a chunk no row of a task selected is
// skipped unread; a shared chunk is loaded once per phase-1 tile when any of the tile's sharers
// selected it, and only the sharers that selected it attend it (the others are left out of the
// tile's blocks), so a row's result never depends on who else is in the batch.
// Step 2 (guard): list-driven phases of this header. Phase 1, one task per (shared run, KV head,
// tile of ≤ kSparseTileRows sharers): chunk by chunk, a chunk any sharer of the tile selected is
// loaded once and attended by exactly those sharers; each sharer's state becomes its partial.
// Phase 2, one task per (requested row, KV head): the row's own selected chunks, its run
// partials merged, the progressive step, the output.
//
// Guard (the progressive step): with the per-head estimates of the mass left out, a head whose
// exact covered mass Z_sel falls short, Z_sel / (Z_sel + Z_left) < mass, attends the next batch
// of unselected chunks (up to max(k_min, 4), highest estimated π first) directly in phase 2.
// The estimates are ln Σ over unselected chunks of e^ℓ, computed by select.
#ifndef CHUNKATTN_CPU_SPARSE_DECODE_H_
#define CHUNKATTN_CPU_SPARSE_DECODE_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <vector>

#include "chunkattn/context.h"
#include "chunkattn/cpu/decode.h"
#include "chunkattn/cpu/kernels.h"
#include "chunkattn/cpu/select.h"
#include "chunkattn/psa_abi.h"
#include "chunkattn/softmax_state.h"

namespace ca {
namespace cpu {
namespace psa {

inline constexpr int kSparseTileRows = 32;
inline constexpr int kScoreTileRows = 16;
using ca::psa::kGuardBatch;

// What the selection mask of one call looks like to Selected<Variant>::mask.
struct SelectionView {
  const float* user_params;   // the spec's params (what Variant sees)
  const uint8_t* mask;        // [num_rows, Hkv, max_chunks]
  const int32_t* row_of_seq;  // sequence handle -> DFS row
  int32_t num_seqs;           // entries of row_of_seq
  int32_t max_chunks;
};

// The spec's Variant with the selection as an extra mask: a (row, KV head) sees a token only if
// it selected the token's chunk. The dense two-phase kernel run with it skips every chunk no row
// of a task selected (its K/V is never read), loads a shared chunk once per phase-1 tile when
// any sharer of the tile selected it, and masks it out for the sharers that did not. The view
// travels in the `params` pointer the kernel hands to every mask / score_mod call.
template <class Variant, int C, int Hkv>
struct Selected {
  static constexpr bool kHasScoreMod = Variant::kHasScoreMod;
  static constexpr bool kHasMask = true;
  static CA_HD const SelectionView& view(const float* params) {
    return *reinterpret_cast<const SelectionView*>(params);
  }
  CA_HD static float score_mod(float score, const Pos& pos, const float* params) {
    return Variant::score_mod(score, pos, view(params).user_params);
  }
  // Whether the (row, KV head) of pos selected the chunk holding token pos.kv.
  CA_HD static bool mask_chunk(const Pos& pos, const float* params) {
    const SelectionView& v = view(params);
    if (pos.seq < 0 || pos.seq >= v.num_seqs) return false;
    const int32_t row = v.row_of_seq[pos.seq];
    return row >= 0 &&
           v.mask[(size_t(row) * Hkv + pos.kv_head) * size_t(v.max_chunks) + pos.kv / C] != 0;
  }
  CA_HD static bool mask(const Pos& pos, const float* params) {
    const SelectionView& v = view(params);
    if (pos.seq < 0 || pos.seq >= v.num_seqs) return false;
    const int32_t row = v.row_of_seq[pos.seq];
    if (row < 0) return false;
    const uint8_t selected =
        v.mask[(size_t(row) * Hkv + pos.kv_head) * size_t(v.max_chunks) + pos.kv / C];
    return selected && (!Variant::kHasMask || Variant::mask(pos, v.user_params));
  }
};

struct RunTask {
  int32_t run, kv_head, row_begin, row_end;
};

// One task per (shared run, KV head, tile of at most `rows` of the run's rows) that holds a
// requested row.
template <int Hkv>
inline void tile_runs(const KernelContext& c, int rows, std::vector<RunTask>& tasks) {
  tasks.clear();
  for (int i = 0; i < c.num_runs(); ++i) {
    const CaSharedRun& run = c.run(i);
    for (int r0 = run.row_begin; r0 < run.row_end; r0 += rows) {
      const int r1 = r0 + rows < run.row_end ? r0 + rows : run.row_end;
      bool requested = false;  // a subset decode leaves some rows out (row_io < 0)
      for (int r = r0; r < r1; ++r) requested |= c.row_io(r) >= 0;
      if (!requested) continue;
      for (int kvh = 0; kvh < Hkv; ++kvh) tasks.push_back(RunTask{i, kvh, r0, r1});
    }
  }
}

}  // namespace psa

// Attend for a Selected variant: the selection is per chunk, so the mask of a (row, chunk) is
// one lookup and a memset (then the spec's own mask, if any, per token) instead of a call per
// token. Same members as the generic Attend of decode.h.
template <class Cfg, class Inner, int CS, int HS>
struct Attend<Cfg, psa::Selected<Inner, CS, HS>> {
  using Variant = psa::Selected<Inner, CS, HS>;
  using Dm = Dims<Cfg>;
  using KvT = typename Cfg::KvT;
  static constexpr int G = Dm::kGroup, D = Dm::kHeadDim, C = Dm::kChunk, Hq = Dm::kQHeads,
                       Hkv = Dm::kKvHeads;
  static constexpr bool kVariant = true;
  // Without a mask of the spec's own, a row sees all of a chunk or none of it.
  static constexpr bool kChunkMask = !Inner::kHasMask;
#if defined(CA_CPU_DPBF16)
  static constexpr bool kDotBf16 = std::is_same<KvT, bf16>::value && D % 32 == 0;
#else
  static constexpr bool kDotBf16 = false;
#endif
  static_assert(CS == C && HS == Hkv, "Selected must match the module's chunk size and KV heads");

  static CA_CPU_INLINE void apply_variant(float* s, const uint8_t* vis, int valid, Pos pos,
                                          int token0, const float* params) {
    if constexpr (kChunkMask) {
      // Called for rows that see the whole chunk only (kChunkMask, decode.h).
      (void)vis;
      if constexpr (Inner::kHasScoreMod) {
        const float* user = Variant::view(params).user_params;
        for (int t = 0; t < valid; ++t) {
          pos.kv = token0 + t;
          s[t] = Inner::score_mod(s[t], pos, user);
        }
      } else {
        (void)s, (void)valid, (void)pos, (void)token0, (void)params;
      }
      return;
    }
    const float* user = Variant::view(params).user_params;
    for (int t = 0; t < valid; ++t) {
      if (!vis[t]) {
        s[t] = -INFINITY;
        continue;
      }
      if constexpr (Inner::kHasScoreMod) {
        pos.kv = token0 + t;
        s[t] = Inner::score_mod(s[t], pos, user);
      }
    }
  }

  static CA_CPU_INLINE bool may_see(const Pos& pos, int token0, const float* params) {
    Pos p = pos;
    p.kv = token0;
    return Variant::mask_chunk(p, params);
  }

  static CA_CPU_INLINE bool eval_mask(uint8_t* vis, int valid, Pos pos, int token0,
                                      const float* params) {
    if (valid <= 0) return false;
    pos.kv = token0;
    if (!Variant::mask_chunk(pos, params)) {
      memset(vis, 0, size_t(valid));
      return false;
    }
    if constexpr (Inner::kHasMask) {
      const float* user = Variant::view(params).user_params;
      bool any = false;
      for (int t = 0; t < valid; ++t) {
        pos.kv = token0 + t;
        const bool v = Inner::mask(pos, user);
        vis[t] = v;
        any |= v;
      }
      return any;
    } else {
      memset(vis, 1, size_t(valid));
      return true;
    }
  }
};

namespace psa {

template <class Cfg, class Variant>
struct SparseJob {
  using A = Attend<Cfg, Variant>;
  using KvT = typename Cfg::KvT;
  using QT = typename Cfg::QT;
  using OutT = typename Cfg::OutT;
  static constexpr int G = A::G, D = A::D, C = A::C, Hq = A::Hq, Hkv = A::Hkv;

  const CaDecodeParams* p = nullptr;
  const CaPsaParams* s = nullptr;
  SelectArgs args{};
  uint8_t* mask = nullptr;  // [num_rows, Hkv, max_chunks]
  float* part_o = nullptr;
  float* part_lse = nullptr;
  const RunTask* tasks1 = nullptr;
  int num_tasks1 = 0;
  int num_tasks2 = 0;
  // Select's scores: score_floats<Cfg>(max_chunks) floats per (requested row, KV head).
  float* scores = nullptr;
  size_t score_stride = 0;
  const int32_t* request_of_row = nullptr;  // [num_rows] request index, -1 if not requested
  const RunTask* score_tasks = nullptr;     // (run, KV head, tile of sharers)
  int num_score_tasks = 0;
  enum Stage { kScore, kSelect, kPhase1, kPhase2 };
  Stage stage = kSelect;
  alignas(64) std::atomic<int> next{0};
  alignas(64) std::atomic<int> incomplete{0};  // requested lists missing a chunk
  alignas(64) std::atomic<int> status{CA_OK};

  KernelContext ctx() const { return KernelContext{p->context}; }
  // Chunks a row attends: its chunk list cut at its length.
  static int row_chunks(const KernelContext& c, int r) {
    const int by_len = (c.row_length(r) + C - 1) / C;
    const int listed = c.row_num_chunks(r);
    return by_len < listed ? by_len : listed;
  }
  uint8_t* row_mask(int r, int kvh) const {
    return mask + (size_t(r) * Hkv + kvh) * size_t(s->max_chunks);
  }

  static void entry(void* self, int thread_index) {
    (void)thread_index;
    static_cast<SparseJob*>(self)->work();
  }

  void work() {
    Scratch& scratch = thread_scratch();
    if (!scratch.ensure(Dims<Cfg>::kScratchFloats)) {
      status.store(CA_ERR_NO_MEMORY);
      return;
    }
    const ScratchView<Cfg> sv(scratch.data());
    const KernelContext c = ctx();
    if (stage == kScore) {
      for (int i; (i = next.fetch_add(1, std::memory_order_relaxed)) < num_score_tasks;)
        score_task(score_tasks[i], sv);
    } else if (stage == kSelect) {
      for (int i; (i = next.fetch_add(1, std::memory_order_relaxed)) < c.num_requests() * Hkv;)
        select_task(c.request_row(i / Hkv), i % Hkv, sv);
    } else if (stage == kPhase1) {
      for (int i; (i = next.fetch_add(1, std::memory_order_relaxed)) < num_tasks1;)
        phase1_task(tasks1[i], sv);
    } else {
      for (int i; (i = next.fetch_add(1, std::memory_order_relaxed)) < num_tasks2;)
        phase2_task(c.request_row(i / Hkv), i % Hkv, sv);
    }
  }

  void load_q(float* dst, int io, int kvh) const {
    const QT* q = static_cast<const QT*>(p->q);
    for (int g = 0; g < G; ++g)
      kern::convert_scaled(dst + g * D, q + (size_t(io) * Hq + kvh * G + g) * D, D,
                           p->softmax_scale);
  }

  // Whether select scores row r's chunks from the metadata (not dense, not everything).
  bool scores_row(const KernelContext& c, int r) const {
    const int n = row_chunks(c, r);
    return c.row_io(r) >= 0 && n > 1 && !ca::psa::dense_row(args, c.row_length(r)) &&
           !ca::psa::selects_all(args, n);
  }
  float* row_scores(int r, int kvh) const {
    return scores + (size_t(request_of_row[r]) * Hkv + kvh) * score_stride;
  }

  // Scores a shared run's chunks for a tile of its sharers: each chunk's metadata is read once
  // for the tile (select_row then scores only the row's own chunks).
  void score_task(const RunTask& t, const ScratchView<Cfg>& sv) {
    const KernelContext c = ctx();
    const CaSharedRun& run = c.run(t.run);
    thread_local std::vector<float> q4;
    thread_local std::vector<ScoreRow> rows;
    if (q4.size() < size_t(kScoreTileRows) * G * 4 * D)
      q4.resize(size_t(kScoreTileRows) * G * 4 * D);
    rows.clear();
    for (int r = t.row_begin; r < t.row_end; ++r) {
      if (!scores_row(c, r)) continue;
      float* q4r = q4.data() + rows.size() * G * 4 * D;
      load_q(sv.q, c.row_io(r), t.kv_head);
      make_q4<Cfg>(sv.q, q4r);
      const int n = row_chunks(c, r);
      float* sc = row_scores(r, t.kv_head);
      rows.push_back(ScoreRow{q4r, sc, sc + size_t(G) * n, n, n - 1});
    }
    if (rows.empty()) return;
    score_chunks<Cfg>(args, static_cast<const KvT*>(s->meta), t.kv_head,
                      c.run_slots() + run.chunk_begin, run.kv_begin / C,
                      run.kv_begin / C + run.num_chunks, rows.data(), int(rows.size()));
  }

  void select_task(int r, int kvh, const ScratchView<Cfg>& sv) {
    const KernelContext c = ctx();
    const int n = row_chunks(c, r);
    const int len = c.row_length(r);
    uint8_t* sel = row_mask(r, kvh);
    memset(sel, 0, size_t(s->max_chunks));
    int count = 0;
    if (n > 0) {
      if (ca::psa::dense_row(args, len)) {
        for (int j = 0; j < n; ++j) sel[j] = 1;
        count = n;
      } else {
        load_q(sv.q, c.row_io(r), kvh);
        const int32_t* slots = c.row_chunk_slots(r);
        const KvT* k_tail =
            static_cast<const KvT*>(p->k_pool) + (size_t(slots[n - 1]) * Hkv + kvh) * C * D;
        // Chunks of shared runs were scored by score_task (when the call has runs).
        const int scored = num_score_tasks > 0 ? c.row_shared_chunks(r) : 0;
        count = select_row<Cfg>(args, sv.q, static_cast<const KvT*>(s->meta), kvh, slots, n, len,
                                k_tail, sel, row_scores(r, kvh), scored);
      }
    }
    int32_t* list = s->lists + (size_t(r) * Hkv + kvh) * size_t(s->max_chunks);
    int k = 0;
    for (int j = 0; j < n; ++j)
      if (sel[j]) list[k++] = j;
    s->counts[size_t(r) * Hkv + kvh] = k;
    if (s->guard_added) s->guard_added[size_t(r) * Hkv + kvh] = 0;
    if (count < n) incomplete.fetch_add(1, std::memory_order_relaxed);
  }

  // Attends one chunk for the G heads of one row: S = Q K^T, masks, online softmax, O += P V.
  // q [G, D] scaled; o [G, D]; m, l, alpha [G]; s_buf [G, C], vis [G, C].
  static CA_CPU_INLINE void attend_chunk(const CaDecodeParams& p, float* q, float* o, float* m,
                                         float* l, float* alpha, float* s_buf, uint8_t* vis,
                                         const KvT* kp, const KvT* vp, int valid, int token0,
                                         Pos pos) {
    if constexpr (Variant::kHasMask) {
      bool any = false;
      for (int g = 0; g < G; ++g) {
        Pos pg = pos;
        pg.q_head = pos.kv_head * G + g;
        any |= A::eval_mask(vis + g * C, valid, pg, token0, p.params);
      }
      if (!any) return;
    }
    kern::qk_direct_rows<G, C, D>(s_buf, q, kp, valid);
    for (int g = 0; g < G; ++g) {
      float* sg = s_buf + g * C;
      kern::mask_tail<C>(sg, valid);
      if constexpr (A::kVariant) {
        Pos pg = pos;
        pg.q_head = pos.kv_head * G + g;
        A::apply_variant(sg, vis + g * C, valid, pg, token0, p.params);
      }
      kern::softmax_row<C>(sg, m[g], l[g], alpha[g]);
    }
    pv_heads(o, alpha, s_buf, vp, valid);
  }

  template <int G0 = 0>
  static CA_CPU_INLINE void pv_heads(float* o, const float* alpha, const float* s_buf,
                                     const KvT* vp, int keys) {
    if constexpr (G0 < G) {
      constexpr int rows = (G - G0) < kern::kTileRows ? (G - G0) : kern::kTileRows;
      kern::pv_rows<rows, D>(o + G0 * D, D, alpha + G0, s_buf + G0 * C, C, vp, keys);
      pv_heads<G0 + rows>(o, alpha, s_buf, vp, keys);
    }
  }

  void phase1_task(const RunTask& t, const ScratchView<Cfg>& sv) {
    const KernelContext c = ctx();
    const CaSharedRun& run = c.run(t.run);
    const int kvh = t.kv_head;
    const int nrows = t.row_end - t.row_begin;
    thread_local std::vector<float> state;
    const size_t per_row = size_t(2 * G * D + 2 * G);
    if (state.size() < per_row * kSparseTileRows) state.resize(per_row * kSparseTileRows);
    auto q_of = [&](int i) { return state.data() + per_row * i; };
    auto o_of = [&](int i) { return q_of(i) + G * D; };
    auto m_of = [&](int i) { return o_of(i) + G * D; };
    auto l_of = [&](int i) { return m_of(i) + G; };
    bool live[kSparseTileRows];
    for (int i = 0; i < nrows; ++i) {
      const int r = t.row_begin + i;
      live[i] = c.row_io(r) >= 0;
      if (!live[i]) continue;
      load_q(q_of(i), c.row_io(r), kvh);
      for (int x = 0; x < G * D; ++x) o_of(i)[x] = 0.f;
      for (int g = 0; g < G; ++g) m_of(i)[g] = -INFINITY, l_of(i)[g] = 0.f;
    }
    const int first = run.kv_begin / C;
    const size_t chunk_elems = size_t(C) * D;
    const KvT* k_pool = static_cast<const KvT*>(p->k_pool);
    const KvT* v_pool = static_cast<const KvT*>(p->v_pool);
    for (int i = 0; i < run.num_chunks; ++i) {
      const int j = first + i;
      const int token0 = j * C;
      bool any = false;
      for (int x = 0; x < nrows; ++x)
        any |= live[x] && j < s->max_chunks && row_mask(t.row_begin + x, kvh)[j];
      if (!any) continue;  // no sharer of the tile selected it: never loaded
      const size_t base = (size_t(c.run_slots()[run.chunk_begin + i]) * Hkv + kvh) * chunk_elems;
      for (int x = 0; x < nrows; ++x) {
        const int r = t.row_begin + x;
        if (!live[x] || !row_mask(r, kvh)[j]) continue;  // masked out for this sharer
        const int len = c.row_length(r);
        if (token0 >= len) continue;
        const int valid = len - token0 < C ? len - token0 : C;
        attend_chunk(*p, q_of(x), o_of(x), m_of(x), l_of(x), sv.alpha, sv.s, sv.vis, k_pool + base,
                     v_pool + base, valid, token0, Pos{c.row_seq(r), 0, kvh, len - 1, 0});
      }
    }
    for (int x = 0; x < nrows; ++x) {
      if (!live[x]) continue;
      const size_t partial = size_t(run.partial_begin + x + (t.row_begin - run.row_begin));
      for (int g = 0; g < G; ++g) {
        const int h = kvh * G + g;
        const float l = l_of(x)[g];
        part_lse[partial * Hq + h] = l == 0.f ? -INFINITY : m_of(x)[g] + logf(l);
        const float inv = l == 0.f ? 0.f : 1.f / l;
        for (int d = 0; d < D; ++d) part_o[(partial * Hq + h) * D + d] = o_of(x)[g * D + d] * inv;
      }
    }
  }

  // Estimated ln Σ e^ℓ of the row's unselected chunks per head, and the guard's next batch.
  int guard_batch(int r, int kvh, const ScratchView<Cfg>& sv, float* left, int32_t* batch) const {
    const KernelContext c = ctx();
    const int n = row_chunks(c, r);
    const uint8_t* sel = row_mask(r, kvh);
    const KvT* meta = static_cast<const KvT*>(s->meta);
    const int32_t* slots = c.row_chunk_slots(r);
    const float ln_c = logf(float(C));
    thread_local std::vector<float> best;
    thread_local std::vector<int32_t> key;
    thread_local std::vector<uint8_t> elig, pick;
    if (int(best.size()) < n) best.resize(n), key.resize(n), elig.resize(n), pick.resize(n);
    for (int g = 0; g < G; ++g) left[g] = -INFINITY;
    for (int j = 0; j < n; ++j) {
      best[j] = -INFINITY;
      elig[j] = !sel[j] && j < n - 1;
      pick[j] = 0;
      if (!elig[j]) continue;
      const KvT* mm = meta + (int64_t(slots[j]) * Hkv + kvh) * CA_PSA_META_VECTORS * D;
      for (int g = 0; g < G; ++g) {
        const float* qg = sv.q + g * D;
        float dot = 0.f, quad = 0.f, box = 0.f;
        for (int d = 0; d < D; ++d) {
          dot += qg[d] * to_f32(mm[d]);
          quad += 0.5f * qg[d] * qg[d] * to_f32(mm[D + d]);
          const float x = qg[d] * to_f32(mm[2 * D + d]), y = qg[d] * to_f32(mm[3 * D + d]);
          box += x > y ? x : y;
        }
        float e = ln_c + dot + quad;
        if (s->use_box) e = e < ln_c + box ? e : ln_c + box;
        const float hi = left[g] > e ? left[g] : e, lo = left[g] > e ? e : left[g];
        left[g] = lo == -INFINITY ? hi : hi + log1pf(expf(lo - hi));
        best[j] = e > best[j] ? e : best[j];
      }
    }
    for (int j = 0; j < n; ++j) key[j] = order_key(best[j]);
    const int want = args.k_min > kGuardBatch ? args.k_min : kGuardBatch;
    mark_top_k(key.data(), elig.data(), n, want, pick.data());
    int k = 0;
    for (int j = 0; j < n; ++j)
      if (pick[j]) batch[k++] = j;
    return k;
  }

  void phase2_task(int r, int kvh, const ScratchView<Cfg>& sv) {
    const KernelContext c = ctx();
    const int len = c.row_length(r);
    const int io = c.row_io(r);
    const int n = row_chunks(c, r);
    const uint8_t* sel = row_mask(r, kvh);
    const KvT* k_pool = static_cast<const KvT*>(p->k_pool);
    const KvT* v_pool = static_cast<const KvT*>(p->v_pool);
    const int32_t* slots = c.row_chunk_slots(r);
    const size_t chunk_elems = size_t(C) * D;
    load_q(sv.q, io, kvh);
    for (int g = 0; g < G; ++g) {
      for (int d = 0; d < D; d += kern::W) simd::store(sv.o + g * D + d, simd::zero());
      sv.m[g] = -INFINITY;
      sv.l[g] = 0.f;
    }
    const Pos pos{c.row_seq(r), 0, kvh, len - 1, 0};
    auto attend = [&](int j) {
      const int token0 = j * C;
      const int valid = len - token0 < C ? len - token0 : C;
      const size_t base = (size_t(slots[j]) * Hkv + kvh) * chunk_elems;
      attend_chunk(*p, sv.q, sv.o, sv.m, sv.l, sv.alpha, sv.s, sv.vis, k_pool + base, v_pool + base,
                   valid, token0, pos);
    };
    for (int j = c.row_shared_chunks(r); j < n; ++j)
      if (sel[j]) attend(j);
    Phase2<Cfg, Variant>::merge_partials(c, r, kvh, part_o, part_lse, sv);
    if (s->guard && s->counts[size_t(r) * Hkv + kvh] < n) {
      float left[G];
      thread_local std::vector<int32_t> batch;
      if (int(batch.size()) < n) batch.resize(n);
      const int k = guard_batch(r, kvh, sv, left, batch.data());
      bool short_of_mass = false;
      for (int g = 0; g < G; ++g) {
        const float covered = sv.l[g] == 0.f ? -INFINITY : sv.m[g] + logf(sv.l[g]);
        // covered / (covered + left) < mass, in logs.
        const float hi = covered > left[g] ? covered : left[g];
        const float lo = covered > left[g] ? left[g] : covered;
        const float total = lo == -INFINITY ? hi : hi + log1pf(expf(lo - hi));
        if (left[g] != -INFINITY && covered - total < logf(args.mass)) short_of_mass = true;
      }
      if (short_of_mass && k > 0) {
        for (int i = 0; i < k; ++i) attend(batch[i]);
        int32_t* list = s->lists + (size_t(r) * Hkv + kvh) * size_t(s->max_chunks);
        int32_t& count = s->counts[size_t(r) * Hkv + kvh];
        for (int i = 0; i < k; ++i) list[count + i] = batch[i];
        count += k;
        if (s->guard_added) s->guard_added[size_t(r) * Hkv + kvh] = k;
      }
    }
    OutT* out = static_cast<OutT*>(p->out);
    for (int g = 0; g < G; ++g) {
      const int h = kvh * G + g;
      const float l = sv.l[g];
      const simd::V inv = simd::bcast(l == 0.f ? 0.f : 1.f / l);
      OutT* dst = out + (size_t(io) * Hq + h) * D;
      for (int d = 0; d < D; d += kern::W)
        simd::store(dst + d, simd::mul(simd::load(sv.o + g * D + d), inv));
    }
  }
};

template <class Cfg>
inline int validate_psa(const CaDecodeParams& p, const CaPsaParams& s) {
  if (s.struct_bytes < sizeof(CaPsaParams))
    return fail(CA_ERR_INVALID, "ca_psa_decode: struct_bytes %u < %zu", s.struct_bytes,
                sizeof(CaPsaParams));
  if (!s.meta || !s.lists || !s.counts) return fail(CA_ERR_INVALID, "ca_psa_decode: null pointer");
  if (!(s.mass > 0.f) || s.k_min < 0 || s.k_max < 1 || s.recent_chunks < 0 ||
      !(s.safety_net >= 0.f && s.safety_net <= 1.f))
    return fail(CA_ERR_INVALID, "ca_psa_decode: parameter out of range");
  const KernelContext c{p.context};
  for (int r = 0; r < c.num_rows(); ++r)
    if (c.row_num_chunks(r) > s.max_chunks)
      return fail(CA_ERR_INVALID, "ca_psa_decode: row %d has %d chunks, lists hold %d", r,
                  c.row_num_chunks(r), s.max_chunks);
  return CA_OK;
}

// Entry point of ca_psa_decode. Never throws.
template <class Cfg, class Variant>
inline int sparse_decode(const CaDecodeParams& p, const CaPsaParams& s) noexcept {
  return never_throws("ca_psa_decode", [&]() -> int {
    int status = validate<Cfg>(p);
    if (status != CA_OK) return status;
    status = validate_psa<Cfg>(p, s);
    if (status != CA_OK) return status;
    const KernelContext c{p.context};
    constexpr int Hkv = Cfg::kKvHeads;
    for (int i = 0; i < c.num_rows() * Hkv; ++i) s.counts[i] = -1;
    if (c.num_requests() == 0) return CA_OK;
    thread_local std::vector<uint8_t> mask;
    mask.assign(size_t(c.num_rows()) * Hkv * size_t(s.max_chunks), 0);
    using Job = SparseJob<Cfg, Variant>;
    Job job;
    job.p = &p;
    job.s = &s;
    job.args = SelectArgs::from(s);
    job.mask = mask.data();
    // Scores: per (requested row, KV head); a shared run's chunks scored per tile of sharers.
    thread_local std::vector<int32_t> request_of_row;
    thread_local std::vector<float> scores;
    thread_local std::vector<RunTask> score_tasks;
    request_of_row.assign(size_t(c.num_rows()), -1);
    for (int i = 0; i < c.num_requests(); ++i) request_of_row[size_t(c.request_row(i))] = i;
    job.request_of_row = request_of_row.data();
    job.score_stride = score_floats<Cfg>(s.max_chunks);
    const size_t score_total = size_t(c.num_requests()) * Hkv * job.score_stride;
    if (scores.size() < score_total) scores.resize(score_total);
    job.scores = scores.data();
    tile_runs<Hkv>(c, kScoreTileRows, score_tasks);
    job.score_tasks = score_tasks.data();
    job.num_score_tasks = int(score_tasks.size());
    const int threads = resolve_num_threads(p.num_threads);
    auto run_stage = [&](typename Job::Stage stage, int tasks) {
      job.stage = stage;
      job.next.store(0);
      ThreadPool::instance().run(threads < tasks ? threads : tasks, &Job::entry, &job);
    };
    if (job.num_score_tasks > 0) run_stage(Job::kScore, job.num_score_tasks);
    run_stage(Job::kSelect, c.num_requests() * Hkv);
    if (job.status.load() != CA_OK) return fail(job.status.load(), "ca_psa_decode: out of memory");
    if (s.select_only) return CA_OK;  // the lists and counts only; out untouched
    // Every list complete (mass 1, short rows, dense fallbacks): the dense kernel, exactly.
    if (job.incomplete.load() == 0) return decode<Cfg, Variant>(p);

    if (!s.guard) {
      // The dense two-phase kernel with the selection as a mask (see Selected).
      int32_t max_seq = -1;
      for (int r = 0; r < c.num_rows(); ++r)
        max_seq = c.row_seq(r) > max_seq ? c.row_seq(r) : max_seq;
      if (max_seq >= (1 << 26))
        return fail(CA_ERR_INVALID, "ca_psa_decode: sequence handle too large");
      thread_local std::vector<int32_t> row_of_seq;
      row_of_seq.assign(size_t(max_seq + 1), -1);
      for (int r = 0; r < c.num_rows(); ++r) row_of_seq[size_t(c.row_seq(r))] = r;
      const SelectionView view{p.params, mask.data(), row_of_seq.data(), max_seq + 1, s.max_chunks};
      CaDecodeParams masked = p;
      masked.params = reinterpret_cast<const float*>(&view);
      return decode<Cfg, Selected<Variant, Cfg::kChunk, Hkv>>(masked);
    }
    // Guard: the list-driven phases below, with the progressive step in phase 2. Phase 1: one
    // task per (run, KV head, tile of sharers) with a requested row.
    thread_local std::vector<RunTask> tasks1;
    tile_runs<Hkv>(c, kSparseTileRows, tasks1);
    job.part_o = c.num_runs() > 0 ? static_cast<float*>(p.workspace) : nullptr;
    job.part_lse = c.num_runs() > 0
                       ? reinterpret_cast<float*>(static_cast<char*>(p.workspace) +
                                                  workspace_o_bytes<Cfg>(c.num_partials()))
                       : nullptr;
    job.tasks1 = tasks1.data();
    job.num_tasks1 = int(tasks1.size());
    job.num_tasks2 = c.num_requests() * Hkv;
    if (job.num_tasks1 > 0) run_stage(Job::kPhase1, job.num_tasks1);
    if (job.status.load() == CA_OK) run_stage(Job::kPhase2, job.num_tasks2);
    if (job.status.load() != CA_OK) return fail(job.status.load(), "ca_psa_decode: out of memory");
    return CA_OK;
  });
}

}  // namespace psa
}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_SPARSE_DECODE_H_
