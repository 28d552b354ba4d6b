// chunkattn/tc_engine.cuh — the tensor-core attention engine of phase 1 (decode_phase1.cuh) and
// of phase 2 for G >= 4 (decode_phase2.cuh): a block of stacked query rows (sequence rows × the
// G query heads of one KV head) attends to a token range of one chunk list, and each warp ends
// with the online-softmax state of its rows over its share of the tokens.
//
//   - kWarps warps laid out kWM × kWN: kWM warps of kBlocksPerWarp m16 blocks (16 stacked rows
//     each), kWN warps splitting every stage's tokens. Every K/V fragment a warp reads from shared
//     memory serves all its blocks.
//   - Q fragments stay in registers (up to D = 128; the k16 steps from kQRegSteps on are re-read
//     from a Q region in shared memory per 16 tokens); S = Q Kᵀ and O += P V run on mma.sync
//     m16n8k16, B operands by ldmatrix (.trans for V) from shared rows padded to D + 8 elements (a
//     16-byte shift per row: every 8-row ldmatrix phase hits 32 distinct banks). The K fragments
//     of register steps are loaded one n8 tile at a time (x2, the same wavefronts as x4): ptxas
//     then keeps fewer of them in flight next to the accumulators.
//   - Few registers besides o and the Q fragments: each lane holds one stacked row's visible
//     length, sequence and head, shuffled to the accumulator rows where needed.
//   - K/V stream through a 2-stage cp.async ring of kKT-token stages; tokens past the work's end
//     are zero-filled up to the end of their 16-token block (stale shared memory times P = 0
//     could be NaN), and later blocks are skipped. The chunk slots of a stage
//     are read once per warp, one lane per chunk, a stage ahead of its copies (a staged slot
//     list: the copies never wait on a dependent load), and shuffled to the copying lanes.
#ifndef CHUNKATTN_TC_ENGINE_CUH_
#define CHUNKATTN_TC_ENGINE_CUH_

#include <math.h>
#include <stddef.h>
#include <string.h>

#include <type_traits>

#include "chunkattn/abi.h"
#include "chunkattn/decode_view.cuh"
#include "chunkattn/dtype.cuh"
#include "chunkattn/prims.cuh"
#include "chunkattn/softmax_state.h"
#include "chunkattn/variant.h"

namespace ca {

// Whether a variant reads the Pos of a score (a mask or a score mod): its loop needs a few
// registers more, which changes phase 1's layout at D = 128.
template <class Variant>
inline constexpr bool variant_reads_pos = Variant::kHasMask || Variant::kHasScoreMod;

// The engine's geometry and its part of the dynamic shared-memory arena: the ring, then the Q
// region (codegen/plan.ts mirrors it). kMT stacked rows at most; kWarps warps of kBlocksPerWarp
// m16 blocks.
template <class KvT, int D, int kBlocksPerWarp_, int kWarps_, int kMT_>
struct TcEngine {
  static constexpr int kBlocksPerWarp = kBlocksPerWarp_, kWarps = kWarps_, kMT = kMT_;
  static constexpr int kThreads = 32 * kWarps;
  // Q fragments live in registers up to D = 128 (but the k16 steps from kQRegSteps on, where two
  // blocks a warp leave too few registers at D = 128: 8 registers fewer for about 4 wavefronts per
  // KB of K/V); above, every step is read from a Q tile kept in shared memory (and stages shrink
  // to 32 tokens so phase 1's arena fits sm_80's 163 KiB).
  static constexpr bool kQInSmem = D > 128;
  static constexpr int kQRegSteps = kQInSmem                        ? 0
                                    : kBlocksPerWarp == 2 && D > 96 ? D / 16 - 1
                                                                    : D / 16;
  static constexpr int kKT = kQInSmem ? 32 : 64;  // tokens per pipeline stage
  static constexpr int kMaxWN = kKT / 16;         // token-slice warps (16 tokens each at least)
  static constexpr int kStages = 2;               // cp.async ring depth
  static constexpr int kLd = D + 8;               // padded shared row (elements)

