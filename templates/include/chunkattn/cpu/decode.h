// chunkattn/cpu/decode.h — two-phase partition (TPP) decode attention on the CPU.
//
//   q         [num_io_rows, Hq, D]        Cfg::QT
//   out       [num_io_rows, Hq, D]        Cfg::OutT
//   k_pool    [num_slots, Hkv, C, D]      Cfg::KvT   (v_pool alike)
//   workspace partial_o [num_partials, Hq, D] f32  (o / l of each (run, row) pair)
//             partial_lse [num_partials, Hq] f32   (m + log l; -inf when empty)
//
// Phase 1, one task per (run, KV head, tile of the run's rows): the G query heads of every row
// are stacked as the M = rows * G rows of a tile. Per chunk of the run: K is converted once to
// f32 and transposed (KT [D, C]), V converted once (Vf [C, D]) — for bf16 K/V on AVX512-BF16,
// packed into bf16 pairs for vdpbf16ps instead; then per block of kTileRows stacked rows
// S = Q·KT (register tile), masks + Variant, online softmax, O = alpha O + P·V. The next chunk
// is prefetched while a chunk computes. Tokens at or past a row's length are masked (a
// chunk-first run may hold one row's partial tail). Writes the partials.
// Phase 2, one task per (requested row, KV head): streams the row's own chunks (from
// row_shared_chunks[r]) straight from the pool, each K and V vector loaded once for all G heads;
// then, once phase 1 has finished, merges the row's partials (merging commutes, so a thread that
// runs out of phase-1 tasks starts phase 2 at once); normalizes and stores out. With num_runs = 0
// phase 2 alone is the sequence-first (paged) baseline: same code, same pool.
//
// Threads: ThreadPool; tasks handed out through atomic counters (phase 1 largest first, phase 2
// in row order); a completion count guards the partials. Scratch is thread-local and only grows
// (no allocation once warm).
#ifndef CHUNKATTN_CPU_DECODE_H_
#define CHUNKATTN_CPU_DECODE_H_

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#include "chunkattn/abi.h"
#include "chunkattn/context.h"
#include "chunkattn/cpu/kernels.h"
#include "chunkattn/cpu/simd.h"
#include "chunkattn/cpu/thread_pool.h"
#include "chunkattn/cpu/types.h"
#include "chunkattn/module_status.h"
#include "chunkattn/softmax_state.h"
#include "chunkattn/variant.h"

