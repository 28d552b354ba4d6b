// chunkattn/chunk_select_kernels.cuh — from the select's lists to what the list-driven two-phase
// kernels read (cuda/emu; chunk_select_mask.cuh names the tensors):
//
//   psa_row_select_kernel   grid (num_rows, Hkv), kRowSelectThreads threads
//       row_sel[r, kvh, :] = 1 on the row's listed chunks, 0 elsewhere (rows no request names:
//       all 0); private_begin[r, kvh] = the first list entry ≥ the row's shared chunks.
//   psa_tile_select_kernel  grid (phase1_items, Hkv), kRowSelectThreads threads
//       tile_sel[x, kvh, i] = OR over the sharers of phase-1 item x (its m-tile of the run) of
//       row_sel[sharer, kvh, run's first chunk + i].
// Fixed shapes from the context's scalars; launched after the select, before the decode, on the
// same stream (no host synchronisation).
#ifndef CHUNKATTN_CHUNK_SELECT_KERNELS_CUH_
#define CHUNKATTN_CHUNK_SELECT_KERNELS_CUH_

#include <stdint.h>

#include "chunkattn/chunk_select_mask.cuh"
#include "chunkattn/decode_phase1.cuh"
#include "chunkattn/decode_view.cuh"
#include "chunkattn/prims.cuh"

namespace ca {

inline constexpr int kRowSelectThreads = 128;

// The scratch of the list-driven decode after the select's (psa_abi.h ca_psa_decode_scratch_bytes).
struct ChunkSelectScratch {
  uint8_t* row_sel;
  int32_t* private_begin;
  uint8_t* tile_sel;
};

template <class Cfg>
__global__ void __launch_bounds__(kRowSelectThreads)
    psa_row_select_kernel(const DecodeView ctx, const ChunkSelection sel, ChunkSelectScratch out) {
  constexpr int Hkv = Cfg::kKvHeads;
  const int r = int(blockIdx.x), kvh = int(blockIdx.y), tid = int(threadIdx.x);
  const size_t at = size_t(r) * Hkv + kvh;
  uint8_t* mask = out.row_sel + at * size_t(sel.max_chunks);
  for (int j = tid; j < sel.max_chunks; j += kRowSelectThreads)
    stg<CA_TRAFFIC_CONTEXT>(mask + j, uint8_t(0));
  __syncthreads();  // the thread that clears a byte may not be the one that sets it
  const int count = max(ldg<CA_TRAFFIC_CONTEXT>(sel.counts + at), 0);
  const int shared = ctx.row_shared_chunks(r);
  const int32_t* list = sel.lists + at * size_t(sel.max_chunks);
  for (int i = tid; i < count; i += kRowSelectThreads) {
    const int j = ldg<CA_TRAFFIC_CONTEXT>(list + i);
    stg<CA_TRAFFIC_CONTEXT>(mask + j, uint8_t(1));
    // The list ascends: exactly one entry (or none) is the first at or past `shared`.
    if (j >= shared && (i == 0 || ldg<CA_TRAFFIC_CONTEXT>(list + i - 1) < shared))
      stg<CA_TRAFFIC_CONTEXT>(out.private_begin + at, int32_t(i));
  }
  if (tid == 0 && (count == 0 || ldg<CA_TRAFFIC_CONTEXT>(list + count - 1) < shared))
    stg<CA_TRAFFIC_CONTEXT>(out.private_begin + at, int32_t(count));
}

template <class Cfg>
__global__ void __launch_bounds__(kRowSelectThreads)
    psa_tile_select_kernel(const DecodeView ctx, const ChunkSelection sel, ChunkSelectScratch out) {
  using Pl = Phase1Plan<Cfg>;
  constexpr int Hkv = Cfg::kKvHeads, G = Pl::G, C = Pl::C;
  const int64_t x = blockIdx.x;
  const int kvh = int(blockIdx.y), tid = int(threadIdx.x);
  // The item's run: the last whose first item is <= x (as decode_phase1_kernel finds it).
  int lo = 0, hi = ctx.num_runs();
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (phase1_item_begin<Cfg>(mid, ctx.run_field(mid, &CaSharedRun::partial_begin)) <= x)
      lo = mid;
    else
      hi = mid;
  }
  const CaSharedRun run = ctx.run(lo);
  const int64_t m0 = (x - phase1_item_begin<Cfg>(lo, run.partial_begin)) * Pl::kMT;
  const int m_total = (run.row_end - run.row_begin) * G;
  if (m0 >= m_total) return;  // the spare item of a run: phase 1 skips it too
  const int mcount = m_total - int(m0) < Pl::kMT ? m_total - int(m0) : Pl::kMT;
  const int r_begin = run.row_begin + int(m0) / G;
  const int r_end = run.row_begin + (int(m0) + mcount - 1) / G + 1;
  const int first = run.kv_begin / C;
  uint8_t* tile = out.tile_sel + (size_t(x) * Hkv + kvh) * size_t(sel.max_chunks);
  for (int i = tid; i < run.num_chunks; i += kRowSelectThreads) {
    uint8_t any = 0;
    for (int r = r_begin; r < r_end && !any; ++r)
      any = ldg<CA_TRAFFIC_CONTEXT>(out.row_sel + (size_t(r) * Hkv + kvh) * size_t(sel.max_chunks) +
                                    first + i);
    stg<CA_TRAFFIC_CONTEXT>(tile + i, any);
  }
}

}  // namespace ca

#endif  // CHUNKATTN_CHUNK_SELECT_KERNELS_CUH_
