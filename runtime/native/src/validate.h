// validate.h — checks a decode kernel context (CaDecodeParams' arrays) before any kernel reads it.
//
// Pure C++ over int32 spans: no N-API, no module calls. Every index a kernel could follow is
// proven in range, and the context is proven self-consistent, so a module only ever sees
// contexts the prefix-tree runtime could have built. Messages use the JS field names of
// runtime/native-module.ts (rowIo, rowChunkSlots, runs[j].kvBegin, ...).
//
// What a valid context is (C = chunk size, n_r = chunks of row r):
//   rows      rowLength, rowSeq, rowSharedChunks, rowIo: numRows each; the two CSR offset arrays
//             numRows + 1, starting at 0, non-decreasing, ending at their data array's length.
//   rowIo     in [0, numIoRows), injective.
//   rowSeq    >= 0.
//   lengths   n_r == 0 and length 0, or (n_r - 1)·C < length <= n_r·C.
//   slots     rowChunkSlots and runSlots in [0, numSlots).
//   shared    0 <= rowSharedChunks[r] <= n_r. (Run chunks need not be full: a chunk-first
//             context puts a row's partial tail into a one-row run; kernels mask by length.)
//   runs      runs.length = 6·numRuns: {chunkBegin, numChunks, kvBegin, rowBegin, rowEnd,
//             partialBegin}; numChunks >= 1, chunkBegin + numChunks <= runSlots.length,
//             kvBegin >= 0 and a multiple of C, 0 <= rowBegin < rowEnd <= numRows,
//             partialBegin >= 0, partialBegin + (rowEnd - rowBegin) <= numPartials.
//             A module without a phase-1 kernel accepts no runs.
//   partials  the runs' partial ranges are disjoint and cover [0, numPartials) exactly.
//   tiling    for every row r, the runs containing r cover its chunks [0, shared_r) exactly
//             once (a run covers [kvBegin/C, kvBegin/C + numChunks)), with the same slots as
//             rowChunkSlots; and rowPartials of r lists exactly the partials those runs give r
//             (partialBegin + r - rowBegin), each once, all in [0, numPartials).
#ifndef CHUNKATTN_NATIVE_VALIDATE_H_
#define CHUNKATTN_NATIVE_VALIDATE_H_

#include <cstddef>
#include <cstdint>

namespace chunkattn {

struct Int32Span {
  const int32_t* data = nullptr;
  size_t size = 0;
  int32_t operator[](size_t i) const { return data[i]; }
};

struct ContextView {
  Int32Span row_io;
  Int32Span row_seq;
  Int32Span row_length;
  Int32Span row_chunk_offsets;
  Int32Span row_chunk_slots;
  Int32Span row_shared_chunks;
  Int32Span row_partial_offsets;
  Int32Span row_partials;
  Int32Span runs;  // 6 int32 per CaSharedRun
  Int32Span run_slots;
  int64_t num_partials = 0;
};

struct ContextLimits {
  int32_t num_io_rows = 0;
  int32_t num_slots = 0;
  int32_t chunk_size = 1;
  bool phase1 = false;
};

inline constexpr size_t kRunFields = 6;

// Throws Failure (ERR_CA_SHAPE, ERR_CA_RANGE, ERR_CA_CONTEXT or ERR_CA_UNSUPPORTED) on the first
// problem found.
void ValidateContext(const ContextView& ctx, const ContextLimits& limits);

}  // namespace chunkattn

#endif  // CHUNKATTN_NATIVE_VALIDATE_H_