namespace ca {
namespace cpu {

// ---------------------------------------------------------------------------------------------
// Errors: formatted into the one per-thread message that ca_last_error() returns
// (chunkattn/module_status.h), so a cpu kernel's failure reaches the caller like any other.

inline const char* last_error() { return ca::last_error().c_str(); }

__attribute__((format(printf, 2, 3))) inline int fail(int status, const char* format, ...) {
  char buffer[512];
  va_list args;
  va_start(args, format);
  vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  return ca::fail(status, buffer);
}

// Runs an entry point's body, turning any exception into a status: the C entry points never
// throw. `entry` names the entry point in the message.
template <class Body>
inline int never_throws(const char* entry, Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(CA_ERR_NO_MEMORY, "%s: out of memory", entry);
  } catch (const std::exception& e) {
    return fail(CA_ERR_DEVICE, "%s: %s", entry, e.what());
  } catch (...) {
    return fail(CA_ERR_DEVICE, "%s: unknown exception", entry);
  }
}

// ---------------------------------------------------------------------------------------------
// Thread-local scratch: one 64-byte aligned float arena that only grows.

class Scratch {
 public:
  ~Scratch() { free(data_); }
  // Returns false when memory is exhausted.
  bool ensure(size_t floats) {
    if (floats <= capacity_) return true;
    const size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
    void* fresh = aligned_alloc(64, bytes);
    if (!fresh) return false;
    free(data_);
    data_ = static_cast<float*>(fresh);
    capacity_ = bytes / sizeof(float);
    return true;
  }
  float* data() const { return data_; }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

inline Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

// ---------------------------------------------------------------------------------------------
// Tunables. The plan renders the cpu target's tunables (codegen/target-tunables.ts: the search
// space, the defaults and what each means) into the module's `Tunables` struct, which reaches
// the kernel as Cfg::Tunables. A Cfg without one (the C++ test driver) runs DefaultTunables,
// the same defaults.

struct DefaultTunables {
  static constexpr int k_cpu_tile_rows = 64;
  static constexpr int k_cpu_direct_below = 20;
  static constexpr int k_cpu_prefetch = 3;
  static constexpr int k_cpu_threads = 0;
};

template <class Cfg, class = void>
struct TunablesOf {
  using type = DefaultTunables;
};
template <class Cfg>
struct TunablesOf<Cfg, std::void_t<typename Cfg::Tunables>> {
  using type = typename Cfg::Tunables;
};

template <class Cfg>
struct Tune {
  using T = typename TunablesOf<Cfg>::type;
  // Most stacked rows (rows x G) per phase-1 task; a row's G heads are never split.
  static constexpr int kMaxTileRows = T::k_cpu_tile_rows;
  // Smallest tile phase 1 splits down to when there are fewer tasks than threads.
  static constexpr int kMinTileRows = kMaxTileRows < 16 ? kMaxTileRows : 16;
  // Phase-1 tiles of fewer stacked rows than this read K/V straight from the pool with the
  // phase-2 kernels, in blocks of kDirectRows: converting a chunk once (and transposing K) only
  // pays off for taller tiles. Measured on Zen 5: f16 direct wins up to ~16-24 rows and loses at
  // 32; the bf16 pair path's PV (vdpbf16ps) wins from 4 rows (fixed, not tuned).
  static constexpr int kDirectBelowRows = T::k_cpu_direct_below;
  static constexpr int kDirectBelowRowsBf16 = 4;
  // Bit 0: phase 1 prefetches the next chunk of its run while it computes the current one.
  // Bit 1: phase 2 prefetches the next chunk's K and V into L2 (and the next task's first).
  static constexpr bool kPhase1Prefetch = (T::k_cpu_prefetch & 1) != 0;
  static constexpr bool kPhase2Prefetch = (T::k_cpu_prefetch & 2) != 0;
  // Worker threads when the call passes 0 (0 here too: every core).
  static constexpr int kThreads = T::k_cpu_threads;
  static_assert(kMaxTileRows > 0 && kDirectBelowRows >= 0 && kThreads >= 0, "bad cpu tunables");
};
inline constexpr int kDirectRows = 8;

template <class Cfg>
struct Dims {
  static constexpr int kQHeads = Cfg::kQHeads, kKvHeads = Cfg::kKvHeads, kHeadDim = Cfg::kHeadDim,
                       kChunk = Cfg::kChunk;
  static_assert(kQHeads > 0 && kKvHeads > 0 && kQHeads % kKvHeads == 0, "Hkv must divide Hq");
  static_assert(kHeadDim % 16 == 0 && kHeadDim > 0, "head dim must be a multiple of 16");
  static_assert(kChunk % 16 == 0 && kChunk > 0, "chunk size must be a multiple of 16");
  static constexpr int kGroup = kQHeads / kKvHeads;
  static constexpr int kTileCap =
      kGroup > Tune<Cfg>::kMaxTileRows ? kGroup : Tune<Cfg>::kMaxTileRows;
  static constexpr size_t round16(size_t n) { return (n + 15) / 16 * 16; }
  // Scratch layout (floats).
  static constexpr int kScoreRows = kGroup > kern::kTileRows ? kGroup : kern::kTileRows;
  static constexpr size_t kQOffset = 0;
  static constexpr size_t kOOffset = kQOffset + round16(size_t(kTileCap) * kHeadDim);
  static constexpr size_t kMOffset = kOOffset + round16(size_t(kTileCap) * kHeadDim);
  static constexpr size_t kLOffset = kMOffset + round16(kTileCap);
  static constexpr size_t kAlphaOffset = kLOffset + round16(kTileCap);
  static constexpr size_t kSOffset = kAlphaOffset + round16(kTileCap);
  static constexpr size_t kPbOffset = kSOffset + round16(size_t(kScoreRows) * kChunk);
  static constexpr size_t kKtOffset = kPbOffset + round16(size_t(kScoreRows) * kChunk / 2);
  static constexpr size_t kVOffset = kKtOffset + round16(size_t(kHeadDim) * kChunk);
  static constexpr size_t kVisOffset = kVOffset + round16(size_t(kChunk) * kHeadDim);
  static constexpr size_t kLiveOffset = kVisOffset + round16((size_t(kTileCap) * kChunk + 3) / 4);
  static constexpr size_t kScratchFloats = kLiveOffset + round16((size_t(kTileCap) + 3) / 4);
};

template <class Cfg>
struct ScratchView {
  using Dm = Dims<Cfg>;
  float* q;
  float* o;
  float* m;
  float* l;
  float* alpha;
  float* s;
  uint32_t* pb;  // bf16 pairs of P (dpbf16 path)
  float* kt;
  float* vf;
  uint8_t* vis;
  uint8_t* live;  // [kTileCap] phase 1: stacked rows that see some token of the chunk
  explicit ScratchView(float* base)
      : q(base + Dm::kQOffset),
        o(base + Dm::kOOffset),
        m(base + Dm::kMOffset),
        l(base + Dm::kLOffset),
        alpha(base + Dm::kAlphaOffset),
        s(base + Dm::kSOffset),
        pb(reinterpret_cast<uint32_t*>(base + Dm::kPbOffset)),
        kt(base + Dm::kKtOffset),
        vf(base + Dm::kVOffset),
        vis(reinterpret_cast<uint8_t*>(base + Dm::kVisOffset)),
        live(reinterpret_cast<uint8_t*>(base + Dm::kLiveOffset)) {}
};

// ---------------------------------------------------------------------------------------------
// Workspace: partial_o then partial_lse, each 64-byte aligned.

template <class Cfg>
inline uint64_t workspace_o_bytes(int64_t num_partials) {
  const uint64_t bytes = uint64_t(num_partials) * Cfg::kQHeads * Cfg::kHeadDim * sizeof(float);
  return (bytes + 63) / 64 * 64;
}

template <class Cfg>
inline uint64_t workspace_bytes(const CaDecodeParams& p) {
  if (!ctx::check_layout(p.context_host, p.context_words, nullptr)) return 0;
  const KernelContext c{p.context_host};
  if (c.num_runs() <= 0 || c.num_partials() <= 0) return 0;
  const uint64_t lse = uint64_t(c.num_partials()) * Cfg::kQHeads * sizeof(float);
  return workspace_o_bytes<Cfg>(c.num_partials()) + (lse + 63) / 64 * 64;
}

// ---------------------------------------------------------------------------------------------
// Argument checks. The addon runs the full validator of chunkattn/context.h once per upload;
// per call the module checks only what is O(1): the ABI, pointers, the context's layout (so every
// section index stays inside the buffer) and the workspace size.

template <class Cfg>
inline int validate(const CaDecodeParams& p) {
  if (p.abi_version != CA_ABI_VERSION)
    return fail(CA_ERR_INVALID, "ca_decode: abi_version %u, module has %u", p.abi_version,
                CA_ABI_VERSION);
  if (p.struct_bytes < sizeof(CaDecodeParams))
    return fail(CA_ERR_INVALID, "ca_decode: struct_bytes %u < %zu", p.struct_bytes,
                sizeof(CaDecodeParams));
  ctx::Error error;
  if (!ctx::check_layout(p.context, p.context_words, &error) ||
      !ctx::check_layout(p.context_host, p.context_words, &error))
    return fail(CA_ERR_INVALID, "ca_decode: %s", error.message);
  const KernelContext c{p.context};
  if (p.num_slots < 0) return fail(CA_ERR_INVALID, "ca_decode: negative num_slots");
  if (c.num_requests() == 0) return CA_OK;
  if (!p.q || !p.out) return fail(CA_ERR_INVALID, "ca_decode: null q or out");
  if (p.num_slots > 0 && (!p.k_pool || !p.v_pool))
    return fail(CA_ERR_INVALID, "ca_decode: null K/V pool");
  if (p.num_params > 0 && !p.params) return fail(CA_ERR_INVALID, "ca_decode: null params");
  if (!(fabsf(p.softmax_scale) < INFINITY))
    return fail(CA_ERR_INVALID, "ca_decode: softmax_scale not finite");
  if (c.num_runs() > 0 && (!p.workspace || p.workspace_bytes < workspace_bytes<Cfg>(p)))
    return fail(CA_ERR_INVALID, "ca_decode: workspace of %llu bytes, %llu needed",
                (unsigned long long)p.workspace_bytes, (unsigned long long)workspace_bytes<Cfg>(p));
  return CA_OK;
}

// ---------------------------------------------------------------------------------------------
// Per-chunk work shared by both phases.

template <class Cfg, class Variant>
struct Attend {
  using Dm = Dims<Cfg>;
  using KvT = typename Cfg::KvT;
  static constexpr int G = Dm::kGroup, D = Dm::kHeadDim, C = Dm::kChunk, Hq = Dm::kQHeads,
                       Hkv = Dm::kKvHeads;
  static constexpr bool kVariant = Variant::kHasMask || Variant::kHasScoreMod;
  // Whether the mask is all or nothing per (row, KV head, chunk), given by may_see: then phase 1
  // evaluates it once per row and chunk, and apply_variant is only called for rows that see
  // the chunk (it ignores vis).
  static constexpr bool kChunkMask = false;
  // bf16 K/V on AVX512-BF16: QK (both phases) and phase-1 PV on vdpbf16ps (see kernels.h).
#if defined(CA_CPU_DPBF16)
  static constexpr bool kDotBf16 = std::is_same<KvT, bf16>::value && D % 32 == 0;
#else
  static constexpr bool kDotBf16 = false;
#endif