  // Ring, stage-major: stage s holds K at kStageBytes·s and V right after it, each KvT [kKT][kLd].
  static constexpr size_t kTileBytes = size_t(kKT) * kLd * sizeof(KvT);
  static constexpr size_t kStageBytes = 2 * kTileBytes;
  static constexpr size_t kRingBytes = kStages * kStageBytes;
  // Q, staged once in stage 1 (free until the loop's first refill) for the register fragments.
  // The steps re-read in the loop (k16 steps kQRegSteps.. of D) keep their own region after the
  // ring: KvT [kMT][kQLd] (columns from kQCol0 on, rows padded by 16 bytes: conflict-free).
  static constexpr int kQCol0 = 16 * kQRegSteps;
  static constexpr int kQLd = D - kQCol0 + 8;
  static constexpr size_t kQBytes = size_t(kMT) * kLd * sizeof(KvT);
  static constexpr size_t kQSmemBytes = kQCol0 == D ? 0 : size_t(kMT) * kQLd * sizeof(KvT);
  static constexpr size_t kOffQ = kQInSmem ? kRingBytes : kStageBytes;
  static constexpr size_t kOffQSmem = kRingBytes;
  static constexpr size_t kLoopBytes = kRingBytes + kQSmemBytes;

  static_assert(D % 16 == 0, "mma k16 steps over the head dimension");
  static_assert(kQInSmem || kQBytes <= kStageBytes, "Q staging fits in one stage");
  static_assert(!kQInSmem || kQSmemBytes == kQBytes, "all of Q in its region");
  static_assert(kMT % (16 * kBlocksPerWarp) == 0, "whole warps of m16 blocks");
};

template <class T>
CA_DEVICE uint32_t pack_pair(float lo, float hi);
template <>
CA_DEVICE uint32_t pack_pair<f16>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}
template <>
CA_DEVICE uint32_t pack_pair<bf16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

template <class T>
CA_DEVICE void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same<T, f16>::value)
    mma_m16n8k16_f16(d, a, b, d);
  else
    mma_m16n8k16_bf16(d, a, b, d);
}

// One CTA's work: stacked rows [m0, m0 + mcount) of the sequence rows from row_begin on (stacked
// row sm = sequence row row_begin + sm / G, query head kvh·G + sm % G of KV head blockIdx.y),
// against ntok tokens of a chunk list from its chunk slot0 on (token u lies in chunk slot0 + u /
// C), the first of them at key position kv_pos0. A row sees the tokens before its length.
struct TcWork {
  int slot0, ntok, kv_pos0;
  int row_begin, m0, mcount;
};

// A warp's result: for its m16 blocks, o (the mma accumulator layout: rows gq and gq + 8 of the
// lane, columns n·8 + 2·tq + {0, 1}; un-normalized), and per row m (base-2 max) and l (the sum,
// reduced over the row's 4 lanes).
template <int kMB, int D>
struct TcState {
  float o[kMB][D / 8][4];
  float m[kMB][2], l[kMB][2];
};

// The chunk lists a work reads: the context's run slots (phase 1) or its rows' chunk slots.
enum class TcList { kRunSlots, kRowChunkSlots };

