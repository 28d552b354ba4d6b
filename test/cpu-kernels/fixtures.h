// test/cpu-kernels/fixtures.h — what the C++ test driver and the microbenchmark share: a
// configuration template, the plain variant, and a KernelContext held in std::vectors with the
// one place that points CaDecodeParams at it.
#pragma once
#include "chunkattn/abi.h"
#include "chunkattn/variant.h"

#include <stdint.h>

#include <vector>

template <int Hq, int Hkv, int D, int C, class Q, class KV, class O>
struct CfgT {
  static constexpr int kQHeads = Hq, kKvHeads = Hkv, kHeadDim = D, kChunk = C;
  using QT = Q;
  using KvT = KV;
  using OutT = O;
};

// No score mod, no mask; ref_* are the float64 reference's versions.
struct Plain {
  static constexpr bool kHasScoreMod = false, kHasMask = false;
  CA_HD static float score_mod(float score, const ca::Pos&, const float*) { return score; }
  CA_HD static bool mask(const ca::Pos&, const float*) { return true; }
  static constexpr int kNumParams = 0;
  static double ref_score(double s, const ca::Pos&, const double*) { return s; }
  static bool ref_mask(const ca::Pos&, const double*) { return true; }
  static const char* name() { return "plain"; }
};

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
