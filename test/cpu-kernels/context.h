// test/cpu-kernels/context.h — a KernelContext held in std::vectors, as the C++ test and the
// microbenchmark build it, and the one place that points CaDecodeParams at it.
#pragma once
#include "chunkattn/abi.h"

#include <stdint.h>

#include <vector>

struct Context {
  std::vector<int32_t> row_io, row_seq, row_length, row_chunk_offsets, row_chunk_slots,
      row_shared_chunks, row_partial_offsets, row_partials, run_slots;
  std::vector<CaSharedRun> runs;
  int num_partials = 0;
};

// Fills the ABI header and every context field of `p`; the caller sets q/out/pools and the rest.
inline void bind_context(CaDecodeParams& p, const Context& cx) {
  p.abi_version = CA_ABI_VERSION;
  p.struct_bytes = sizeof(CaDecodeParams);
  p.num_rows = int(cx.row_length.size());
  p.row_io = cx.row_io.data();
  p.row_seq = cx.row_seq.data();
  p.row_length = cx.row_length.data();
  p.row_chunk_offsets = cx.row_chunk_offsets.data();
  p.row_chunk_slots = cx.row_chunk_slots.data();
  p.row_shared_chunks = cx.row_shared_chunks.data();
  p.row_partial_offsets = cx.row_partial_offsets.data();
  p.row_partials = cx.row_partials.data();
  p.num_runs = int(cx.runs.size());
  p.runs = cx.runs.data();
  p.run_slots = cx.run_slots.data();
  p.num_partials = cx.num_partials;
}
