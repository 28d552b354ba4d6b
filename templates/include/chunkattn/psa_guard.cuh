// chunkattn/psa_guard.cuh — the PSA guard (the progressive step) on cuda/emu: the cpu target's rule
// (chunkattn/cpu/sparse_decode.h) run between the select and the list-driven decode.
//
//   q        [num_io_rows, Hq, D] Cfg::QT (scaled by softmax_scale here, as the select does)
//   k_pool   [num_slots, Hkv, C, D] Cfg::KvT
//   scratch  the select's [num_requests, Hkv, G + 3, max_chunks] words (select.cuh): per head the
//            estimated log-mass ℓ of every chunk, and the chunk flags (kFlagSelected)
//   lists, counts, guard_added [num_rows, Hkv(, max_chunks)] int32, in and out
//
// Grid (num_requests, Hkv), GuardPlan::kThreads threads. For a (row, KV head) whose list misses
// chunks: Z_sel, the exact log-sum-exp of q·k over the listed chunks' tokens per head (warp w
// takes listed chunks w, w + W, …, lanes over channels, an online log-sum-exp); Z_left, the
// log-sum-exp of the select's estimates ℓ over the unselected full chunks. When a head's covered
// share Z_sel / (Z_sel + Z_left) falls below `mass`, the next batch — the max(k_min, kGuardBatch)
// unselected full chunks of highest max-over-heads ℓ (ties to the lower index) — joins the list,
// which stays ascending; guard_added counts it. The decode then attends the grown list like any
// other: the device-side flag is the list itself (no host synchronisation, fixed shapes).
//
// Unlike the cpu target (which gets Z_sel from its decode state), this pass reads the K of the
// listed chunks once more per (row, KV head) to get Z_sel before the decode.
#ifndef CHUNKATTN_PSA_GUARD_CUH_
#define CHUNKATTN_PSA_GUARD_CUH_

#include <math.h>
#include <stdint.h>

#include "chunkattn/decode_view.cuh"
#include "chunkattn/dtype.cuh"
#include "chunkattn/prims.cuh"
#include "chunkattn/psa_math.h"
#include "chunkattn/select.cuh"

namespace ca {

template <class Cfg>
struct GuardPlan {
  static constexpr int kThreads = 128, kWarps = kThreads / 32;
  static constexpr int kGroup = Cfg::kQHeads / Cfg::kKvHeads;
  // q [G, D] f32, then each warp's (m, l) per head [W][G][2], then one reduction word per warp.
  static constexpr int kSmemBytes = (kGroup * Cfg::kHeadDim + kWarps * kGroup * 2 + kWarps) * 4;
};

struct GuardIo {
  int32_t* scratch;  // the select's (the chunk flags are updated in place)
  int32_t* lists;
  int32_t* counts;
  int32_t* guard_added;  // may be null
  int32_t max_chunks;
  psa::SelectArgs args;
};

// p[i] = value for i < n.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) psa_fill_kernel(int32_t* p, int32_t n, int32_t value) {
  const int i = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (i < n) stg<CA_TRAFFIC_OUT>(p + i, value);
}

