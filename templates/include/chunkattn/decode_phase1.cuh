// chunkattn/decode_phase1.cuh — phase 1 of two-phase decode (and all of chunk-first): for every
// shared run of the packed context, the softmax state of each sharer's query heads over the run's
// tokens, on tensor cores. Phase 2 (decode_phase2.cuh) merges these partials into each row.
//
// Work item = (an m-tile of a run's stacked rows, a KV head, a split of the run's chunks):
//   - Stacked rows: sharer r and query head g of the KV head give stacked row
//     (r - row_begin)·G + g; an m-tile is up to kMT = 128 of them, so b·G ≤ 128 sharers read each
//     shared chunk once.
//   - kWarps warps laid out kWM × kWN: kWM warps of kBlocksPerWarp m16 blocks (16 stacked rows
//     each), kWN warps splitting every stage's tokens (the layout follows the tile's rows). Every
//     K/V fragment a warp reads from shared memory serves all its blocks, so a 128-row tile reads
//     the staged K/V 128 / (16·kBlocksPerWarp) times: up to D = 96, 4 warps of 2 blocks (4 reads);
//     from D = 128, 8 warps of 1 block (8 reads: about 73 shared wavefronts per KB of K/V at
//     D = 128, the copies' 8 included).
//   - Q fragments stay in registers for the whole run up to D = 128; S = Q Kᵀ and O += P V run on
//     mma.sync m16n8k16, B operands by ldmatrix (.trans for V) from shared rows padded to D + 8
//     elements (a 16-byte shift per row: every 8-row ldmatrix phase hits 32 distinct banks). The
//     K fragments are loaded one n8 tile at a time (x2, the same wavefronts as x4): ptxas then
//     keeps fewer of them in flight next to the accumulators.
//   - Few registers besides o and the Q fragments: each lane holds one stacked row's visible
//     length, sequence, head and partial index, shuffled to the accumulator rows where needed.
//   - K/V stream through a 2-stage cp.async ring of 64-token stages; tokens past the split's end
//     are zero-filled (stale shared memory times P = 0 could be NaN). The chunk slots of a stage
//     are read once per warp, one lane per chunk, and shuffled to the copying lanes.
//   - Token-slice warps of one m-block group merge their states through shared memory after the
//     loop (blocks without a row in the tile skip it), then the partials are written: o / l (f32)
//     and lse (natural log), one per (partial, query head, split), in the layout phase 2 reads
//     (Phase2Io::part_o / part_lse).
// The grid is computable on the host from the context's scalars (phase1_items).
#ifndef CHUNKATTN_DECODE_PHASE1_CUH_
#define CHUNKATTN_DECODE_PHASE1_CUH_

#include <math.h>
#include <stddef.h>
#include <string.h>

#include <type_traits>

#include "chunkattn/abi.h"
#include "chunkattn/chunk_select_mask.cuh"
#include "chunkattn/decode_phase2.cuh"
#include "chunkattn/decode_view.cuh"
#include "chunkattn/dtype.cuh"
#include "chunkattn/prims.cuh"
#include "chunkattn/tc_engine.cuh"
#include "chunkattn/variant.h"