// Runs the work: every thread of the CTA calls it; warp (wm, wn) = (warp % kWM, warp / kWM) ends
// with the state of its blocks' rows over its token slices. Nothing visible: m = -inf, l = 0,
// o = 0. Uses the arena's ring and Q region; on return every copy has landed and the threads have
// passed a barrier after their last read of the ring (the caller may reuse it after its own).
template <class Eng, class Cfg, class Variant, int kWM, TcList kList>
CA_DEVICE void tc_attend(const DecodeView& ctx, const DecodeTensors& t, const TcWork w,
                         TcState<Eng::kBlocksPerWarp, Cfg::kHeadDim>& st) {
  using KvT = typename Cfg::KvT;
  constexpr int G = Cfg::kQHeads / Cfg::kKvHeads, D = Cfg::kHeadDim, C = Cfg::kChunk;
  constexpr int Hq = Cfg::kQHeads, Hkv = Cfg::kKvHeads;
  constexpr int kLd = Eng::kLd, kKT = Eng::kKT, kWN = Eng::kWarps / kWM, kNT = kKT / kWN;
  constexpr int kMB = Eng::kBlocksPerWarp;  // m16 blocks of this warp
  constexpr int kNK = D / 16;               // k16 steps of Q Kᵀ
  constexpr int kSub = 16;                  // tokens per S block (register budget)
  constexpr int kPieces = D / 8;            // 16-byte pieces of a row
  static_assert(kWN <= Eng::kMaxWN && kNT % 16 == 0, "a warp's token slice is whole k16 steps");
  static_assert(std::is_same<typename Cfg::QT, KvT>::value, "mma needs Q and K/V in one type");

  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % kWM, wn = warp / kWM;
  const int kvh = blockIdx.y;
  const int tq = lane & 3, gq = lane >> 2;
  // Whether any of this warp's stacked rows is in the work (warp-uniform): a warp past them only
  // takes part in the copies and barriers.
  const bool warp_live = wm * kMB * 16 < w.mcount;
  constexpr int kRowsRead = kWM * kMB * 16;  // Q rows the warps read (the rest stays unstaged)
  const int ntiles = (w.ntok + kKT - 1) / kKT;
  const int ntok16 = (w.ntok + 15) / 16 * 16;  // tokens of the 16-token blocks read

  // The empty state (set after the prologue, whose copies need the registers).
  auto clear = [&] {
#pragma unroll
    for (int b = 0; b < kMB; ++b) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        st.o[b][n][0] = st.o[b][n][1] = st.o[b][n][2] = st.o[b][n][3] = 0.f;
      st.m[b][0] = st.m[b][1] = -INFINITY;
      st.l[b][0] = st.l[b][1] = 0.f;
    }
  };
  if (ntiles == 0) {  // CTA-uniform
    clear();
    return;
  }

  // Lane l holds the visible tokens, the length, the sequence and the head of the warp's local
  // stacked row l (kMB · 16 <= 32 rows); the rows of accumulator half h of block b (g and g + 8)
  // read them by shuffle, which keeps them (and the work's scalars) out of the registers the
  // accumulators need. A row past the work has length 0 (nothing visible).
  constexpr bool kPos = variant_reads_pos<Variant>;
  int my_vis, my_len, my_seq, my_head;
  {
    const int m = wm * kMB * 16 + (lane & (kMB * 16 - 1));
    const bool live = m < w.mcount;
    const int sm = w.m0 + (live ? m : 0);
    const int r = w.row_begin + sm / G;
    my_len = live ? ctx.row_length(r) : 0;
    // The work's tokens [0, my_vis) are visible to the row: within the work and before the
    // row's length (which also masks a chunk-first run's partial last chunk).
    my_vis = min(w.ntok, my_len - w.kv_pos0);
    my_seq = kPos ? ctx.row_seq(r) : 0;
    my_head = kvh * G + sm % G;
  }
  auto row_vis = [&](int b, int h) {
    return __shfl_sync(0xffffffffu, my_vis, b * 16 + gq + 8 * h);
  };
  auto row_len = [&](int b, int h) {
    return __shfl_sync(0xffffffffu, my_len, b * 16 + gq + 8 * h);
  };
  auto row_seq = [&](int b, int h) {
    return __shfl_sync(0xffffffffu, my_seq, b * 16 + gq + 8 * h);
  };
  auto row_head = [&](int b, int h) {
    return __shfl_sync(0xffffffffu, my_head, b * 16 + gq + 8 * h);
  };

  // The chunk slots of stage i (tokens [i·kKT, (i + 1)·kKT) of the work), one chunk a lane (0
  // past them). Loaded a stage ahead of the copies that need them (the slot list is staged), so
  // the copies never wait on a dependent load.
  auto stage_slots = [&](int i) {
    const int first = i * kKT / C;  // the stage's first chunk within the work
    int last = (i * kKT + kKT - 1) / C;
    if (last > (w.ntok - 1) / C) last = (w.ntok - 1) / C;
    const int32_t* list =
        kList == TcList::kRunSlots ? ctx.run_slots() : ctx.c.chunk_slots();  // (kernel params)
    return i < ntiles && lane <= last - first ? ctx.chunk_slot(list, w.slot0 + first + lane) : 0;
  };
  // Copies stage i, K and V, into ring slot `stage`, lane l of each warp holding the slot of the
  // stage's chunk l (stage_slots). Called by every thread (the slot shuffle is warp-wide).
  auto load_stage = [&](int i, int stage, int my_slot) {
    const int first = i * kKT / C;
    KvT* ks = reinterpret_cast<KvT*>(smem + stage * Eng::kStageBytes);
    KvT* vs = reinterpret_cast<KvT*>(smem + stage * Eng::kStageBytes + Eng::kTileBytes);
#pragma unroll 1
    for (int e0 = 0; e0 < kKT * kPieces; e0 += Eng::kThreads) {
      const int e = e0 + tid;
      const int row = e / kPieces, piece = e % kPieces;
      const int u = i * kKT + row;  // token of the work
      const int slot = __shfl_sync(0xffffffffu, my_slot, (u / C - first) & 31);
      if (kKT * kPieces % Eng::kThreads != 0 && e >= kKT * kPieces) continue;
      KvT* kd = ks + size_t(row) * kLd + piece * 8;
      KvT* vd = vs + size_t(row) * kLd + piece * 8;
      if (u < w.ntok) {
        const size_t off = ((size_t(slot) * Hkv + kvh) * C + u % C) * D + piece * 8;
        cp_async<CA_TRAFFIC_KV, 16>(kd, static_cast<const KvT*>(t.k_pool) + off);
        cp_async<CA_TRAFFIC_KV, 16>(vd, static_cast<const KvT*>(t.v_pool) + off);
      } else if (u < ntok16) {  // the rest of the last 16-token block (read, times P = 0)
        cp_async_zfill<CA_TRAFFIC_KV, 16>(kd, t.k_pool, 0);
        cp_async_zfill<CA_TRAFFIC_KV, 16>(vd, t.v_pool, 0);
      }  // (blocks past it are neither filled nor read)
    }
  };

  // Prologue: the Q tile and stage 0, one group. A sharer without an io row (not requested this
  // call) reads zeros: its partial is computed but never merged.
  KvT* qs = reinterpret_cast<KvT*>(smem + Eng::kOffQ);
  for (int e = tid; e < kRowsRead * kPieces; e += Eng::kThreads) {
    const int m = e / kPieces, piece = e % kPieces;
    KvT* dst = qs + size_t(m) * kLd + piece * 8;
    const int sm = w.m0 + m;
    const int io_row = m < w.mcount ? ctx.row_io(w.row_begin + sm / G) : -1;
    if (io_row >= 0)
      cp_async<CA_TRAFFIC_Q, 16>(dst, static_cast<const KvT*>(t.q) +
                                          (size_t(io_row) * Hq + kvh * G + sm % G) * D + piece * 8);
    else
      cp_async_zfill<CA_TRAFFIC_Q, 16>(dst, t.q, 0);
  }
  int next_slot = stage_slots(0);
  load_stage(0, 0, next_slot);
  next_slot = stage_slots(1);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // Q fragments of the register steps; the other steps stay in the Q region (kQInSmem: the
  // staged tile itself; else its columns from kQCol0 on, copied out of the staging here).
  constexpr int kQRegSteps = Eng::kQRegSteps;
  constexpr int kQReg = kQRegSteps > 0 ? kQRegSteps : 1;  // (an array needs a size)
  uint32_t qa[kMB][kQReg][4];
  const KvT* qr = reinterpret_cast<const KvT*>(smem + Eng::kOffQSmem);
  constexpr int kQrLd = Eng::kQLd;
  if constexpr (!Eng::kQInSmem) {
#pragma unroll
    for (int b = 0; b < kMB; ++b)
#pragma unroll
      for (int kk = 0; kk < kQRegSteps; ++kk)
        ldmatrix_x4(qa[b][kk], qs + size_t((wm * kMB + b) * 16 + (lane & 15)) * kLd + kk * 16 +
                                   (lane >> 4) * 8);
    if constexpr (Eng::kQCol0 < D) {
      constexpr int kTail = (D - Eng::kQCol0) / 8;  // 16-byte pieces a row keeps
      for (int e = tid; e < kRowsRead * kTail; e += Eng::kThreads) {
        const int m = e / kTail, piece = e % kTail;
        sts(reinterpret_cast<uint4*>(const_cast<KvT*>(qr) + size_t(m) * kQrLd + piece * 8),
            lds(reinterpret_cast<const uint4*>(qs + size_t(m) * kLd + Eng::kQCol0 + piece * 8)));
      }
    }
    __syncthreads();  // stage 1 (the Q staging) is refilled below
  }
  // A fragment of m16 block b, k16 step kk >= kQRegSteps, from the Q region.
  auto load_q = [&](uint32_t(&a)[4], int b, int kk) {
    ldmatrix_x4(a, qr + size_t((wm * kMB + b) * 16 + (lane & 15)) * kQrLd + kk * 16 - Eng::kQCol0 +
                       (lane >> 4) * 8);
  };

  auto& o = st.o;
  auto& m_run = st.m;
  auto& l_run = st.l;
  clear();