// (The explicit minimum of 1 block per SM: without it ptxas spills at D = 256, G = 1 on sm_80.)
template <class Cfg>
__global__ void __launch_bounds__(GuardPlan<Cfg>::kThreads, 1)
    psa_guard_kernel(const DecodeView ctx, const DecodeTensors tensors, const GuardIo io) {
  using Plan = GuardPlan<Cfg>;
  using KvT = typename Cfg::KvT;
  using QT = typename Cfg::QT;
  constexpr int D = Cfg::kHeadDim, C = Cfg::kChunk, Hkv = Cfg::kKvHeads, Hq = Cfg::kQHeads,
                G = Plan::kGroup, T = Plan::kThreads, W = Plan::kWarps;
  extern __shared__ __align__(128) unsigned char smem[];
  float* qs = reinterpret_cast<float*>(smem);  // [G, D]
  float* states = qs + G * D;                  // [W, G, 2]
  float* red = states + W * G * 2;             // [W]
  int* redi = reinterpret_cast<int*>(red);
  const int tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int kvh = int(blockIdx.y);
  const int r = ctx.request_row(int(blockIdx.x));
  const int len = ctx.row_length(r);
  const int listed =
      ldg<CA_TRAFFIC_CONTEXT>(ctx.c.row_chunk_offsets() + r + 1) - ctx.row_chunk_offset(r);
  const int by_len = (len + C - 1) / C;
  const int n = by_len < listed ? by_len : listed;
  const size_t at = size_t(r) * Hkv + kvh;
  int32_t* list = io.lists + at * size_t(io.max_chunks);
  const int count = ldg<CA_TRAFFIC_OUT>(io.counts + at);
  if (count >= n) {  // complete (dense rows, mass 1): nothing to add
    if (tid == 0 && io.guard_added) stg<CA_TRAFFIC_OUT>(io.guard_added + at, int32_t(0));
    return;
  }
  const float* ell = reinterpret_cast<const float*>(io.scratch) +
                     (size_t(blockIdx.x) * Hkv + kvh) * (G + 3) * size_t(io.max_chunks);
  int32_t* flags = io.scratch + (size_t(blockIdx.x) * Hkv + kvh) * (G + 3) * size_t(io.max_chunks) +
                   (G + 2) * size_t(io.max_chunks);
  const int32_t* slots = ctx.row_chunk_slots(r);

  const QT* q = static_cast<const QT*>(tensors.q) + (size_t(ctx.row_io(r)) * Hq + kvh * G) * D;
  for (int e = tid; e < G * D; e += T)
    sts(qs + e, to_float(ldg<CA_TRAFFIC_Q>(q + e)) * tensors.softmax_scale);
  __syncthreads();

  // Z_sel: warp w over listed chunks w, w + W, …; an online log-sum-exp per head.
  float m[G], l[G];
  for (int g = 0; g < G; ++g) m[g] = -INFINITY, l[g] = 0.f;
  for (int i = warp; i < count; i += W) {
    const int j = ldg<CA_TRAFFIC_OUT>(list + i);
    const int valid = j * C + C <= len ? C : len - j * C;
    const KvT* k = static_cast<const KvT*>(tensors.k_pool) +
                   (size_t(ctx.chunk_slot(slots, j)) * Hkv + kvh) * C * D;
    for (int t = 0; t < valid; ++t) {
      float dot[G];
      for (int g = 0; g < G; ++g) dot[g] = 0.f;
      for (int d = lane; d < D; d += 32) {
        const float x = to_float(ldg<CA_TRAFFIC_KV>(k + t * D + d));
        for (int g = 0; g < G; ++g) dot[g] += lds(qs + g * D + d) * x;
      }
      for (int g = 0; g < G; ++g) {
        const float s = psa::warp_reduce(dot[g], psa::SumOp{});
        if (s > m[g]) {
          l[g] = l[g] * expf(m[g] - s) + 1.f;
          m[g] = s;
        } else {
          l[g] += expf(s - m[g]);
        }
      }
    }
  }
  if (lane == 0)
    for (int g = 0; g < G; ++g) {
      sts(states + (warp * G + g) * 2, m[g]);
      sts(states + (warp * G + g) * 2 + 1, l[g]);
    }
  __syncthreads();

  // Per head: Z_sel (the warps' states merged), Z_left from the estimates; short of mass?
  const float log_mass = logf(io.args.mass);
  bool short_of_mass = false;
  for (int g = 0; g < G; ++g) {
    float mx = -INFINITY;
    for (int w = 0; w < W; ++w) mx = fmaxf(mx, lds(states + (w * G + g) * 2));
    float sum = 0.f;
    for (int w = 0; w < W; ++w) {
      const float l_w = lds(states + (w * G + g) * 2 + 1);
      if (l_w > 0.f) sum += l_w * expf(lds(states + (w * G + g) * 2) - mx);
    }
    const float covered = sum == 0.f ? -INFINITY : mx + logf(sum);
    const float* e = ell + size_t(g) * io.max_chunks;
    float lm = -INFINITY;
    for (int j = tid; j < n - 1; j += T)
      if (!(flags[j] & psa::kFlagSelected)) lm = fmaxf(lm, e[j]);
    lm = psa::block_reduce<W>(lm, red, psa::MaxOp{});
    float ls = 0.f;
    if (lm != -INFINITY)
      for (int j = tid; j < n - 1; j += T)
        if (!(flags[j] & psa::kFlagSelected)) ls += expf(e[j] - lm);
    ls = psa::block_reduce<W>(ls, red, psa::SumOp{});
    const float left = lm == -INFINITY ? -INFINITY : lm + logf(ls);
    // covered / (covered + left) < mass, in logs (as the cpu target).
    const float hi = covered > left ? covered : left, lo = covered > left ? left : covered;
    const float total = lo == -INFINITY ? hi : hi + log1pf(expf(lo - hi));
    if (left != -INFINITY && covered - total < log_mass) short_of_mass = true;
  }
  if (!short_of_mass) {
    if (tid == 0 && io.guard_added) stg<CA_TRAFFIC_OUT>(io.guard_added + at, int32_t(0));
    return;
  }

  // The next batch: the unselected full chunks of highest max-over-heads ℓ.
  const int want = io.args.k_min > psa::kGuardBatch ? io.args.k_min : psa::kGuardBatch;
  for (int j = tid; j < n; j += T) flags[j] &= ~psa::kFlagAdded;
  const auto best_key = [&](int j) {
    float b = -INFINITY;
    for (int g = 0; g < G; ++g) b = fmaxf(b, ell[size_t(g) * io.max_chunks + j]);
    return psa::order_key(b);
  };
  const int tail = n - 1;
  psa::block_mark_top_k<T>(
      flags, tail, want, psa::kFlagAdded, best_key,
      [](int32_t f) { return !(f & psa::kFlagSelected); }, red);
  __syncthreads();

  // The grown list, ascending.
  int written = 0;
  for (int base = 0; base < n; base += T) {
    const int j = base + tid;
    const bool sel = j < n && (flags[j] & (psa::kFlagSelected | psa::kFlagAdded));
    int in_tile = 0;
    const int pos = psa::block_exclusive_scan<W>(sel ? 1 : 0, redi, &in_tile);
    if (sel) stg<CA_TRAFFIC_OUT>(list + written + pos, int32_t(j));
    written += in_tile;
  }
  if (tid == 0) {
    stg<CA_TRAFFIC_OUT>(io.counts + at, int32_t(written));
    if (io.guard_added) stg<CA_TRAFFIC_OUT>(io.guard_added + at, int32_t(written - count));
  }
}

}  // namespace ca

#endif  // CHUNKATTN_PSA_GUARD_CUH_
