// chunkattn/decode_sequence_first.cuh — sequence-first (paged) decode attention.
//
// One CTA per (row, KV head) walks the row's chunk list and computes attention for the G query
// heads of that KV head together, so every K/V byte a row needs is read once per step. It is
// the baseline the two-phase kernels are measured against, and the phase-2 fallback when a
// context has no shared runs.
//
//   q          [num_io_rows, Hq, D]      Cfg::QT, requested row r reads io row row_io(r)
//   out        [num_io_rows, Hq, D]      Cfg::OutT
//   k/v_pool   [num_slots, Hkv, C, D]    Cfg::KvT
//   context    the packed kernel context (context.h); one CTA per (requested row, KV head)
//
// Kept as the reference the new kernels are measured against (it maps lane = token, so its K
// reads are 32-way bank conflicts; its shared accesses go through lds / sts so the emu target
// counts them). Tokens are processed in tiles of kTile (≤ C, so a tile never crosses a chunk). A
// tile is loaded with cp.async only up to the row's length, and skipped whole when the mask hides
// it from every head of the group (sliding windows cost nothing outside the window).
#ifndef CHUNKATTN_DECODE_SEQUENCE_FIRST_CUH_
#define CHUNKATTN_DECODE_SEQUENCE_FIRST_CUH_

#include <math.h>
#include <stddef.h>

#include "chunkattn/abi.h"
#include "chunkattn/context.h"
#include "chunkattn/dtype.cuh"
#include "chunkattn/prims.cuh"
#include "chunkattn/softmax_state.h"
#include "chunkattn/variant.h"

namespace ca {

// Launch geometry and the dynamic shared-memory arena, carved in this order (bytes).
template <class Cfg>
struct SequenceFirstPlan {
  static constexpr int kThreads = 128;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kGroup = Cfg::kQHeads / Cfg::kKvHeads;
  static constexpr int kD = Cfg::kHeadDim;
  static constexpr int kTile = Cfg::kChunk < 32 ? Cfg::kChunk : 32;
  static constexpr int kVec = 16 / int(sizeof(typename Cfg::KvT));  // elements per 16-byte copy

  static constexpr size_t kKvTileBytes = size_t(kTile) * kD * sizeof(typename Cfg::KvT);
  static constexpr size_t kOffK = 0;                                // KvT [kTile][D]
  static constexpr size_t kOffV = kOffK + kKvTileBytes;             // KvT [kTile][D]
  static constexpr size_t kOffQ = kOffV + kKvTileBytes;             // f32 [G][D]
  static constexpr size_t kOffO = kOffQ + size_t(kGroup) * kD * 4;  // f32 [G][D], un-normalized
  static constexpr size_t kOffP =
      kOffO + size_t(kGroup) * kD * 4;  // f32 [G][kTile] scores, then exp
  static constexpr size_t kOffState = kOffP + size_t(kGroup) * kTile * 4;  // SoftmaxState [G]
  static constexpr size_t kOffRescale =
      kOffState + size_t(kGroup) * 8;  // f32 [G][2] this tile's factors
  static constexpr size_t kSmemBytes = kOffRescale + size_t(kGroup) * 8;