  // Mask and score_mod of one stacked row over the chunk's visible tokens [0, valid) after the
  // length mask has been applied. vis is the row's mask bytes (kHasMask only).
  static CA_CPU_INLINE void apply_variant(float* s, const uint8_t* vis, int valid, Pos pos,
                                          int token0, const float* params) {
    if constexpr (kVariant) {
      for (int t = 0; t < valid; ++t) {
        if constexpr (Variant::kHasMask) {
          if (!vis[t]) {
            s[t] = -INFINITY;
            continue;
          }
        }
        if constexpr (Variant::kHasScoreMod) {
          pos.kv = token0 + t;
          s[t] = Variant::score_mod(s[t], pos, params);
        }
      }
    } else {
      (void)s, (void)vis, (void)valid, (void)pos, (void)token0, (void)params;
    }
  }

  // Whether the chunk at token0 may be visible to the row of pos (true unless the variant can
  // tell cheaply): phase 2 prefetches only chunks it may attend.
  static CA_CPU_INLINE bool may_see(const Pos& pos, int token0, const float* params) {
    (void)pos, (void)token0, (void)params;
    return true;
  }

  // Evaluates the mask for one stacked row; returns whether any token is visible.
  static CA_CPU_INLINE bool eval_mask(uint8_t* vis, int valid, Pos pos, int token0,
                                      const float* params) {
    bool any = false;
    for (int t = 0; t < valid; ++t) {
      pos.kv = token0 + t;
      const bool v = Variant::mask(pos, params);
      vis[t] = v;
      any |= v;
    }
    return any;
  }
};

// ---------------------------------------------------------------------------------------------
// Phase 1.

struct Phase1Task {
  int32_t run;
  int32_t kv_head;
  int32_t row_begin;  // DFS rows [row_begin, row_end) of the run
  int32_t row_end;
};

template <class Cfg, class Variant>
struct Phase1 {
  using A = Attend<Cfg, Variant>;
  using KvT = typename Cfg::KvT;
  using QT = typename Cfg::QT;
  static constexpr int G = A::G, D = A::D, C = A::C, Hq = A::Hq, Hkv = A::Hkv;

