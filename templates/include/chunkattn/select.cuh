// chunkattn/select.cuh — PSA `select` on cuda/emu: which chunks each requested (row, KV head)
// attends, as a compacted list plus a count in module memory. The rule is the cpu target's
// (chunkattn/cpu/select.h; PSA.md); the pieces both apply come from chunkattn/psa_math.h.
//
//   q        [num_io_rows, Hq, D] Cfg::QT (scaled by softmax_scale here, as on cpu)
//   meta     [num_slots, Hkv, CA_PSA_META_VECTORS, D] Cfg::KvT (chunk_meta.cuh)
//   lists    [num_rows, Hkv, max_chunks] int32 out: selected chunk indices of the row, ascending
//   counts   [num_rows, Hkv] int32 out: entries of each list; -1 for rows no request names
//   scratch  [num_requests, Hkv, G + 3, max_chunks] 4-byte words (ca_psa_scratch_bytes)
//
// Launches, fixed shapes, no host synchronisation:
//   psa_fill_counts_kernel  grid ⌈num_rows·Hkv / 128⌉, 128 threads: counts = -1
//   psa_select_kernel       grid (num_requests, Hkv), SelectPlan::kThreads threads: one block
//                           per (requested row, KV head)
// In a block, warp w scores full chunks w, w + W, … from their metadata (lane l over channels
// l, l + 32, … of any D; G heads at once) and warp w computes the exact log-sum-exp of the tail
// chunk for heads w, w + W…; every later step is block-wide with thread i owning chunks i, i +
// kThreads, …: per head the softmax normalisation and the threshold bisection over the
// order-preserving keys (32 block reductions, no sort), the union over the group, the safety net
// and the [k_min, k_max] clamp (top-k by bisection on the keys, ties to the lower index by an
// ordered block scan), and the compaction (an ordered block scan). Per-chunk state lives in the
// block's scratch slice, read and written with plain accesses by the thread that owns the chunk
// (after a __syncthreads for the scores the warps wrote); it is not part of the traffic proxy.
//
// What differs from the cpu select is the order of float sums (the dot products, the per-head
// normaliser, the coverage at a threshold): a chunk whose decision sits within rounding of its
// boundary may flip. test/psa-emu.test.ts defines those ties.
#ifndef CHUNKATTN_SELECT_CUH_
#define CHUNKATTN_SELECT_CUH_

#include <math.h>
#include <stdint.h>

#include "chunkattn/decode_view.cuh"
#include "chunkattn/dtype.cuh"
#include "chunkattn/prims.cuh"
#include "chunkattn/psa_abi.h"
#include "chunkattn/psa_math.h"

