// test/cpu-kernels/fixtures.h — what the C++ test driver and the microbenchmark share: a
// configuration template, the plain variant, and a KernelContext held in std::vectors with the
// one place that packs it and points CaDecodeParams at it.
#pragma once
#include "chunkattn/abi.h"
#include "chunkattn/context.h"
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
  std::vector<int32_t> packed;  // filled by bind_context
};

// Packs the context (chunkattn/context.h; every row with row_io >= 0 requested, in row order) and
// points the context fields of `p` at it; the caller sets q/out/pools and the rest.
inline void bind_context(CaDecodeParams& p, Context& cx, int num_io_rows) {
  std::vector<int32_t> requests;
  for (size_t r = 0; r < cx.row_io.size(); ++r)
    if (cx.row_io[r] >= 0) requests.push_back(int32_t(r));
  const int32_t* sections[ca::ctx::kNumSections] = {
      cx.row_seq.data(),
      cx.row_length.data(),
      cx.row_chunk_offsets.data(),
      cx.row_chunk_slots.data(),
      cx.row_shared_chunks.data(),
      cx.row_partial_offsets.data(),
      cx.row_partials.data(),
      reinterpret_cast<const int32_t*>(cx.runs.data()),
      cx.run_slots.data(),
      cx.row_io.data(),
      requests.data()};
  const int32_t counts[ca::ctx::kNumSections] = {int32_t(cx.row_seq.size()),
                                                 int32_t(cx.row_length.size()),
                                                 int32_t(cx.row_chunk_offsets.size()),
                                                 int32_t(cx.row_chunk_slots.size()),
                                                 int32_t(cx.row_shared_chunks.size()),
                                                 int32_t(cx.row_partial_offsets.size()),
                                                 int32_t(cx.row_partials.size()),
                                                 int32_t(cx.runs.size() * ca::ctx::kRunFields),
                                                 int32_t(cx.run_slots.size()),
                                                 int32_t(cx.row_io.size()),
                                                 int32_t(requests.size())};
  ca::ctx::pack(cx.packed, int32_t(cx.row_length.size()), int32_t(cx.runs.size()), cx.num_partials,
                int32_t(requests.size()), num_io_rows, sections, counts);
  p.abi_version = CA_ABI_VERSION;
  p.struct_bytes = sizeof(CaDecodeParams);
  p.context = cx.packed.data();
  p.context_host = cx.packed.data();
  p.context_words = cx.packed.size();
}