  struct Tile {
    const CaDecodeParams* p;
    const ScratchView<Cfg>* sv;
    const float* vsrc;  // f32 V of the chunk [C, D]
    const KvT* k_raw;   // the chunk in the pool (direct blocks)
    const KvT* v_raw;
    int row_begin;
    int kv_head;
    int token0;
  };

  // One block of R stacked rows over the chunk. kDirect: short tiles read K/V straight from the
  // pool with the phase-2 kernels (see Tune::kDirectBelowRows).
  template <int R, bool kDirect>
  static void block(const Tile& t, int i0, int keys) {
    const ScratchView<Cfg>& sv = *t.sv;
    const CaDecodeParams& p = *t.p;
    const KernelContext c{p.context};
    float* S = sv.s;
#if defined(CA_CPU_DPBF16)
    if constexpr (A::kDotBf16) {
      const uint32_t* qb = reinterpret_cast<const uint32_t*>(sv.q) + size_t(i0) * (D / 2);
      if constexpr (kDirect)
        kern::qk_direct_rows_dp<R, C, D>(S, qb, t.k_raw, keys);
      else
        kern::qk_rows_dp<R, C, D>(S, C, qb, reinterpret_cast<const uint32_t*>(sv.kt));
      kern::scale_in_place(S, R * C, p.softmax_scale);
    } else
#endif
    {
      if constexpr (kDirect)
        kern::qk_direct_rows<R, C, D>(S, sv.q + size_t(i0) * D, t.k_raw, keys);
      else
        kern::qk_rows_t<R, C, D>(S, C, sv.q + size_t(i0) * D, D, sv.kt);
    }
    for (int i = 0; i < R; ++i) {
      const int stacked = i0 + i;
      const int r = t.row_begin + stacked / G;
      const int len = c.row_length(r);
      int valid = len - t.token0;
      valid = valid < 0 ? 0 : valid > C ? C : valid;
      float* s = S + i * C;
      kern::mask_tail<C>(s, valid);
      if constexpr (A::kVariant) {
        const int h = t.kv_head * G + stacked % G;
        A::apply_variant(s, sv.vis + size_t(stacked) * C, valid,
                         Pos{c.row_seq(r), h, t.kv_head, len - 1, 0}, t.token0, p.params);
      }
    }
    kern::softmax_rows<R, C>(S, sv.m + i0, sv.l + i0, sv.alpha + i0);
    if constexpr (kDirect) {
      kern::pv_rows<R, D>(sv.o + size_t(i0) * D, D, sv.alpha + i0, S, C, t.v_raw, keys);
      return;
    }
#if defined(CA_CPU_DPBF16)
    if constexpr (A::kDotBf16) {
      kern::pack_p_pairs<R, C>(sv.pb, S);
      kern::pv_rows_dp<R, C, D>(sv.o + size_t(i0) * D, D, sv.alpha + i0, sv.pb,
                                reinterpret_cast<const uint32_t*>(sv.vf), (keys + 1) / 2);
      return;
    }
#endif
    kern::pv_rows<R, D>(sv.o + size_t(i0) * D, D, sv.alpha + i0, S, C, t.vsrc, keys);
  }

  static void block_dispatch(int R, const Tile& t, int i0, int keys) {
    static_assert(kern::kTileRows <= 8, "block_dispatch covers up to 8 rows");
    switch (R) {
      case 1:
        return block<1, false>(t, i0, keys);
      case 2:
        return block<2, false>(t, i0, keys);
      case 3:
        return block<3, false>(t, i0, keys);
      case 4:
        return block<4, false>(t, i0, keys);
      case 5:
        if constexpr (kern::kTileRows >= 5) return block<5, false>(t, i0, keys);
        break;
      case 6:
        if constexpr (kern::kTileRows >= 6) return block<6, false>(t, i0, keys);
        break;
      case 7:
        if constexpr (kern::kTileRows >= 7) return block<7, false>(t, i0, keys);
        break;
      case 8:
        if constexpr (kern::kTileRows >= 8) return block<8, false>(t, i0, keys);
        break;
      default:
        break;
    }
  }

  static void direct_dispatch(int R, const Tile& t, int i0, int keys) {
    switch (R) {
      case 1:
        return block<1, true>(t, i0, keys);
      case 2:
        return block<2, true>(t, i0, keys);
      case 3:
        return block<3, true>(t, i0, keys);
      case 4:
        return block<4, true>(t, i0, keys);
      case 5:
        return block<5, true>(t, i0, keys);
      case 6:
        return block<6, true>(t, i0, keys);
      case 7:
        return block<7, true>(t, i0, keys);
      case 8:
        return block<8, true>(t, i0, keys);
      default:
        break;
    }
  }