namespace ca {

// Launch geometry and the dynamic shared-memory arena (codegen/plan.ts mirrors it). kHeavyLoop: the
// instance's loop holds more registers (a variant that reads Pos, or a PSA list-driven instance;
// Phase1PlanOf below).
template <class Cfg, bool kHeavyLoop = false>
struct Phase1Plan {
  using KvT = typename Cfg::KvT;
  static constexpr int G = Cfg::kQHeads / Cfg::kKvHeads, D = Cfg::kHeadDim, C = Cfg::kChunk;
  // m16 blocks a warp holds: 2 up to D = 128 (D = 96 if kHeavyLoop), so every K/V fragment a warp
  // loads from shared memory serves 32 stacked rows; else 1. o takes D and Q D / 2 registers a
  // lane: 144 of 255 at D = 96. At D = 128 (192) the rest of the loop needs more than the 63 left,
  // so there the last k16 step of Q is re-read from a small Q region in shared memory per 16 tokens
  // instead (8 registers fewer; about 4 wavefronts per KB of K/V, where a second read of the tile
  // by twice the warps costs 32); a mask, a score mod or a PSA selection still spills a few bytes,
  // and keeps 1 block.
  static constexpr int kBlocksPerWarp = D <= 96 || (D <= 128 && !kHeavyLoop) ? 2 : 1;
  static constexpr int kWarps = 8 / kBlocksPerWarp, kThreads = 32 * kWarps;
  static constexpr int kMT = 128;  // stacked rows per m-tile: b·G <= 128 read each chunk once
  // The ring and the Q region (tc_engine.cuh: the same layout as phase 2's tensor-core path).
  using Engine = TcEngine<KvT, D, kBlocksPerWarp, kWarps, kMT>;
  static constexpr bool kQInSmem = Engine::kQInSmem;
  static constexpr int kQRegSteps = Engine::kQRegSteps, kQCol0 = Engine::kQCol0;
  static constexpr int kKT = Engine::kKT, kMaxWN = Engine::kMaxWN, kStages = Engine::kStages;
  static constexpr int kLd = Engine::kLd, kQLd = Engine::kQLd;
  static constexpr size_t kTileBytes = Engine::kTileBytes, kStageBytes = Engine::kStageBytes;
  static constexpr size_t kRingBytes = Engine::kRingBytes, kQBytes = Engine::kQBytes;
  static constexpr size_t kQSmemBytes = Engine::kQSmemBytes;
  static constexpr size_t kOffQ = Engine::kOffQ, kOffQSmem = Engine::kOffQSmem;
  // Registers: up to 255 a thread (one 8-warp CTA, or two 4-warp CTAs, per SM's 64 K).
  static constexpr int kMinBlocks = 8 / kWarps;
  static constexpr int kMaxRegisters = 65536 / (kThreads * kMinBlocks) > 255
                                           ? 255
                                           : 65536 / (kThreads * kMinBlocks);
  static constexpr int kMaxSplits = 8;
  // A split must read at least this many K/V bytes per partial byte it adds (see phase1_splits).
  static constexpr int kMinKvPerPartialByte = 8;

  // After the loop the ring holds the token-slice warps' states: f32 o [kWarps][kMT / kWarps]
  // [kMergePitch] (pitch ≡ 8 mod 32 words when D ≡ 0 mod 32: float2 stores conflict-free), then
  // (m, l) [kWarps][kMT / kWarps].
  static constexpr int kMergePitch = D + 8;
  static constexpr size_t kMergeOBytes = size_t(kMT) * kMergePitch * 4;
  static constexpr size_t kMergeBytes = kMergeOBytes + size_t(kMT) * 8;
  static constexpr size_t kLoopBytes = kRingBytes + kQSmemBytes;
  static constexpr size_t kSmemBytes = kLoopBytes > kMergeBytes ? kLoopBytes : kMergeBytes;