#pragma unroll 1
  for (int i = 0; i < ntiles; ++i) {
    const int stage = i % Eng::kStages;
    if (i + 1 < ntiles) load_stage(i + 1, (i + 1) % Eng::kStages, next_slot);
    cp_async_commit();
    next_slot = stage_slots(i + 2);  // in flight while stage i is computed
    cp_async_wait<1>();              // stage i has landed; stage i + 1 flies
    __syncthreads();

    const KvT* kt = reinterpret_cast<const KvT*>(smem + stage * Eng::kStageBytes);
    const KvT* vt = reinterpret_cast<const KvT*>(smem + stage * Eng::kStageBytes + Eng::kTileBytes);
#pragma unroll 1
    for (int sub = 0; sub < (warp_live ? kNT : 0); sub += kSub) {
      const int tok0 = wn * kNT + sub;      // this warp's token block of the stage
      if (i * kKT + tok0 >= w.ntok) break;  // past the work's last token (warp-uniform)

      // S = Q Kᵀ: each K fragment serves the warp's kMB m16 blocks.
      float s[kMB][kSub / 8][4];
#pragma unroll
      for (int b = 0; b < kMB; ++b)
#pragma unroll
        for (int n = 0; n < kSub / 8; ++n) s[b][n][0] = s[b][n][1] = s[b][n][2] = s[b][n][3] = 0.f;
          // Register steps: K fragments one n8 tile at a time (x2), which keeps fewer of them in
          // flight next to the accumulators (the same wavefronts as x4).
#pragma unroll
      for (int n = 0; n < kSub / 8; ++n)
#pragma unroll
        for (int kk = 0; kk < kQRegSteps; ++kk) {
          uint32_t kb[2];
          ldmatrix_x2(
              kb, kt + size_t(tok0 + n * 8 + (lane & 7)) * kLd + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
          for (int b = 0; b < kMB; ++b) mma16816<KvT>(s[b][n], qa[b][kk], kb);
        }
        // Steps from the Q region: one K fragment of both n8 tiles per Q fragment read.
#pragma unroll
      for (int kk = kQRegSteps; kk < kNK; ++kk) {
        uint32_t kb[4];
        ldmatrix_x4(kb, kt + size_t(tok0 + (lane & 7) + ((lane >> 4) & 1) * 8) * kLd + kk * 16 +
                            ((lane >> 3) & 1) * 8);
        const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
#pragma unroll
        for (int b = 0; b < kMB; ++b) {
          uint32_t qf[4];
          load_q(qf, b, kk);
          mma16816<KvT>(s[b][0], qf, b0);
          mma16816<KvT>(s[b][1], qf, b1);
        }
      }

      // P straight from the S accumulators (the C layout of two n8 tiles is the A layout of one
      // k16 step), packed as soon as a block's softmax is done.
      uint32_t pa[kMB][4];
#pragma unroll
      for (int b = 0; b < kMB; ++b) {
        // Scale, visibility, online softmax (rows g and g + 8; base-2 exponent).
        float mx[2] = {-INFINITY, -INFINITY};
        // Token j of the block (token u0 + j of the work) is visible to row h iff j < lim[h].
        const int u0 = i * kKT + tok0;
        const int lim[2] = {row_vis(b, 0) - u0, row_vis(b, 1) - u0};
#pragma unroll
        for (int n = 0; n < kSub / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int h = e >> 1;
            const int j = n * 8 + 2 * tq + (e & 1);
            bool visible = j < lim[h];
            const Pos pos{kPos ? row_seq(b, h) : 0, kPos ? row_head(b, h) : 0, kvh,
                          kPos ? row_len(b, h) - 1 : 0, w.kv_pos0 + u0 + j};
            if (Variant::kHasMask && visible) visible = Variant::mask(pos, t.params);
            // (The scale is read where used: a register held through the loop is one too many.)
            float x = s[b][n][e] * t.softmax_scale;
            if (!Variant::kHasScoreMod) x *= kLog2e;
            if (Variant::kHasScoreMod && visible) x = Variant::score_mod(x, pos, t.params) * kLog2e;
            s[b][n][e] = visible ? x : -INFINITY;
            mx[h] = fmaxf(mx[h], s[b][n][e]);
          }
        float alpha[2], ref[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
          const float m_new = fmaxf(m_run[b][h], mx[h]);
          ref[h] = m_new == -INFINITY ? 0.f : m_new;
          alpha[h] = exp2f(m_run[b][h] - ref[h]);
          m_run[b][h] = m_new;
          l_run[b][h] *= alpha[h];
        }
#pragma unroll
        for (int n = 0; n < kSub / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[b][n][e] = exp2f(s[b][n][e] - ref[e >> 1]);
            l_run[b][e >> 1] += s[b][n][e];
          }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[b][n][0] *= alpha[0], o[b][n][1] *= alpha[0];
          o[b][n][2] *= alpha[1], o[b][n][3] *= alpha[1];
        }
        pa[b][0] = pack_pair<KvT>(s[b][0][0], s[b][0][1]);
        pa[b][1] = pack_pair<KvT>(s[b][0][2], s[b][0][3]);
        pa[b][2] = pack_pair<KvT>(s[b][1][0], s[b][1][1]);
        pa[b][3] = pack_pair<KvT>(s[b][1][2], s[b][1][3]);
      }

      // O += P V: each V fragment serves the warp's kMB m16 blocks.
#pragma unroll
      for (int n = 0; n < D / 8; n += 2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, vt + size_t(tok0 + (lane & 15)) * kLd + (n + (lane >> 4)) * 8);
        const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
#pragma unroll
        for (int b = 0; b < kMB; ++b) {
          mma16816<KvT>(o[b][n], pa[b], b0);
          mma16816<KvT>(o[b][n + 1], pa[b], b1);
        }
      }
    }
    __syncthreads();  // every warp is done with the stage before the next iteration refills it
  }
  cp_async_wait<0>();

#pragma unroll
  for (int b = 0; b < kMB; ++b)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l_run[b][h] += __shfl_xor_sync(0xffffffffu, l_run[b][h], 1);
      l_run[b][h] += __shfl_xor_sync(0xffffffffu, l_run[b][h], 2);
    }
}

}  // namespace ca

#endif  // CHUNKATTN_TC_ENGINE_CUH_