  static_assert(Cfg::kQHeads % Cfg::kKvHeads == 0, "GQA group must be integral");
  static_assert(Cfg::kChunk % kTile == 0, "a tile never crosses a chunk");
  static_assert(kD % kVec == 0, "rows must split into 16-byte copies");
};

template <class T>
CA_DEVICE T warp_max(T v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <class T>
CA_DEVICE T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <class Cfg, class Variant>
__global__ void __launch_bounds__(SequenceFirstPlan<Cfg>::kThreads)
    decode_sequence_first_kernel(const CaDecodeParams p) {
  using Plan = SequenceFirstPlan<Cfg>;
  using QT = typename Cfg::QT;
  using KvT = typename Cfg::KvT;
  using OutT = typename Cfg::OutT;
  constexpr int G = Plan::kGroup, D = Plan::kD, kTile = Plan::kTile, C = Cfg::kChunk;

  extern __shared__ __align__(128) unsigned char smem[];
  KvT* k_tile = reinterpret_cast<KvT*>(smem + Plan::kOffK);
  KvT* v_tile = reinterpret_cast<KvT*>(smem + Plan::kOffV);
  float* q_s = reinterpret_cast<float*>(smem + Plan::kOffQ);
  float* o_s = reinterpret_cast<float*>(smem + Plan::kOffO);
  float* p_s = reinterpret_cast<float*>(smem + Plan::kOffP);
  SoftmaxState* state = reinterpret_cast<SoftmaxState*>(smem + Plan::kOffState);
  float* rescale = reinterpret_cast<float*>(smem + Plan::kOffRescale);

  const KernelContext ctx{p.context};
  const int request = blockIdx.x, kv_head = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int row = ldg<CA_TRAFFIC_CONTEXT>(ctx.request_rows() + request);
  const int io = ldg<CA_TRAFFIC_CONTEXT>(ctx.row_ios() + row);
  const int length = ldg<CA_TRAFFIC_CONTEXT>(ctx.row_lengths() + row);
  const int seq = ldg<CA_TRAFFIC_CONTEXT>(ctx.row_seqs() + row);
  const int chunk_list = ldg<CA_TRAFFIC_CONTEXT>(ctx.row_chunk_offsets() + row);
  const size_t head_offset = (size_t(io) * Cfg::kQHeads + size_t(kv_head) * G) * D;

  const QT* q = static_cast<const QT*>(p.q) + head_offset;
  for (int e = tid; e < G * D; e += Plan::kThreads) {
    sts(&q_s[e], to_float(ldg<CA_TRAFFIC_Q>(q + e)));
    sts(&o_s[e], 0.f);
  }
  if (tid < G) state[tid] = SoftmaxState{};
  __syncthreads();

  for (int t0 = 0; t0 < length; t0 += kTile) {
    const int valid = length - t0 < kTile ? length - t0 : kTile;

    // Visibility first: the mask runs before anything reads K.
    int any_visible = 0;
    for (int e = tid; e < G * kTile; e += Plan::kThreads) {
      const int g = e / kTile, t = e % kTile;
      bool visible = t < valid;
      if (Variant::kHasMask && visible)
        visible = Variant::mask(Pos{seq, kv_head * G + g, kv_head, length - 1, t0 + t}, p.params);
      sts(&p_s[e], visible ? 0.f : -INFINITY);
      any_visible |= visible;
    }
    if (!__syncthreads_or(any_visible)) continue;

    const int slot = ldg<CA_TRAFFIC_CONTEXT>(ctx.chunk_slots() + chunk_list + t0 / C);
    const size_t kv_offset = ((size_t(slot) * Cfg::kKvHeads + kv_head) * C + t0 % C) * D;
    const KvT* k_src = static_cast<const KvT*>(p.k_pool) + kv_offset;
    const KvT* v_src = static_cast<const KvT*>(p.v_pool) + kv_offset;
    for (int e = tid; e < valid * D / Plan::kVec; e += Plan::kThreads) {
      cp_async<CA_TRAFFIC_KV, 16>(k_tile + e * Plan::kVec, k_src + e * Plan::kVec);
      cp_async<CA_TRAFFIC_KV, 16>(v_tile + e * Plan::kVec, v_src + e * Plan::kVec);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    for (int e = tid; e < G * kTile; e += Plan::kThreads) {
      if (lds(&p_s[e]) == -INFINITY) continue;
      const int g = e / kTile, t = e % kTile;
      float dot = 0.f;
      for (int i = 0; i < D; ++i) dot += lds(&q_s[g * D + i]) * to_float(lds(&k_tile[t * D + i]));
      float score = dot * p.softmax_scale;
      if (Variant::kHasScoreMod)
        score = Variant::score_mod(score, Pos{seq, kv_head * G + g, kv_head, length - 1, t0 + t},
                                   p.params);
      sts(&p_s[e], score);
    }
    __syncthreads();

    // One warp per head of the group: the tile's own softmax state, folded into the running one.
    for (int g = warp; g < G; g += Plan::kWarps) {
      float tile_max = -INFINITY;
      for (int t = lane; t < kTile; t += 32) tile_max = fmaxf(tile_max, lds(&p_s[g * kTile + t]));
      tile_max = warp_max(tile_max);
      float tile_sum = 0.f;
      for (int t = lane; t < kTile; t += 32) {
        const float s = lds(&p_s[g * kTile + t]);
        const float e = s == -INFINITY ? 0.f : expf(s - tile_max);
        sts(&p_s[g * kTile + t], e);
        tile_sum += e;
      }
      tile_sum = warp_sum(tile_sum);
      if (lane == 0) {
        const SoftmaxState::Rescale r = state[g].merge(tile_max, tile_sum);
        sts(&rescale[2 * g], r.self);
        sts(&rescale[2 * g + 1], r.other);
      }
    }
    __syncthreads();

    for (int e = tid; e < G * D; e += Plan::kThreads) {
      const int g = e / D, i = e % D;
      float pv = 0.f;
      for (int t = 0; t < valid; ++t)
        pv += lds(&p_s[g * kTile + t]) * to_float(lds(&v_tile[t * D + i]));
      sts(&o_s[e], lds(&o_s[e]) * lds(&rescale[2 * g]) + pv * lds(&rescale[2 * g + 1]));
    }
    __syncthreads();
  }

  OutT* out = static_cast<OutT*>(p.out) + head_offset;
  for (int e = tid; e < G * D; e += Plan::kThreads)
    stg<CA_TRAFFIC_OUT>(out + e, from_float<OutT>(lds(&o_s[e]) * state[e / D].inv_l()));
}

}  // namespace ca

#endif  // CHUNKATTN_DECODE_SEQUENCE_FIRST_CUH_