  static_assert(Cfg::kQHeads % Cfg::kKvHeads == 0, "GQA group must be integral");
  static_assert(std::is_same<typename Cfg::QT, KvT>::value, "mma needs Q and K/V in one type");
  static_assert(!kQInSmem || kMergeOBytes <= kLoopBytes, "the merge fits the loop's arena");
};

// Whether the build keeps phase 1 at one m16 block a warp at D = 128 on every arch (the rendered
// Cfg::kNarrowPhase1: it includes sm_86 or sm_89, whose ptxas spills with two; codegen/plan.ts).
template <class Cfg, class = void>
inline constexpr bool narrow_phase1 = false;
template <class Cfg>
inline constexpr bool narrow_phase1<Cfg, std::void_t<decltype(Cfg::kNarrowPhase1)>> =
    Cfg::kNarrowPhase1;

// The plan of the kernel instance <Cfg, Variant, kListed>.
template <class Cfg, class Variant, bool kListed>
using Phase1PlanOf = Phase1Plan<Cfg, variant_reads_pos<Variant> || kListed || narrow_phase1<Cfg>>;

// Where phase 1 writes its partials (phase 2 reads them through Phase2Io).
struct Phase1Io {
  float* part_o;    // [num_partials * splits][Hq][D] o / l
  float* part_lse;  // [num_partials * splits][Hq] natural log; -inf = empty
  int splits;       // CTAs per (m-tile, KV head), each over a contiguous share of the run's chunks
  ChunkSelection sel;  // kListed kernels: the PSA selection (chunk_select_mask.cuh)
};

// Run i owns work items [i + ⌊pb_i·G / kMT⌋, i + 1 + ⌊pb_{i+1}·G / kMT⌋) (pb = partial_begin,
// consecutive in run order), which holds its ⌈rows·G / kMT⌉ m-tiles and maybe one spare.
template <class Cfg>
CA_HD int64_t phase1_item_begin(int run, int partial_begin) {
  return run + int64_t(partial_begin) * Phase1Plan<Cfg>::G / Phase1Plan<Cfg>::kMT;
}
template <class Cfg>
inline int64_t phase1_items(int num_runs, int num_partials) {
  return phase1_item_begin<Cfg>(num_runs, num_partials);
}

// One item's m-tile: stacked rows [m0, m0 + mcount) of the run.
struct Phase1Tile {
  CaSharedRun run;
  int m0, mcount;
};

// kListed: PSA, chunks no sharer of the tile selected are skipped and each sharer sees only the
// chunks it selected (chunk_select_mask.cuh).
template <class Cfg, class Variant, int kWM, bool kListed>
CA_DEVICE void phase1_body(const DecodeView& ctx, const DecodeTensors& t, const Phase1Io& io,
                           const Phase1Tile& tile) {
  using Pl = Phase1PlanOf<Cfg, Variant, kListed>;
  using KvT = typename Cfg::KvT;
  constexpr int G = Pl::G, D = Pl::D, C = Pl::C, Hq = Cfg::kQHeads, Hkv = Cfg::kKvHeads;
  constexpr int kLd = Pl::kLd, kKT = Pl::kKT, kWN = Pl::kWarps / kWM, kNT = kKT / kWN;
  constexpr int kMB = Pl::kBlocksPerWarp;  // m16 blocks of this warp
  constexpr int kNK = D / 16;              // k16 steps of Q Kᵀ
  constexpr int kSub = 16;                 // tokens per S block (register budget)
  constexpr int kPieces = D / 8;           // 16-byte pieces of a row
  static_assert(kWN <= Pl::kMaxWN && kNT % 16 == 0, "a warp's token slice is whole k16 steps");

  extern __shared__ __align__(128) unsigned char smem[];
  const CaSharedRun& run = tile.run;
  const int m0 = tile.m0, mcount = tile.mcount;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp % kWM, wn = warp / kWM;
  const int kvh = blockIdx.y, split = blockIdx.z;
  const int gq = lane >> 2, tq = lane & 3;
  // Whether any of this warp's stacked rows is in the tile (warp-uniform): a warp past the tile's
  // rows only takes part in the copies and barriers.
  const bool warp_live = wm * kMB * 16 < mcount;
  constexpr int kRowsRead = kWM * kMB * 16;  // Q rows the warps read (the rest stays unstaged)

  // This split's chunks of the run.
  const int c_lo = int(int64_t(split) * run.num_chunks / io.splits);
  const int c_hi = int(int64_t(split + 1) * run.num_chunks / io.splits);
  const int nchunks = c_hi - c_lo;
  const int ntok = nchunks * C;
  const int tok_pos0 = run.kv_begin + c_lo * C;  // key position of the split's first token
  const int ntiles = (ntok + kKT - 1) / kKT;
  const int slot0 = run.chunk_begin + c_lo;  // the split's first chunk in ctx.run_slots()

  // Lane l holds the visible tokens, the length, the sequence and the partial of the warp's local
  // stacked row l (kMB · 16 <= 32 rows); the rows of accumulator half h of block b (g and g + 8)
  // read them by shuffle, which keeps them (and the tile's scalars) out of the registers the
  // accumulators need. A row past the tile has length 0 (nothing visible) and partial -1.
  constexpr bool kPos = variant_reads_pos<Variant>;
  int my_vis, my_len, my_seq, my_head, my_part, my_row;
  {
    const int m = wm * kMB * 16 + (lane & (kMB * 16 - 1));
    const bool live = m < mcount;
    const int sm = m0 + (live ? m : 0);
    const int r = run.row_begin + sm / G;
    my_len = live ? ctx.row_length(r) : 0;
    my_row = live ? r : -1;
    // The split's tokens [0, my_vis) are visible to the row: within the split and before the
    // row's length (which also masks a chunk-first run's partial last chunk).
    my_vis = min(ntok, my_len - tok_pos0);
    my_seq = kPos ? ctx.row_seq(r) : 0;
    my_head = kvh * G + sm % G;
    // Index of the row's partial (o: [.][D], lse: [.]) = (partial slot, query head).
    my_part =
        live ? ((run.partial_begin + sm / G) * io.splits + split) * Hq + kvh * G + sm % G : -1;
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
  auto row_part = [&](int b, int h) {
    return __shfl_sync(0xffffffffu, my_part, b * 16 + gq + 8 * h);
  };
  // Whether m16 block b of this warp has no row in the tile (warp-uniform).
  auto block_dead = [&](int b) { return __shfl_sync(0xffffffffu, my_part, b * 16) < 0; };

  // Copies stage `i` (tokens [i·kKT, (i + 1)·kKT) of the split), K and V, into ring slot `stage`.
  // Called by every thread (the slot shuffle is warp-wide).
  auto load_stage = [&](int i, int stage) {
    const int first = i * kKT / C;  // the stage's first chunk within the split
    int last = (i * kKT + kKT - 1) / C;
    if (last > nchunks - 1) last = nchunks - 1;
    const int my_slot =
        lane <= last - first ? ctx.chunk_slot(ctx.run_slots() + slot0, first + lane) : 0;
    const bool my_live =
        !kListed || (lane <= last - first &&
                     chunk_select::tile_selects(io.sel, blockIdx.x, kvh, Hkv, c_lo + first + lane));
    KvT* ks = reinterpret_cast<KvT*>(smem + stage * Pl::kStageBytes);
    KvT* vs = reinterpret_cast<KvT*>(smem + stage * Pl::kStageBytes + Pl::kTileBytes);
#pragma unroll 1
    for (int e0 = 0; e0 < kKT * kPieces; e0 += Pl::kThreads) {
      const int e = e0 + tid;
      const int row = e / kPieces, piece = e % kPieces;
      const int u = i * kKT + row;  // token within the split
      const int slot = __shfl_sync(0xffffffffu, my_slot, (u / C - first) & 31);
      const bool live = !kListed || __shfl_sync(0xffffffffu, my_live, (u / C - first) & 31);
      if (kKT * kPieces % Pl::kThreads != 0 && e >= kKT * kPieces) continue;
      KvT* kd = ks + size_t(row) * kLd + piece * 8;
      KvT* vd = vs + size_t(row) * kLd + piece * 8;
      if (u < ntok && live) {
        const size_t off = ((size_t(slot) * Hkv + kvh) * C + u % C) * D + piece * 8;
        cp_async<CA_TRAFFIC_KV, 16>(kd, static_cast<const KvT*>(t.k_pool) + off);
        cp_async<CA_TRAFFIC_KV, 16>(vd, static_cast<const KvT*>(t.v_pool) + off);
      } else {
        cp_async_zfill<CA_TRAFFIC_KV, 16>(kd, t.k_pool, 0);
        cp_async_zfill<CA_TRAFFIC_KV, 16>(vd, t.v_pool, 0);
      }
    }
  };

  // A split without chunks (a short run next to a long one) has an empty state for every row.
  if (ntiles == 0) {
    if (wn == 0)  // warp-uniform: the shuffles need every lane
#pragma unroll
      for (int b = 0; b < kMB; ++b)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int part = row_part(b, h);
          if (tq == 0 && part >= 0) stg<CA_TRAFFIC_PARTIAL>(io.part_lse + part, -INFINITY);
        }
    return;
  }

  // Prologue: the Q tile and stage 0, one group. A sharer without an io row (not requested this
  // call) reads zeros: its partial is computed but never merged.
  KvT* qs = reinterpret_cast<KvT*>(smem + Pl::kOffQ);
  for (int e = tid; e < kRowsRead * kPieces; e += Pl::kThreads) {
    const int m = e / kPieces, piece = e % kPieces;
    KvT* dst = qs + size_t(m) * kLd + piece * 8;
    const int sm = m0 + m;
    const int io_row = m < mcount ? ctx.row_io(run.row_begin + sm / G) : -1;
    if (io_row >= 0)
      cp_async<CA_TRAFFIC_Q, 16>(dst, static_cast<const KvT*>(t.q) +
                                          (size_t(io_row) * Hq + kvh * G + sm % G) * D + piece * 8);
    else
      cp_async_zfill<CA_TRAFFIC_Q, 16>(dst, t.q, 0);
  }
  load_stage(0, 0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // Q fragments of the register steps; the other steps stay in the Q region (kQInSmem: the
  // staged tile itself; else its columns from kQCol0 on, copied out of the staging here).
  constexpr int kQRegSteps = Pl::kQRegSteps;
  constexpr int kQReg = kQRegSteps > 0 ? kQRegSteps : 1;  // (an array needs a size)
  uint32_t qa[kMB][kQReg][4];
  const KvT* qr = reinterpret_cast<const KvT*>(smem + Pl::kOffQSmem);
  constexpr int kQrLd = Pl::kQLd;
  if constexpr (!Pl::kQInSmem) {
#pragma unroll
    for (int b = 0; b < kMB; ++b)
#pragma unroll
      for (int kk = 0; kk < kQRegSteps; ++kk)
        ldmatrix_x4(qa[b][kk], qs + size_t((wm * kMB + b) * 16 + (lane & 15)) * kLd + kk * 16 +
                                   (lane >> 4) * 8);
    if constexpr (Pl::kQCol0 < D) {
      constexpr int kTail = (D - Pl::kQCol0) / 8;  // 16-byte pieces a row keeps
      for (int e = tid; e < kRowsRead * kTail; e += Pl::kThreads) {
        const int m = e / kTail, piece = e % kTail;
        sts(reinterpret_cast<uint4*>(const_cast<KvT*>(qr) + size_t(m) * kQrLd + piece * 8),
            lds(reinterpret_cast<const uint4*>(qs + size_t(m) * kLd + Pl::kQCol0 + piece * 8)));
      }
    }
    __syncthreads();  // stage 1 (the Q staging) is refilled below
  }
  // A fragment of m16 block b, k16 step kk >= kQRegSteps, from the Q region.
  auto load_q = [&](uint32_t(&a)[4], int b, int kk) {
    ldmatrix_x4(a, qr + size_t((wm * kMB + b) * 16 + (lane & 15)) * kQrLd + kk * 16 - Pl::kQCol0 +
                       (lane >> 4) * 8);
  };

  float o[kMB][D / 8][4];
  float m_run[kMB][2], l_run[kMB][2];
#pragma unroll
  for (int b = 0; b < kMB; ++b) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[b][n][0] = o[b][n][1] = o[b][n][2] = o[b][n][3] = 0.f;
    m_run[b][0] = m_run[b][1] = -INFINITY;
    l_run[b][0] = l_run[b][1] = 0.f;
  }

#pragma unroll 1
  for (int i = 0; i < ntiles; ++i) {
    const int stage = i % Pl::kStages;
    if (i + 1 < ntiles) load_stage(i + 1, (i + 1) % Pl::kStages);
    cp_async_commit();
    cp_async_wait<1>();  // stage i has landed; stage i + 1 flies
    __syncthreads();

    const KvT* kt = reinterpret_cast<const KvT*>(smem + stage * Pl::kStageBytes);
    const KvT* vt = reinterpret_cast<const KvT*>(smem + stage * Pl::kStageBytes + Pl::kTileBytes);
    // kListed: the stage's chunks [sel_first, ...) the lane's row selected (bit k: sel_first + k),
    // and whether the tile selected any (warp-uniform: else the stage is all zero-filled).
    uint32_t my_sel = 0;
    bool stage_live = true;
    const int sel_first = i * kKT / C;
    if constexpr (kListed) {
      const int n = min((i * kKT + kKT - 1) / C, nchunks - 1) - sel_first + 1;
      stage_live = __any_sync(0xffffffffu,
                              lane < n && chunk_select::tile_selects(io.sel, blockIdx.x, kvh, Hkv,
                                                                     c_lo + sel_first + lane));
      if (stage_live && my_row >= 0)
        my_sel = chunk_select::row_stage_bits(io.sel, my_row, kvh, Hkv,
                                              run.kv_begin / C + c_lo + sel_first, n);
    }
#pragma unroll 1
    for (int sub = 0; sub < (warp_live && stage_live ? kNT : 0); sub += kSub) {
      const int tok0 = wn * kNT + sub;  // this warp's token block of the stage

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
        // Token j of the block (split token u0 + j) is visible to row h iff j < lim[h].
        const int u0 = i * kKT + tok0;
        int lim[2] = {row_vis(b, 0) - u0, row_vis(b, 1) - u0};
        // kListed: the block lies in one chunk (C % kSub == 0); a row that did not select it sees
        // none of its tokens.
        static_assert(!kListed || C % kSub == 0, "an S block lies within one chunk");
        if constexpr (kListed) {
#pragma unroll
          for (int h = 0; h < 2; ++h)
            if (!((__shfl_sync(0xffffffffu, my_sel, b * 16 + gq + 8 * h) >> (u0 / C - sel_first)) &
                  1u))
              lim[h] = 0;
        }
#pragma unroll
        for (int n = 0; n < kSub / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int h = e >> 1;
            const int j = n * 8 + 2 * tq + (e & 1);
            bool visible = j < lim[h];
            const Pos pos{kPos ? row_seq(b, h) : 0, kPos ? row_head(b, h) : 0, kvh,
                          kPos ? row_len(b, h) - 1 : 0, tok_pos0 + u0 + j};
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

  // Token-slice warps of one m-block group merge through shared memory (the arena is free: every
  // copy landed and the loop's last barrier passed).
  if constexpr (kWN > 1) {
    float* mo = reinterpret_cast<float*>(smem);                     // [kMT][kMergePitch]
    float* ml = reinterpret_cast<float*>(smem + Pl::kMergeOBytes);  // [kMT][2]
    // Row (within the arena) of accumulator half h of block b of warp w.
    auto arena_row = [&](int w, int b, int h) { return (w * kMB + b) * 16 + gq + 8 * h; };
    __syncthreads();
    if (wn > 0 && warp_live) {
#pragma unroll
      for (int b = 0; b < kMB; ++b) {
        if (block_dead(b)) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = arena_row(warp, b, h);
#pragma unroll
          for (int n = 0; n < D / 8; ++n)
            sts(reinterpret_cast<float2*>(mo + size_t(row) * Pl::kMergePitch + n * 8 + 2 * tq),
                make_float2(o[b][n][2 * h], o[b][n][2 * h + 1]));
          if (tq == 0)
            sts(reinterpret_cast<float2*>(ml + size_t(row) * 2),
                make_float2(m_run[b][h], l_run[b][h]));
        }
      }
    }
    __syncthreads();
    if (wn == 0 && warp_live) {  // the warps of one m-block group share wm, so their liveness
#pragma unroll 1
      for (int other = 1; other < kWN; ++other) {
        const int ow = other * kWM + wm;
#pragma unroll
        for (int b = 0; b < kMB; ++b) {
          if (block_dead(b)) continue;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int row = arena_row(ow, b, h);
            const float2 st = lds(reinterpret_cast<const float2*>(ml + size_t(row) * 2));
            const float m_new = fmaxf(m_run[b][h], st.x);
            const float ref = m_new == -INFINITY ? 0.f : m_new;
            const float fa = exp2f(m_run[b][h] - ref), fb = exp2f(st.x - ref);
            m_run[b][h] = m_new;
            l_run[b][h] = l_run[b][h] * fa + st.y * fb;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
              const float2 v = lds(reinterpret_cast<const float2*>(
                  mo + size_t(row) * Pl::kMergePitch + n * 8 + 2 * tq));
              o[b][n][2 * h] = o[b][n][2 * h] * fa + v.x * fb;
              o[b][n][2 * h + 1] = o[b][n][2 * h + 1] * fa + v.y * fb;
            }
          }
        }
      }
    }
  }

  if (wn != 0) return;
    // Partials of the live stacked rows: o / l and lse (natural log). An empty state (nothing
    // visible) writes lse = -inf only; phase 2 never reads its o.
#pragma unroll
  for (int b = 0; b < kMB; ++b)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int part = row_part(b, h);
      if (part < 0) continue;
      const bool empty = l_run[b][h] == 0.f;
      const float inv = empty ? 0.f : 1.f / l_run[b][h];
      float* dst = io.part_o + size_t(part) * D;
      if (!empty)
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
          stg<CA_TRAFFIC_PARTIAL>(reinterpret_cast<float2*>(dst + n * 8 + 2 * tq),
                                  make_float2(o[b][n][2 * h] * inv, o[b][n][2 * h + 1] * inv));
      if (tq == 0)
        stg<CA_TRAFFIC_PARTIAL>(io.part_lse + part,
                                empty ? -INFINITY : (m_run[b][h] + log2f(l_run[b][h])) * kLn2);
    }
}

