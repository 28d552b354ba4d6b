// chunkattn/decode_view.cuh — the one place the phase-2 kernels read the kernel context from.
//
// A thin adapter over the packed context (chunkattn/context.h, ca::KernelContext): kernels call
// its accessors, every read goes through ldg counted as CA_TRAFFIC_CONTEXT. DecodeTensors holds
// one layer's tensors.
#ifndef CHUNKATTN_DECODE_VIEW_CUH_
#define CHUNKATTN_DECODE_VIEW_CUH_

#include "chunkattn/abi.h"
#include "chunkattn/context.h"
#include "chunkattn/prims.cuh"

namespace ca {

struct DecodeView {
  KernelContext c;  // device words

  static DecodeView from(const CaDecodeParams& p) { return DecodeView{KernelContext{p.context}}; }

  // DFS row of request i (phase 2 walks the requested rows only).
  CA_DEVICE int request_row(int i) const { return ldg<CA_TRAFFIC_CONTEXT>(c.request_rows() + i); }
  // io row of q/out that DFS row r reads and writes.
  CA_DEVICE int row_io(int r) const { return ldg<CA_TRAFFIC_CONTEXT>(c.row_ios() + r); }
  // Sequence handle of row r (pos.seq).
  CA_DEVICE int row_seq(int r) const { return ldg<CA_TRAFFIC_CONTEXT>(c.row_seqs() + r); }
  // Visible KV tokens of row r, the current token included.
  CA_DEVICE int row_length(int r) const { return ldg<CA_TRAFFIC_CONTEXT>(c.row_lengths() + r); }
  // Leading chunks of row r covered by shared runs (phase 1 attends to them).
  CA_DEVICE int row_shared_chunks(int r) const {
    return ldg<CA_TRAFFIC_CONTEXT>(c.row_shared_chunk_counts() + r);
  }
  // Row r's chunk slots, in token order (index with token / C).
  CA_DEVICE const int32_t* row_chunk_slots(int r) const {
    return c.chunk_slots() + ldg<CA_TRAFFIC_CONTEXT>(c.row_chunk_offsets() + r);
  }
  // Offset of row r's chunk slots in c.chunk_slots().
  CA_DEVICE int row_chunk_offset(int r) const {
    return ldg<CA_TRAFFIC_CONTEXT>(c.row_chunk_offsets() + r);
  }
  CA_DEVICE int chunk_slot(const int32_t* slots, int chunk) const {
    return ldg<CA_TRAFFIC_CONTEXT>(slots + chunk);
  }
  // Phase-1 partials merged into row r: indices row_partial(k) for k in [begin, end).
  CA_DEVICE int row_partials_begin(int r) const {
    return ldg<CA_TRAFFIC_CONTEXT>(c.row_partial_offsets() + r);
  }
  CA_DEVICE int row_partials_end(int r) const {
    return ldg<CA_TRAFFIC_CONTEXT>(c.row_partial_offsets() + r + 1);
  }
  CA_DEVICE int row_partial(int k) const { return ldg<CA_TRAFFIC_CONTEXT>(c.partials() + k); }

  // Shared runs (phase 1).
  CA_DEVICE int num_runs() const { return ldg<CA_TRAFFIC_CONTEXT>(c.words + ctx::kWordNumRuns); }
  CA_DEVICE int run_field(int i, int32_t CaSharedRun::*field) const {
    return ldg<CA_TRAFFIC_CONTEXT>(&(c.runs()[i].*field));
  }
  CA_DEVICE CaSharedRun run(int i) const {
    CaSharedRun r;
    r.chunk_begin = run_field(i, &CaSharedRun::chunk_begin);
    r.num_chunks = run_field(i, &CaSharedRun::num_chunks);
    r.kv_begin = run_field(i, &CaSharedRun::kv_begin);
    r.row_begin = run_field(i, &CaSharedRun::row_begin);
    r.row_end = run_field(i, &CaSharedRun::row_end);
    r.partial_begin = run_field(i, &CaSharedRun::partial_begin);
    return r;
  }
  // Chunk slots of all runs, run after run (index with chunk_begin + chunk).
  CA_DEVICE const int32_t* run_slots() const { return c.run_slots(); }
};

// One layer's tensors and the scalars of a decode call (abi.h describes their shapes).
struct DecodeTensors {
  const void* q;
  void* out;
  const void* k_pool;
  const void* v_pool;
  const float* params;
  float softmax_scale;

  static DecodeTensors from(const CaDecodeParams& p) {
    return DecodeTensors{p.q, p.out, p.k_pool, p.v_pool, p.params, p.softmax_scale};
  }
};

}  // namespace ca

#endif  // CHUNKATTN_DECODE_VIEW_CUH_