namespace ca {

template <class Cfg>
struct SelectPlan {
  static constexpr int kThreads = 128, kWarps = kThreads / 32;
  static constexpr int kGroup = Cfg::kQHeads / Cfg::kKvHeads;
  // q [G, D] f32, then one reduction word per warp.
  static constexpr int kSmemBytes = (kGroup * Cfg::kHeadDim + kWarps) * 4;
};

// The select's outputs and options (from CaPsaParams).
struct SelectIo {
  const void* meta;
  int32_t* lists;
  int32_t* counts;
  int32_t* scratch;
  int32_t max_chunks;
  psa::SelectArgs args;
};

namespace psa {

// Chunk flags in the scratch slice.
// kFlagTie: block_mark_top_k's candidates at its threshold (cleared before it returns).
enum : int32_t { kFlagForced = 1, kFlagSelected = 2, kFlagAdded = 4, kFlagTie = 8 };

struct SumOp {
  template <class T>
  CA_DEVICE T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  template <class T>
  CA_DEVICE T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct MinOp {
  template <class T>
  CA_DEVICE T operator()(T a, T b) const {
    return a < b ? a : b;
  }
};

template <class T, class Op>
CA_DEVICE T warp_reduce(T v, Op op) {
  for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Every thread of the block gets op over the block's v (in one fixed order, so all agree).
// red: kWarps words of shared memory. Call from all threads.
template <int kWarps, class T, class Op>
CA_DEVICE T block_reduce(T v, T* red, Op op) {
  v = warp_reduce(v, op);
  if (threadIdx.x % 32 == 0) sts(red + threadIdx.x / 32, v);
  __syncthreads();
  T r = lds(red);
  for (int w = 1; w < kWarps; ++w) r = op(r, lds(red + w));
  __syncthreads();
  return r;
}

// Exclusive prefix sum of v over the block in thread order; *total gets the sum.
template <int kWarps>
CA_DEVICE int block_exclusive_scan(int v, int* red, int* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int x = v;
  for (int off = 1; off < 32; off *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, x, off);
    if (lane >= off) x += y;
  }
  if (lane == 31) sts(red + warp, x);
  __syncthreads();
  int base = 0, sum = 0;
  for (int w = 0; w < kWarps; ++w) {
    const int t = lds(red + w);
    base += w < warp ? t : 0;
    sum += t;
  }
  __syncthreads();
  *total = sum;
  return base + x - v;
}

// The per-chunk state of one block: key_of(j) the chunk's int32 key, eligible(flags) whether it
// competes. Marks `out_bit` on the k eligible chunks of largest key, ties to the lower index:
// the largest T with count(key ≥ T) ≥ k by bisection, then key > T, then key == T in index
// order (cpu: mark_top_k in chunkattn/cpu/select.h).
template <int kThreads, class KeyOf, class Eligible>
CA_DEVICE void block_mark_top_k(int32_t* flags, int n, int k, int32_t out_bit, KeyOf key_of,
                                Eligible eligible, void* red_words) {
  constexpr int kWarps = kThreads / 32;
  int* red = static_cast<int*>(red_words);
  if (k <= 0) return;
  int count = 0;
  int32_t lo32 = INT32_MAX, hi32 = INT32_MIN;
  for (int j = threadIdx.x; j < n; j += kThreads)
    if (eligible(flags[j])) {
      ++count;
      const int32_t key = key_of(j);
      lo32 = key < lo32 ? key : lo32;
      hi32 = key > hi32 ? key : hi32;
    }
  count = block_reduce<kWarps>(count, red, SumOp{});
  if (count <= k) {
    for (int j = threadIdx.x; j < n; j += kThreads)
      if (eligible(flags[j])) flags[j] |= out_bit;
    return;
  }
  int64_t lo = block_reduce<kWarps>(lo32, red, MinOp{});
  int64_t hi = int64_t(block_reduce<kWarps>(hi32, red, MaxOp{})) + 1;
  while (hi - lo > 1) {
    const int64_t mid = bisect_mid(lo, hi);
    int c = 0;
    for (int j = threadIdx.x; j < n; j += kThreads) c += eligible(flags[j]) && key_of(j) >= mid;
    if (block_reduce<kWarps>(c, red, SumOp{}) >= k)
      lo = mid;
    else
      hi = mid;
  }
  // Ties at lo: those not yet marked, in index order (decided before any mark below).
  int above = 0;
  for (int j = threadIdx.x; j < n; j += kThreads) {
    const int32_t f = flags[j];
    const bool e = eligible(f);
    flags[j] = e && key_of(j) == lo && !(f & out_bit) ? f | kFlagTie : f;
    above += e && key_of(j) > lo;
  }
  int taken = block_reduce<kWarps>(above, red, SumOp{});
  for (int j = threadIdx.x; j < n; j += kThreads)
    if (eligible(flags[j]) && key_of(j) > lo) flags[j] |= out_bit;
  for (int base = 0; base < n && taken < k; base += kThreads) {
    const int j = base + int(threadIdx.x);
    const bool tie = j < n && (flags[j] & kFlagTie);
    int in_tile = 0;
    const int before = block_exclusive_scan<kWarps>(tie ? 1 : 0, red, &in_tile);
    if (tie && taken + before < k) flags[j] |= out_bit;
    taken += in_tile;
  }
  for (int j = threadIdx.x; j < n; j += kThreads) flags[j] &= ~(kFlagTie);
}

}  // namespace psa

// counts[i] = -1 for i < n (rows no request names keep -1).
template <int kThreads>
__global__ void __launch_bounds__(kThreads) psa_fill_counts_kernel(int32_t* counts, int32_t n) {
  const int i = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (i < n) stg<CA_TRAFFIC_OUT>(counts + i, int32_t(-1));
}

template <class Cfg>
__global__ void __launch_bounds__(SelectPlan<Cfg>::kThreads)
    psa_select_kernel(const DecodeView ctx, const DecodeTensors tensors, const SelectIo io) {
  using Plan = SelectPlan<Cfg>;
  using KvT = typename Cfg::KvT;
  using QT = typename Cfg::QT;
  constexpr int D = Cfg::kHeadDim, C = Cfg::kChunk, Hkv = Cfg::kKvHeads, Hq = Cfg::kQHeads,
                G = Plan::kGroup, T = Plan::kThreads, W = Plan::kWarps;
  extern __shared__ __align__(128) unsigned char smem[];
  float* qs = reinterpret_cast<float*>(smem);  // [G, D]
  float* red = qs + G * D;                     // [W]
  int* redi = reinterpret_cast<int*>(red);
  const psa::SelectArgs& a = io.args;
  const int tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int kvh = int(blockIdx.y);
  const int r = ctx.request_row(int(blockIdx.x));
  const int len = ctx.row_length(r);
  const int chunk_offset = ctx.row_chunk_offset(r);
  const int listed = ldg<CA_TRAFFIC_CONTEXT>(ctx.c.row_chunk_offsets() + r + 1) - chunk_offset;
  const int by_len = (len + C - 1) / C;
  const int n = by_len < listed ? by_len : listed;
  int32_t* list = io.lists + (size_t(r) * Hkv + kvh) * size_t(io.max_chunks);
  int32_t* count_out = io.counts + size_t(r) * Hkv + kvh;
  if (n <= 0 || psa::dense_row(a, len) || psa::selects_all(a, n)) {
    for (int j = tid; j < n; j += T) stg<CA_TRAFFIC_OUT>(list + j, int32_t(j));
    if (tid == 0) stg<CA_TRAFFIC_OUT>(count_out, int32_t(n > 0 ? n : 0));
    return;
  }
  const int32_t* slots = ctx.row_chunk_slots(r);
  float* ell = reinterpret_cast<float*>(io.scratch) +
               (size_t(blockIdx.x) * Hkv + kvh) * (G + 3) * size_t(io.max_chunks);
  float* bound = ell + size_t(G) * io.max_chunks;
  float* best = bound + io.max_chunks;
  int32_t* flags = reinterpret_cast<int32_t*>(best + io.max_chunks);
  const int tail = n - 1;
  const float ln_c = logf(float(C));

  // q of the group's heads, scaled.
  const QT* q = static_cast<const QT*>(tensors.q) + (size_t(ctx.row_io(r)) * Hq + kvh * G) * D;
  for (int e = tid; e < G * D; e += T)
    sts(qs + e, to_float(ldg<CA_TRAFFIC_Q>(q + e)) * tensors.softmax_scale);
  for (int j = tid; j < n; j += T) {
    flags[j] = psa::is_forced(j, n, a.recent_chunks) ? psa::kFlagForced | psa::kFlagSelected : 0;
    best[j] = -INFINITY;
  }
  __syncthreads();

  // Scores of the full chunks: warp per chunk, lanes over channels, the G heads at once.
  for (int j = warp; j < tail; j += W) {
    const KvT* m = static_cast<const KvT*>(io.meta) +
                   (size_t(ctx.chunk_slot(slots, j)) * Hkv + kvh) * CA_PSA_META_VECTORS * D;
    float dot[G], quad[G], box[G];
    for (int g = 0; g < G; ++g) dot[g] = quad[g] = box[g] = 0.f;
    for (int d = lane; d < D; d += 32) {
      const float mu = to_float(ldg<CA_TRAFFIC_KV>(m + d)),
                  var = to_float(ldg<CA_TRAFFIC_KV>(m + D + d)),
                  lo = to_float(ldg<CA_TRAFFIC_KV>(m + 2 * D + d)),
                  hi = to_float(ldg<CA_TRAFFIC_KV>(m + 3 * D + d));
      for (int g = 0; g < G; ++g) {
        const float qv = lds(qs + g * D + d);
        dot[g] += qv * mu;
        quad[g] += 0.5f * qv * qv * var;
        box[g] += fmaxf(qv * lo, qv * hi);
      }
    }
    float cap_max = -INFINITY;
    for (int g = 0; g < G; ++g) {
      const float b = psa::warp_reduce(box[g], psa::SumOp{});
      const float e = psa::log_mass(ln_c, psa::warp_reduce(dot[g], psa::SumOp{}),
                                    psa::warp_reduce(quad[g], psa::SumOp{}), b, a.use_box);
      const float cap = psa::quest_bound(ln_c, b, a.use_box);
      cap_max = cap > cap_max ? cap : cap_max;
      if (lane == 0) ell[size_t(g) * io.max_chunks + j] = e;
    }
    if (lane == 0) bound[j] = cap_max;
  }
  // The tail chunk (maybe partial, always read): its exact log-sum-exp, warp per head.
  {
    const int valid = psa::tail_tokens(len, n, C);
    const KvT* k = static_cast<const KvT*>(tensors.k_pool) +
                   (size_t(ctx.chunk_slot(slots, tail)) * Hkv + kvh) * C * D;
    for (int g = warp; g < G; g += W) {
      float mx = -INFINITY;
      for (int t = 0; t < valid; ++t) {
        float s = 0.f;
        for (int d = lane; d < D; d += 32)
          s += lds(qs + g * D + d) * to_float(ldg<CA_TRAFFIC_KV>(k + t * D + d));
        s = psa::warp_reduce(s, psa::SumOp{});
        mx = s > mx ? s : mx;
      }
      float sum = 0.f;
      for (int t = 0; t < valid; ++t) {
        float s = 0.f;
        for (int d = lane; d < D; d += 32)
          s += lds(qs + g * D + d) * to_float(ldg<CA_TRAFFIC_KV>(k + t * D + d));
        sum += expf(psa::warp_reduce(s, psa::SumOp{}) - mx);
      }
      if (lane == 0) ell[size_t(g) * io.max_chunks + tail] = valid > 0 ? mx + logf(sum) : -INFINITY;
    }
    if (tid == 0) bound[tail] = -INFINITY;
  }
  __syncthreads();

  // Per head: normalise, then bisect the threshold over the free chunks' keys.
  for (int g = 0; g < G; ++g) {
    const float* e = ell + size_t(g) * io.max_chunks;
    float mx = -INFINITY;
    for (int j = tid; j < n; j += T) mx = e[j] > mx ? e[j] : mx;
    mx = psa::block_reduce<W>(mx, red, psa::MaxOp{});
    float total = 0.f, covered = 0.f, free_mass = 0.f;
    int32_t lo32 = INT32_MAX, hi32 = INT32_MIN;
    int free_chunks = 0;
    for (int j = tid; j < n; j += T) {
      const float w = expf(e[j] - mx);
      total += w;
      if (flags[j] & psa::kFlagForced) {
        covered += w;
      } else {
        free_mass += w;
        ++free_chunks;
        const int32_t key = psa::order_key(e[j]);
        lo32 = key < lo32 ? key : lo32;
        hi32 = key > hi32 ? key : hi32;
      }
    }
    total = psa::block_reduce<W>(total, red, psa::SumOp{});
    covered = psa::block_reduce<W>(covered, red, psa::SumOp{});
    free_mass = psa::block_reduce<W>(free_mass, red, psa::SumOp{});
    free_chunks = psa::block_reduce<W>(free_chunks, redi, psa::SumOp{});
    const float log_total = mx + logf(total);
    for (int j = tid; j < n; j += T) {
      const float lp = e[j] - log_total;
      best[j] = lp > best[j] ? lp : best[j];
    }
    const float target = a.mass * total;
    if (covered >= target || free_chunks == 0) continue;
    if (covered + free_mass < target) {  // rounding: everything it can add
      for (int j = tid; j < n; j += T)
        if (!(flags[j] & psa::kFlagForced)) flags[j] |= psa::kFlagAdded;
      continue;
    }
    // coverage(lo) ≥ target > coverage(hi), coverage(τ) = covered + Σ_{free, key ≥ τ} w.
    int64_t lo = psa::block_reduce<W>(lo32, redi, psa::MinOp{});
    int64_t hi = int64_t(psa::block_reduce<W>(hi32, redi, psa::MaxOp{})) + 1;
    while (hi - lo > 1) {
      const int64_t mid = psa::bisect_mid(lo, hi);
      float ge = 0.f;
      for (int j = tid; j < n; j += T)
        if (!(flags[j] & psa::kFlagForced) && psa::order_key(e[j]) >= mid) ge += expf(e[j] - mx);
      ge = psa::block_reduce<W>(ge, red, psa::SumOp{});
      if (covered + ge >= target)
        lo = mid;
      else
        hi = mid;
    }
    for (int j = tid; j < n; j += T)
      if (!(flags[j] & psa::kFlagForced) && psa::order_key(e[j]) >= lo) flags[j] |= psa::kFlagAdded;
  }
  // The union over the group.
  int free_chunks = 0;
  for (int j = tid; j < n; j += T) {
    if (flags[j] & psa::kFlagAdded) flags[j] = (flags[j] | psa::kFlagSelected) & ~psa::kFlagAdded;
    free_chunks += !(flags[j] & psa::kFlagForced);
  }
  free_chunks = psa::block_reduce<W>(free_chunks, redi, psa::SumOp{});

  // Safety net: the top ⌈safety_net · free⌉ free chunks by Quest bound.
  const auto free_chunk = [](int32_t f) { return !(f & psa::kFlagForced); };
  if (const int k = psa::safety_count(a, free_chunks))
    psa::block_mark_top_k<T>(
        flags, n, k, psa::kFlagSelected, [&](int j) { return psa::order_key(bound[j]); },
        free_chunk, red);

  // Clamp to [k_min, k_max] by max-over-heads log π; forced chunks always stay.
  int count = 0, num_forced = 0;
  for (int j = tid; j < n; j += T) {
    count += (flags[j] & psa::kFlagSelected) != 0;
    num_forced += (flags[j] & psa::kFlagForced) != 0;
  }
  count = psa::block_reduce<W>(count, redi, psa::SumOp{});
  num_forced = psa::block_reduce<W>(num_forced, redi, psa::SumOp{});
  const auto best_key = [&](int j) { return psa::order_key(best[j]); };
  if (count < a.k_min) {
    psa::block_mark_top_k<T>(
        flags, n, a.k_min - count, psa::kFlagSelected, best_key,
        [](int32_t f) { return !(f & psa::kFlagSelected); }, red);
  } else if (count > a.k_max) {
    psa::block_mark_top_k<T>(
        flags, n, psa::clamp_keep(a, num_forced), psa::kFlagAdded, best_key,
        [](int32_t f) { return (f & psa::kFlagSelected) && !(f & psa::kFlagForced); }, red);
    for (int j = tid; j < n; j += T) {
      const int32_t f = flags[j];
      const bool keep = (f & psa::kFlagForced) || (f & psa::kFlagAdded);
      flags[j] = (f & psa::kFlagForced) | (keep ? psa::kFlagSelected : 0);
    }
  }

  // Compaction, in chunk order.
  int written = 0;
  for (int base = 0; base < n; base += T) {
    const int j = base + tid;
    const bool sel = j < n && (flags[j] & psa::kFlagSelected);
    int in_tile = 0;
    const int at = psa::block_exclusive_scan<W>(sel ? 1 : 0, redi, &in_tile);
    if (sel) stg<CA_TRAFFIC_OUT>(list + written + at, int32_t(j));
    written += in_tile;
  }
  if (tid == 0) stg<CA_TRAFFIC_OUT>(count_out, int32_t(written));
}

}  // namespace ca

#endif  // CHUNKATTN_SELECT_CUH_
