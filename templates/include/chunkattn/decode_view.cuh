// chunkattn/decode_view.cuh — the one place kernels read the kernel context from.
//
// The launcher builds a DecodeView from CaDecodeParams (abi.h) on the host and passes it by value;
// kernels call its accessors and never touch CaDecodeParams' context fields themselves, so a
// change of the context's layout (e.g. one packed buffer) changes this header only. Every read
// goes through ldg, counted as CA_TRAFFIC_CONTEXT. DecodeTensors holds one layer's tensors.
#ifndef CHUNKATTN_DECODE_VIEW_CUH_
#define CHUNKATTN_DECODE_VIEW_CUH_

#include "chunkattn/abi.h"
#include "chunkattn/prims.cuh"

namespace ca {

struct DecodeView {
  int num_rows;
  int num_runs;
  int num_partials;
  const int32_t* row_io_;
  const int32_t* row_seq_;
  const int32_t* row_length_;
  const int32_t* row_chunk_offsets_;
  const int32_t* row_chunk_slots_;
  const int32_t* row_shared_chunks_;
  const int32_t* row_partial_offsets_;
  const int32_t* row_partials_;
  const CaSharedRun* runs_;
  const int32_t* run_slots_;

  static DecodeView from(const CaDecodeParams& p) {
    return DecodeView{p.num_rows,          p.num_runs,
                      p.num_partials,      p.row_io,
                      p.row_seq,           p.row_length,
                      p.row_chunk_offsets, p.row_chunk_slots,
                      p.row_shared_chunks, p.row_partial_offsets,
                      p.row_partials,      p.runs,
                      p.run_slots};
  }

  // io row of q/out that DFS row r reads and writes.
  CA_DEVICE int row_io(int r) const { return ldg<CA_TRAFFIC_CONTEXT>(row_io_ + r); }
  // Sequence handle of row r (pos.seq).
  CA_DEVICE int row_seq(int r) const { return ldg<CA_TRAFFIC_CONTEXT>(row_seq_ + r); }
  // Visible KV tokens of row r, the current token included.
  CA_DEVICE int row_length(int r) const { return ldg<CA_TRAFFIC_CONTEXT>(row_length_ + r); }
  // Leading chunks of row r covered by shared runs (phase 1 attends to them).
  CA_DEVICE int row_shared_chunks(int r) const {
    return ldg<CA_TRAFFIC_CONTEXT>(row_shared_chunks_ + r);
  }
  // Row r's chunk slots, in token order (index with token / C).
  CA_DEVICE const int32_t* row_chunk_slots(int r) const {
    return row_chunk_slots_ + ldg<CA_TRAFFIC_CONTEXT>(row_chunk_offsets_ + r);
  }
  CA_DEVICE int chunk_slot(const int32_t* slots, int chunk) const {
    return ldg<CA_TRAFFIC_CONTEXT>(slots + chunk);
  }
  // Phase-1 partials merged into row r: indices row_partial(k) for k in [begin, end).
  CA_DEVICE int row_partials_begin(int r) const {
    return ldg<CA_TRAFFIC_CONTEXT>(row_partial_offsets_ + r);
  }
  CA_DEVICE int row_partials_end(int r) const {
    return ldg<CA_TRAFFIC_CONTEXT>(row_partial_offsets_ + r + 1);
  }
  CA_DEVICE int row_partial(int k) const { return ldg<CA_TRAFFIC_CONTEXT>(row_partials_ + k); }
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