// Runs the body with the fewest warps along m (a power of two >= kWM) that hold warps_m.
template <class Cfg, class Variant, int kWM, bool kListed>
CA_DEVICE void phase1_dispatch(const DecodeView& ctx, const DecodeTensors& t, const Phase1Io& io,
                               const Phase1Tile& tile, int warps_m) {
  if constexpr (kWM < Phase1PlanOf<Cfg, Variant, kListed>::kWarps) {
    if (warps_m > kWM) {
      phase1_dispatch<Cfg, Variant, 2 * kWM, kListed>(ctx, t, io, tile, warps_m);
      return;
    }
  }
  phase1_body<Cfg, Variant, kWM, kListed>(ctx, t, io, tile);
}

// grid (phase1_items, Hkv, splits), block kThreads, dynamic shared memory kSmemBytes.
// kListed: the PSA decode (see phase1_body).
template <class Cfg, class Variant, bool kListed = false>
__global__ void __launch_bounds__(Phase1PlanOf<Cfg, Variant, kListed>::kThreads,
                                  Phase1PlanOf<Cfg, Variant, kListed>::kMinBlocks)
    decode_phase1_kernel(const DecodeView ctx, const DecodeTensors t, const Phase1Io io) {
  using Pl = Phase1PlanOf<Cfg, Variant, kListed>;
  // Thread 0 finds the item's run (the last whose first item is <= blockIdx.x: item_begin strictly
  // increases with the run) and shares it through the arena's first words.
  extern __shared__ __align__(128) unsigned char smem[];
  int* hdr = reinterpret_cast<int*>(smem);
  if (threadIdx.x == 0) {
    const int64_t x = blockIdx.x;
    int lo = 0, hi = ctx.num_runs();
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (phase1_item_begin<Cfg>(mid, ctx.run_field(mid, &CaSharedRun::partial_begin)) <= x)
        lo = mid;
      else
        hi = mid;
    }
    const CaSharedRun run = ctx.run(lo);
    sts(hdr + 0, run.chunk_begin);
    sts(hdr + 1, run.num_chunks);
    sts(hdr + 2, run.kv_begin);
    sts(hdr + 3, run.row_begin);
    sts(hdr + 4, run.row_end);
    sts(hdr + 5, run.partial_begin);
    sts(hdr + 6, int(x - phase1_item_begin<Cfg>(lo, run.partial_begin)));
  }
  __syncthreads();
  Phase1Tile tile;
  tile.run.chunk_begin = lds(hdr + 0);
  tile.run.num_chunks = lds(hdr + 1);
  tile.run.kv_begin = lds(hdr + 2);
  tile.run.row_begin = lds(hdr + 3);
  tile.run.row_end = lds(hdr + 4);
  tile.run.partial_begin = lds(hdr + 5);
  const int64_t j = lds(hdr + 6);
  __syncthreads();  // the body's copies overwrite the header
  const int m_total = (tile.run.row_end - tile.run.row_begin) * Pl::G;
  const int64_t m0 = j * Pl::kMT;
  if (m0 >= m_total) return;  // the spare item of a run (see phase1_item_begin)
  tile.m0 = int(m0);
  tile.mcount = m_total - tile.m0 < Pl::kMT ? m_total - tile.m0 : Pl::kMT;
  // Warps along the m-tile: as few as hold its m16 blocks; the others split each stage's tokens.
  const int blocks = (tile.mcount + 15) / 16;
  phase1_dispatch<Cfg, Variant, Pl::kWarps / Pl::kMaxWN, kListed>(
      ctx, t, io, tile, (blocks + Pl::kBlocksPerWarp - 1) / Pl::kBlocksPerWarp);
}