  static void run_task(const CaDecodeParams& p, const Phase1Task& task, float* part_o,
                       float* part_lse, const ScratchView<Cfg>& sv) {
    const KernelContext c{p.context};
    const CaSharedRun& run = c.run(task.run);
    const int kvh = task.kv_head;
    const int rows = task.row_end - task.row_begin;
    const int M = rows * G;
    const QT* q = static_cast<const QT*>(p.q);
    const KvT* k_pool = static_cast<const KvT*>(p.k_pool);
    const KvT* v_pool = static_cast<const KvT*>(p.v_pool);

    int max_len = 0;
    for (int ri = 0; ri < rows; ++ri) {
      const int r = task.row_begin + ri;
      max_len = c.row_length(r) > max_len ? c.row_length(r) : max_len;
      for (int g = 0; g < G; ++g) {
        const int h = kvh * G + g;
        const int i = ri * G + g;
        const int io = c.row_io(r);
        const QT* src = q + (size_t(io < 0 ? 0 : io) * Hq + h) * D;
#if defined(CA_CPU_DPBF16)
        if constexpr (A::kDotBf16) {
          uint32_t* dst = reinterpret_cast<uint32_t*>(sv.q) + size_t(i) * (D / 2);
          if (io < 0)
            memset(dst, 0, D / 2 * sizeof(uint32_t));  // not requested: q = 0, partial unused
          else
            kern::convert_pairs<D>(dst, src);
        } else
#endif
        {
          if (io < 0)
            memset(sv.q + size_t(i) * D, 0, D * sizeof(float));
          else
            kern::convert_scaled(sv.q + size_t(i) * D, src, D, p.softmax_scale);
        }
        for (int d = 0; d < D; d += kern::W) simd::store(sv.o + size_t(i) * D + d, simd::zero());
        sv.m[i] = -INFINITY;
        sv.l[i] = 0.f;
      }
    }

    const size_t chunk_elems = size_t(C) * D;
    for (int j = 0; j < run.num_chunks; ++j) {
      const int token0 = run.kv_begin + j * C;
      if (token0 >= max_len) break;
      const int keys = max_len - token0 < C ? max_len - token0 : C;
      // Masked variants: the stacked rows that see some token of the chunk (a row that sees
      // none is left out of the blocks: its state would not change).
      [[maybe_unused]] uint8_t* live = sv.live;
      if constexpr (A::kChunkMask) {
        bool any = false;
        for (int ri = 0; ri < rows; ++ri) {
          const int r = task.row_begin + ri;
          const int len = c.row_length(r);
          const bool sees = token0 < len && A::may_see(Pos{c.row_seq(r), kvh * G, kvh, len - 1, 0},
                                                       token0, p.params);
          for (int g = 0; g < G; ++g) live[ri * G + g] = sees;
          any |= sees;
        }
        if (!any) continue;  // K and V of this chunk are never read
      } else if constexpr (Variant::kHasMask) {
        bool any = false;
        for (int i = 0; i < M; ++i) {
          const int r = task.row_begin + i / G;
          const int len = c.row_length(r);
          int valid = len - token0;
          valid = valid < 0 ? 0 : valid > C ? C : valid;
          live[i] =
              A::eval_mask(sv.vis + size_t(i) * C, valid,
                           Pos{c.row_seq(r), kvh * G + i % G, kvh, len - 1, 0}, token0, p.params);
          any |= live[i] != 0;
        }
        if (!any) continue;  // K and V of this chunk are never read
      }
      const size_t base = (size_t(c.run_slots()[run.chunk_begin + j]) * Hkv + kvh) * chunk_elems;
      // The next chunk's K and V stream into L2 while this one computes, a slice per block.
      kern::PrefetchRange next_k, next_v;
      if (Tune<Cfg>::kPhase1Prefetch && j + 1 < run.num_chunks && token0 + C < max_len) {
        const size_t next =
            (size_t(c.run_slots()[run.chunk_begin + j + 1]) * Hkv + kvh) * chunk_elems;
        next_k.reset(k_pool + next, int(chunk_elems * sizeof(KvT)));
        next_v.reset(v_pool + next, int(chunk_elems * sizeof(KvT)));
      }
      const bool direct =
          M < (A::kDotBf16 ? Tune<Cfg>::kDirectBelowRowsBf16 : Tune<Cfg>::kDirectBelowRows);
      const float* vsrc = sv.vf;
      if (!direct) {
#if defined(CA_CPU_DPBF16)
        if constexpr (A::kDotBf16) {
          kern::convert_k_pairs<C, D>(reinterpret_cast<uint32_t*>(sv.kt), k_pool + base);
          kern::convert_v_pairs<C, D>(reinterpret_cast<uint32_t*>(sv.vf), v_pool + base, keys);
        } else
#endif
        {
          kern::convert_k_transposed<C, D>(sv.kt, k_pool + base);
          if constexpr (std::is_same<KvT, float>::value) {
            vsrc = v_pool + base;
          } else {
            kern::convert_rows(sv.vf, v_pool + base, keys * D);
          }
        }
      }
      const Tile tile{&p, &sv, vsrc, k_pool + base, v_pool + base, task.row_begin, kvh, token0};
      const int rows_per_block = direct ? kDirectRows : kern::kTileRows;
      const int slice =
          (int(chunk_elems * sizeof(KvT)) / ((M + rows_per_block - 1) / rows_per_block) + 63) / 64 *
          64;
      // Each run [i0, i1) of live stacked rows (all M rows without a mask), in even blocks.
      for (int i0 = 0; i0 < M;) {
        int i1 = M;
        if constexpr (Variant::kHasMask) {
          while (i0 < M && !live[i0]) ++i0;
          if (i0 == M) break;
          i1 = i0;
          while (i1 < M && live[i1]) ++i1;
        }
        const int rows = i1 - i0;
        const int blocks = (rows + rows_per_block - 1) / rows_per_block;
        const int base_rows = rows / blocks, extra = rows % blocks;
        for (int b = 0; b < blocks; ++b) {
          const int R = base_rows + (b < extra ? 1 : 0);
          next_k.issue(slice);
          next_v.issue(slice);
          if (direct) {
            direct_dispatch(R, tile, i0, keys);
          } else {
            block_dispatch(R, tile, i0, keys);
          }
          i0 += R;
        }
      }
    }

    for (int i = 0; i < M; ++i) {
      const int r = task.row_begin + i / G;
      const int h = kvh * G + i % G;
      const size_t partial = size_t(run.partial_begin) + (r - run.row_begin);
      const float l = sv.l[i];
      const simd::V inv = simd::bcast(l == 0.f ? 0.f : 1.f / l);
      float* dst = part_o + (partial * Hq + h) * D;
      for (int d = 0; d < D; d += kern::W)
        simd::store(dst + d, simd::mul(simd::load(sv.o + size_t(i) * D + d), inv));
      part_lse[partial * Hq + h] = l == 0.f ? -INFINITY : sv.m[i] + logf(l);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Phase 2 (and the whole sequence-first baseline).

template <class Cfg, class Variant>
struct Phase2 {
  using A = Attend<Cfg, Variant>;
  using KvT = typename Cfg::KvT;
  using QT = typename Cfg::QT;
  using OutT = typename Cfg::OutT;
  static constexpr int G = A::G, D = A::D, C = A::C, Hq = A::Hq, Hkv = A::Hkv;

  // PV for the G heads, in row blocks of at most kTileRows.
  template <int G0 = 0>
  static CA_CPU_INLINE void pv_heads(const ScratchView<Cfg>& sv, const KvT* vp, int keys) {
    if constexpr (G0 < G) {
      constexpr int rows = (G - G0) < kern::kTileRows ? (G - G0) : kern::kTileRows;
      kern::pv_rows<rows, D>(sv.o + G0 * D, D, sv.alpha + G0, sv.s + G0 * C, C, vp, keys);
      pv_heads<G0 + rows>(sv, vp, keys);
    }
  }

  // Merges the phase-1 partials (o, lse) of row r's shared runs into the running state sv of
  // its G heads of KV head kvh. part_o: [partials, Hq, D]; part_lse: [partials, Hq].
  static void merge_partials(const KernelContext& c, int r, int kvh, const float* part_o,
                             const float* part_lse, const ScratchView<Cfg>& sv) {
    for (int k = c.row_partial_offsets()[r]; k < c.row_partial_offsets()[r + 1]; ++k) {
      const size_t partial = size_t(c.partials()[k]);
      for (int g = 0; g < G; ++g) {
        const int h = kvh * G + g;
        SoftmaxState st{sv.m[g], sv.l[g]};
        const SoftmaxState::Rescale f = st.merge_lse(part_lse[partial * Hq + h]);
        sv.m[g] = st.m;
        sv.l[g] = st.l;
        if (f.other == 0.f && f.self == 1.f) continue;
        const simd::V a = simd::bcast(f.self), b = simd::bcast(f.other);
        const float* src = part_o + (partial * Hq + h) * D;
        float* o = sv.o + g * D;
        for (int d = 0; d < D; d += kern::W)
          simd::store(o + d, simd::fmadd(simd::load(src + d), b, simd::mul(simd::load(o + d), a)));
      }
    }
  }

  // Prefetches the first own chunk (K and V) of task (r, kvh) into L2: called for the task this
  // thread will likely take next, so a task does not start with a full memory latency.
  static void prefetch_task(const CaDecodeParams& p, int r, int kvh) {
    const KernelContext c{p.context};
    const int first = c.row_shared_chunks(r);
    const int c0 = c.row_chunk_offsets()[r];
    const int tokens = c.row_length(r) - first * C;
    if (tokens <= 0 || first >= c.row_chunk_offsets()[r + 1] - c0) return;
    const size_t base = (size_t(c.chunk_slots()[c0 + first]) * Hkv + kvh) * size_t(C) * D;
    const int bytes = (tokens < C ? tokens : C) * D * int(sizeof(KvT));
    kern::prefetch_l2(static_cast<const KvT*>(p.k_pool) + base, bytes);
    kern::prefetch_l2(static_cast<const KvT*>(p.v_pool) + base, bytes);
  }

  template <class WaitPhase1>
  static void run_task(const CaDecodeParams& p, int r, int kvh, const float* part_o,
                       const float* part_lse, const ScratchView<Cfg>& sv,
                       const WaitPhase1& wait_phase1) {
    const KernelContext c{p.context};
    const int len = c.row_length(r);
    const int io = c.row_io(r);
    const QT* q = static_cast<const QT*>(p.q);
    const KvT* k_pool = static_cast<const KvT*>(p.k_pool);
    const KvT* v_pool = static_cast<const KvT*>(p.v_pool);
    OutT* out = static_cast<OutT*>(p.out);

    for (int g = 0; g < G; ++g) {
      const int h = kvh * G + g;
#if defined(CA_CPU_DPBF16)
      if constexpr (A::kDotBf16)
        kern::convert_pairs<D>(reinterpret_cast<uint32_t*>(sv.q) + g * (D / 2),
                               q + (size_t(io) * Hq + h) * D);
      else
#endif
        kern::convert_scaled(sv.q + g * D, q + (size_t(io) * Hq + h) * D, D, p.softmax_scale);
      for (int d = 0; d < D; d += kern::W) simd::store(sv.o + g * D + d, simd::zero());
      sv.m[g] = -INFINITY;
      sv.l[g] = 0.f;
    }

    // The row's own chunks.
    const int c0 = c.row_chunk_offsets()[r];
    const int num_chunks = c.row_chunk_offsets()[r + 1] - c0;
    const size_t chunk_elems = size_t(C) * D;
    for (int ci = c.row_shared_chunks(r); ci < num_chunks; ++ci) {
      const int token0 = ci * C;
      if (token0 >= len) break;
      const int valid = len - token0 < C ? len - token0 : C;
      if constexpr (A::kChunkMask) {
        if (!A::may_see(Pos{c.row_seq(r), kvh * G, kvh, len - 1, 0}, token0, p.params)) continue;
      } else if constexpr (Variant::kHasMask) {
        bool any = false;
        for (int g = 0; g < G; ++g)
          any |= A::eval_mask(sv.vis + g * C, valid,
                              Pos{c.row_seq(r), kvh * G + g, kvh, len - 1, 0}, token0, p.params);
        if (!any) continue;
      }
      const size_t base = (size_t(c.chunk_slots()[c0 + ci]) * Hkv + kvh) * chunk_elems;
      const KvT* kp = k_pool + base;
      const KvT* vp = v_pool + base;
      if (Tune<Cfg>::kPhase2Prefetch) {
        // The next chunk the row may attend.
        int nx = ci + 1;
        if constexpr (Variant::kHasMask)
          while (nx < num_chunks && nx * C < len &&
                 !A::may_see(Pos{c.row_seq(r), kvh * G, kvh, len - 1, 0}, nx * C, p.params))
            ++nx;
        if (nx < num_chunks && nx * C < len) {
          const size_t next = (size_t(c.chunk_slots()[c0 + nx]) * Hkv + kvh) * chunk_elems;
          const int bytes = (len - nx * C < C ? len - nx * C : C) * D * int(sizeof(KvT));
          kern::prefetch_l2(k_pool + next, bytes);
          kern::prefetch_l2(v_pool + next, bytes);
        }
      }
#if defined(CA_CPU_DPBF16)
      if constexpr (A::kDotBf16) {
        kern::qk_direct_rows_dp<G, C, D>(sv.s, reinterpret_cast<const uint32_t*>(sv.q), kp, valid);
        kern::scale_in_place(sv.s, G * C, p.softmax_scale);
      } else
#endif
      {
        kern::qk_direct_rows<G, C, D>(sv.s, sv.q, kp, valid);
      }
      for (int g = 0; g < G; ++g) {
        float* s = sv.s + g * C;
        kern::mask_tail<C>(s, valid);
        if constexpr (A::kVariant)
          A::apply_variant(s, sv.vis + g * C, valid,
                           Pos{c.row_seq(r), kvh * G + g, kvh, len - 1, 0}, token0, p.params);
        kern::softmax_row<C>(s, sv.m[g], sv.l[g], sv.alpha[g]);
      }
      pv_heads(sv, vp, valid);
    }

    // Partials of the shared runs, merged last (merging commutes), so the row's own chunks above
    // could run while phase 1 was still computing them.
    if (c.row_partial_offsets()[r + 1] > c.row_partial_offsets()[r]) wait_phase1();
    merge_partials(c, r, kvh, part_o, part_lse, sv);

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

// ---------------------------------------------------------------------------------------------
// Optional phase timing for benchmarks: define CA_CPU_PROFILE to record, per decode call, the
// steady-clock nanoseconds from the start of the job to the end of phase 1 and of phase 2.

#if defined(CA_CPU_PROFILE)
struct PhaseTimes {
  std::atomic<int64_t> start_ns{0}, phase1_end_ns{0}, phase2_end_ns{0};
};
inline PhaseTimes& phase_times() {
  static PhaseTimes t;
  return t;
}
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
#endif

// ---------------------------------------------------------------------------------------------
// The job: phase-1 tasks, completion barrier, phase-2 tasks.

template <class Cfg, class Variant>
struct DecodeJob {
  using Dm = Dims<Cfg>;
  const CaDecodeParams* p;
  float* part_o;
  float* part_lse;
  const Phase1Task* tasks1;
  int num_tasks1;
  int num_tasks2;
  int num_threads;
  alignas(64) std::atomic<int> next1{0};
  alignas(64) std::atomic<int> done1{0};
  alignas(64) std::atomic<int> next2{0};
  alignas(64) std::atomic<int> status{CA_OK};

  static void entry(void* self, int thread_index) {
    (void)thread_index;
    static_cast<DecodeJob*>(self)->work();
  }

  void work() {
    Scratch& scratch = thread_scratch();
    if (!scratch.ensure(Dm::kScratchFloats)) {
      status.store(CA_ERR_NO_MEMORY);
      return;  // the other threads take every task
    }
    const ScratchView<Cfg> sv(scratch.data());
    const KernelContext ctx{p->context};
    for (int i; (i = next1.fetch_add(1, std::memory_order_relaxed)) < num_tasks1;) {
      Phase1<Cfg, Variant>::run_task(*p, tasks1[i], part_o, part_lse, sv);
#if defined(CA_CPU_PROFILE)
      if (done1.fetch_add(1, std::memory_order_release) + 1 == num_tasks1)
        phase_times().phase1_end_ns = now_ns();
#else
      done1.fetch_add(1, std::memory_order_release);
#endif
    }
    // Phase 2 starts as soon as phase 1 has no task left to hand out; a task waits for phase 1
    // to complete only before it merges partials (the barrier is per use, not per thread).
    bool phase1_done = num_tasks1 == 0;
    auto wait_phase1 = [&] {
      if (phase1_done) return;
      for (int spins = 0; done1.load(std::memory_order_acquire) < num_tasks1; ++spins) {
        if (spins < 2048) {
          CA_CPU_PAUSE();
        } else {
          std::this_thread::yield();
        }
      }
      phase1_done = true;
    };
    for (int i; (i = next2.fetch_add(1, std::memory_order_relaxed)) < num_tasks2;) {
      // Tasks go round-robin between the threads, so i + threads is likely this thread's next.
      const int ahead = i + num_threads;
      if (Tune<Cfg>::kPhase2Prefetch && ahead < num_tasks2)
        Phase2<Cfg, Variant>::prefetch_task(*p, ctx.request_row(ahead / Dm::kKvHeads),
                                            ahead % Dm::kKvHeads);
      Phase2<Cfg, Variant>::run_task(*p, ctx.request_row(i / Dm::kKvHeads), i % Dm::kKvHeads,
                                     part_o, part_lse, sv, wait_phase1);
    }
  }
};

// Splits every run into row tiles of at most Tune::kMaxTileRows stacked rows (finer when there
// are fewer tasks than threads), one task per (tile, KV head), largest first.
template <class Cfg>
inline void plan_phase1(const CaDecodeParams& p, int num_threads, std::vector<Phase1Task>& tasks) {
  const KernelContext c{p.context};
  constexpr int G = Dims<Cfg>::kGroup, Hkv = Cfg::kKvHeads;
  tasks.clear();
  int max_tile = Tune<Cfg>::kMaxTileRows;
  for (;;) {
    int64_t count = 0;
    for (int i = 0; i < c.num_runs(); ++i) {
      const int rows = c.run(i).row_end - c.run(i).row_begin;
      const int rows_per_tile = max_tile / G > 0 ? max_tile / G : 1;
      count += int64_t((rows + rows_per_tile - 1) / rows_per_tile) * Hkv;
    }
    if (count >= num_threads || max_tile / 2 < Tune<Cfg>::kMinTileRows || max_tile / 2 < G) break;
    max_tile /= 2;
  }
  const int rows_per_tile_cap = max_tile / G > 0 ? max_tile / G : 1;
  for (int i = 0; i < c.num_runs(); ++i) {
    const CaSharedRun& run = c.run(i);
    const int rows = run.row_end - run.row_begin;
    const int tiles = (rows + rows_per_tile_cap - 1) / rows_per_tile_cap;
    const int base_rows = rows / tiles, extra = rows % tiles;
    for (int t = 0, r0 = run.row_begin; t < tiles; ++t) {
      const int n = base_rows + (t < extra ? 1 : 0);
      for (int kvh = 0; kvh < Hkv; ++kvh) tasks.push_back(Phase1Task{i, kvh, r0, r0 + n});
      r0 += n;
    }
  }
  // Largest work first (rows x chunks), so the phase ends evenly.
  auto work = [&](const Phase1Task& t) {
    return int64_t(t.row_end - t.row_begin) * c.run(t.run).num_chunks;
  };
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](const Phase1Task& a, const Phase1Task& b) { return work(a) > work(b); });
}

// ---------------------------------------------------------------------------------------------
// Entry point of ca_decode. Never throws.

template <class Cfg, class Variant>
inline int decode(const CaDecodeParams& p) noexcept {
  return never_throws("ca_decode", [&]() -> int {
    const int status = validate<Cfg>(p);
    if (status != CA_OK) return status;
    const KernelContext c{p.context};
    if (c.num_requests() == 0) return CA_OK;
    thread_local std::vector<Phase1Task> tasks1;
    int threads = resolve_num_threads(p.num_threads > 0 ? p.num_threads : Tune<Cfg>::kThreads);
    if (c.num_runs() > 0)
      plan_phase1<Cfg>(p, threads, tasks1);
    else
      tasks1.clear();

    DecodeJob<Cfg, Variant> job;
    job.p = &p;
    job.part_o = c.num_runs() > 0 ? static_cast<float*>(p.workspace) : nullptr;
    job.part_lse = c.num_runs() > 0
                       ? reinterpret_cast<float*>(static_cast<char*>(p.workspace) +
                                                  workspace_o_bytes<Cfg>(c.num_partials()))
                       : nullptr;
    job.tasks1 = tasks1.data();
    job.num_tasks1 = int(tasks1.size());
    job.num_tasks2 = c.num_requests() * Cfg::kKvHeads;  // phase 2: the requested rows only
    const int most_tasks = job.num_tasks1 > job.num_tasks2 ? job.num_tasks1 : job.num_tasks2;
    if (threads > most_tasks) threads = most_tasks;
    job.num_threads = threads;
#if defined(CA_CPU_PROFILE)
    phase_times().phase1_end_ns = 0;
    phase_times().start_ns = now_ns();
#endif
    ThreadPool::instance().run(threads, &DecodeJob<Cfg, Variant>::entry, &job);
#if defined(CA_CPU_PROFILE)
    phase_times().phase2_end_ns = now_ns();
#endif
    if (job.status.load() != CA_OK)
      return fail(job.status.load(), "ca_decode: out of memory for scratch");
    return CA_OK;
  });
}

}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_DECODE_H_