// ---------------------------------------------------------------------------------------------
// Host: the split factor and the workspace.

// Splits of every run's chunks. Enough CTAs to give every SM kMinBlocks (of the plain layout) when
// the m-tiles × KV heads cannot, at most kMaxSplits, and only as far as each split still reads
// kMinKvPerPartialByte K/V bytes per partial byte it writes and phase 2 reads back: a run of n
// tokens over m stacked rows moves 4·D·n K/V bytes and 8·(D + 1)·m partial bytes per split, and a
// split is whole chunks (the run that allows the most splits decides; shorter runs leave splits
// empty, which write an empty lse only). `runs` is the host copy of the context's runs.
template <class Cfg>
inline int phase1_splits(const CaSharedRun* runs, int num_runs, int num_partials, int sm_count) {
  using Pl = Phase1Plan<Cfg>;
  if (num_runs <= 0) return 1;
  const int64_t ctas = phase1_items<Cfg>(num_runs, num_partials) * Cfg::kKvHeads;
  const int64_t fill = int64_t(sm_count) * Pl::kMinBlocks / (ctas > 0 ? ctas : 1);
  int64_t worth = 1;
  for (int i = 0; i < num_runs; ++i) {
    int64_t m = int64_t(runs[i].row_end - runs[i].row_begin) * Pl::G;
    if (m > Pl::kMT) m = Pl::kMT;
    const int64_t kv = int64_t(4) * Pl::D * runs[i].num_chunks * Pl::C;
    const int64_t partial = int64_t(8) * (Pl::D + 1) * m * Pl::kMinKvPerPartialByte;
    int64_t s = kv / partial;
    if (s > runs[i].num_chunks) s = runs[i].num_chunks;  // splits are whole chunks
    if (s > worth) worth = s;
  }
  int64_t s = fill < worth ? fill : worth;
  if (s > Pl::kMaxSplits) s = Pl::kMaxSplits;
  return s < 1 ? 1 : int(s);
}

// Workspace of the partials: o [num_partials * splits][Hq][D] then lse [num_partials * splits][Hq].
template <class Cfg>
inline uint64_t phase1_workspace_bytes(int num_partials, int splits) {
  const uint64_t n = uint64_t(num_partials) * splits * Cfg::kQHeads;
  return n * Cfg::kHeadDim * 4 + n * 4;
}

// Whether the runs' partial ranges are consecutive in run order (phase1_item_begin needs it; the
// context builder assigns them so).
inline bool phase1_partials_in_run_order(const CaSharedRun* runs, int num_runs) {
  int next = 0;
  for (int i = 0; i < num_runs; ++i) {
    if (runs[i].partial_begin != next) return false;
    next += runs[i].row_end - runs[i].row_begin;
  }
  return true;
}

}  // namespace ca

#endif  // CHUNKATTN_DECODE_PHASE1_CUH_
