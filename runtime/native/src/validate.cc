#include "validate.h"

#include <algorithm>
#include <string>
#include <vector>

#include "failure.h"

namespace chunkattn {

namespace {

std::string At(const char* name, size_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

std::string RunField(size_t run, const char* field) {
  return "runs[" + std::to_string(run) + "]." + field;
}

void ExpectLength(const char* name, const Int32Span& span, size_t expected, const char* why) {
  if (span.size != expected)
    Fail(code::kShape, std::string(name) + " has " + std::to_string(span.size) +
                           " elements, expected " + std::to_string(expected) + " (" + why + ")");
}

// CSR offsets: numRows + 1 entries, offsets[0] == 0, non-decreasing, last == data.size.
void CheckOffsets(const char* name, const Int32Span& offsets, const char* data_name,
                  const Int32Span& data) {
  if (offsets[0] != 0)
    Fail(code::kContext, std::string(name) + "[0] = " + std::to_string(offsets[0]) + ", must be 0");
  for (size_t r = 1; r < offsets.size; ++r)
    if (offsets[r] < offsets[r - 1])
      Fail(code::kContext, At(name, r) + " = " + std::to_string(offsets[r]) + " is less than " +
                               At(name, r - 1) + " = " + std::to_string(offsets[r - 1]) +
                               ": offsets must not decrease");
  size_t last = size_t(offsets[offsets.size - 1]);
  if (last != data.size)
    Fail(code::kShape, std::string(data_name) + " has " + std::to_string(data.size) +
                           " elements but " + At(name, offsets.size - 1) + " = " +
                           std::to_string(last));
}

}  // namespace

void ValidateContext(const ContextView& ctx, const ContextLimits& limits) {
  const int64_t chunk = limits.chunk_size;
  const size_t num_rows = ctx.row_length.size;

  // Shapes.
  ExpectLength("rowIo", ctx.row_io, num_rows, "one per row, numRows = rowLength.length");
  ExpectLength("rowSeq", ctx.row_seq, num_rows, "one per row, numRows = rowLength.length");
  ExpectLength("rowSharedChunks", ctx.row_shared_chunks, num_rows,
               "one per row, numRows = rowLength.length");
  ExpectLength("rowChunkOffsets", ctx.row_chunk_offsets, num_rows + 1, "numRows + 1");
  ExpectLength("rowPartialOffsets", ctx.row_partial_offsets, num_rows + 1, "numRows + 1");
  if (ctx.runs.size % kRunFields != 0)
    Fail(code::kShape, "runs has " + std::to_string(ctx.runs.size) +
                           " elements, expected a multiple of 6 (chunkBegin, numChunks, kvBegin, "
                           "rowBegin, rowEnd, partialBegin per run)");
  const size_t num_runs = ctx.runs.size / kRunFields;
  if (num_rows > size_t(limits.num_io_rows))
    Fail(code::kRange, "numRows = " + std::to_string(num_rows) +
                           " exceeds numIoRows = " + std::to_string(limits.num_io_rows));
  if (ctx.num_partials < 0 || ctx.num_partials > INT32_MAX)
    Fail(code::kRange, "numPartials = " + std::to_string(ctx.num_partials) + " is out of range");
  CheckOffsets("rowChunkOffsets", ctx.row_chunk_offsets, "rowChunkSlots", ctx.row_chunk_slots);
  CheckOffsets("rowPartialOffsets", ctx.row_partial_offsets, "rowPartials", ctx.row_partials);

  // Per-row values.
  std::vector<uint8_t> io_used(size_t(limits.num_io_rows), 0);
  for (size_t r = 0; r < num_rows; ++r) {
    int32_t io = ctx.row_io[r];
    if (io < 0 || io >= limits.num_io_rows)
      Fail(code::kRange,
           At("rowIo", r) + " = " + std::to_string(io) +
               " is out of range [0, numIoRows = " + std::to_string(limits.num_io_rows) + ")");
    if (io_used[size_t(io)])
      Fail(code::kContext, At("rowIo", r) + " = " + std::to_string(io) +
                               " repeats an earlier row's io row: rowIo must be injective");
    io_used[size_t(io)] = 1;
    if (ctx.row_seq[r] < 0)
      Fail(code::kRange, At("rowSeq", r) + " = " + std::to_string(ctx.row_seq[r]) + " is negative");
    int64_t length = ctx.row_length[r];
    int64_t chunks = int64_t(ctx.row_chunk_offsets[r + 1]) - ctx.row_chunk_offsets[r];
    if (length < 0)
      Fail(code::kRange, At("rowLength", r) + " = " + std::to_string(length) + " is negative");
    bool consistent =
        chunks == 0 ? length == 0 : (chunks - 1) * chunk < length && length <= chunks * chunk;
    if (!consistent)
      Fail(code::kContext,
           At("rowLength", r) + " = " + std::to_string(length) + " does not fit the row's " +
               std::to_string(chunks) + " chunk(s) of " + std::to_string(chunk) +
               " tokens: need (chunks - 1)·C < length <= chunks·C, or 0 with 0 chunks");
    int64_t shared = ctx.row_shared_chunks[r];
    if (shared < 0 || shared > chunks)
      Fail(code::kRange, At("rowSharedChunks", r) + " = " + std::to_string(shared) +
                             " is out of range [0, " + std::to_string(chunks) +
                             "] (the row's chunks)");
  }
  // Every index into the pool or the partials is within its array.
  auto check_indices = [](const char* name, const auto& indices, int64_t limit,
                          const char* limit_name) {
    for (size_t i = 0; i < indices.size; ++i)
      if (indices[i] < 0 || indices[i] >= limit)
        Fail(code::kRange, At(name, i) + " = " + std::to_string(indices[i]) +
                               " is out of range [0, " + limit_name + " = " +
                               std::to_string(limit) + ")");
  };
  check_indices("rowChunkSlots", ctx.row_chunk_slots, limits.num_slots, "numSlots");
  check_indices("runSlots", ctx.run_slots, limits.num_slots, "numSlots");
  check_indices("rowPartials", ctx.row_partials, ctx.num_partials, "numPartials");

  // Runs.
  if (num_runs > 0 && !limits.phase1)
    Fail(code::kUnsupported,
         "this module has no phase-1 kernel (partition without shared runs): runs must "
         "be empty, got " +
             std::to_string(num_runs) + " run(s)");
  struct Interval {
    int64_t begin, end;
    size_t run;
  };
  std::vector<Interval> partial_ranges;
  partial_ranges.reserve(num_runs);
  for (size_t j = 0; j < num_runs; ++j) {
    const int32_t* run = ctx.runs.data + j * kRunFields;
    int64_t chunk_begin = run[0], num_chunks = run[1], kv_begin = run[2];
    int64_t row_begin = run[3], row_end = run[4], partial_begin = run[5];
    if (num_chunks < 1)
      Fail(code::kRange,
           RunField(j, "numChunks") + " = " + std::to_string(num_chunks) + ", must be >= 1");
    if (chunk_begin < 0 || chunk_begin + num_chunks > int64_t(ctx.run_slots.size))
      Fail(code::kRange, RunField(j, "chunkBegin") + " = " + std::to_string(chunk_begin) +
                             " with numChunks = " + std::to_string(num_chunks) +
                             " is outside runSlots (" + std::to_string(ctx.run_slots.size) +
                             " elements)");
    if (kv_begin < 0 || kv_begin % chunk != 0)
      Fail(code::kRange, RunField(j, "kvBegin") + " = " + std::to_string(kv_begin) +
                             " must be >= 0 and a multiple of the chunk size " +
                             std::to_string(chunk));
    if (row_begin < 0 || row_begin >= row_end || row_end > int64_t(num_rows))
      Fail(code::kRange, "runs[" + std::to_string(j) + "] rows [" + std::to_string(row_begin) +
                             ", " + std::to_string(row_end) +
                             ") must be a non-empty range within [0, numRows = " +
                             std::to_string(num_rows) + ")");
    if (partial_begin < 0 || partial_begin + (row_end - row_begin) > ctx.num_partials)
      Fail(code::kRange,
           RunField(j, "partialBegin") + " = " + std::to_string(partial_begin) + " with " +
               std::to_string(row_end - row_begin) +
               " row(s) is outside [0, numPartials = " + std::to_string(ctx.num_partials) + ")");
    partial_ranges.push_back({partial_begin, partial_begin + (row_end - row_begin), j});
  }
  std::sort(partial_ranges.begin(), partial_ranges.end(),
            [](const Interval& a, const Interval& b) { return a.begin < b.begin; });
  int64_t covered = 0;
  for (size_t i = 0; i < partial_ranges.size(); ++i) {
    if (i > 0 && partial_ranges[i].begin < partial_ranges[i - 1].end)
      Fail(code::kContext,
           "runs[" + std::to_string(partial_ranges[i - 1].run) + "] and runs[" +
               std::to_string(partial_ranges[i].run) +
               "] write overlapping partials: each partial belongs to one (run, row)");
    covered += partial_ranges[i].end - partial_ranges[i].begin;
  }
  if (covered != ctx.num_partials)
    Fail(code::kContext, "numPartials = " + std::to_string(ctx.num_partials) +
                             " but the runs produce " + std::to_string(covered) +
                             " partial(s): numPartials must equal the rows summed over runs");

  // Tiling: every row's shared chunks covered exactly once by its runs, with matching slots.
  std::vector<uint8_t> chunk_covered(ctx.row_chunk_slots.size, 0);
  std::vector<int32_t> runs_per_row(num_rows, 0);
  for (size_t j = 0; j < num_runs; ++j) {
    const int32_t* run = ctx.runs.data + j * kRunFields;
    const int64_t first = run[2] / chunk, num_chunks = run[1];
    for (int64_t r = run[3]; r < run[4]; ++r) {
      const int64_t shared = ctx.row_shared_chunks[size_t(r)];
      if (first + num_chunks > shared)
        Fail(code::kContext, "runs[" + std::to_string(j) + "] covers chunks [" +
                                 std::to_string(first) + ", " + std::to_string(first + num_chunks) +
                                 ") of row " + std::to_string(r) + ", which has only " +
                                 std::to_string(shared) + " shared chunk(s)");
      const size_t base = size_t(ctx.row_chunk_offsets[size_t(r)]);
      for (int64_t c = 0; c < num_chunks; ++c) {
        const size_t index = base + size_t(first + c);
        if (chunk_covered[index])
          Fail(code::kContext, "chunk " + std::to_string(first + c) + " of row " +
                                   std::to_string(r) + " is covered by more than one run");
        chunk_covered[index] = 1;
        const int32_t run_slot = ctx.run_slots[size_t(run[0] + c)];
        if (run_slot != ctx.row_chunk_slots[index])
          Fail(code::kContext, "runs[" + std::to_string(j) + "] chunk " + std::to_string(c) +
                                   " is slot " + std::to_string(run_slot) + " but row " +
                                   std::to_string(r) + "'s chunk " + std::to_string(first + c) +
                                   " is slot " + std::to_string(ctx.row_chunk_slots[index]));
      }
      ++runs_per_row[size_t(r)];
    }
  }
  std::vector<int64_t> seen_by_row(num_runs, -1);
  for (size_t r = 0; r < num_rows; ++r) {
    const size_t base = size_t(ctx.row_chunk_offsets[r]);
    for (int32_t c = 0; c < ctx.row_shared_chunks[r]; ++c)
      if (!chunk_covered[base + size_t(c)])
        Fail(code::kContext, "chunk " + std::to_string(c) + " of row " + std::to_string(r) +
                                 " is counted in rowSharedChunks but no run covers it");
    const size_t begin = size_t(ctx.row_partial_offsets[r]),
                 end = size_t(ctx.row_partial_offsets[r + 1]);
    if (int64_t(end - begin) != runs_per_row[r])
      Fail(code::kContext, "row " + std::to_string(r) + " lists " + std::to_string(end - begin) +
                               " partial(s) in rowPartials but is shared by " +
                               std::to_string(runs_per_row[r]) + " run(s)");
    for (size_t i = begin; i < end; ++i) {
      const int64_t partial = ctx.row_partials[i];
      // The run whose partial range holds `partial` (ranges are sorted and disjoint).
      auto it = std::upper_bound(partial_ranges.begin(), partial_ranges.end(), partial,
                                 [](int64_t p, const Interval& range) { return p < range.begin; });
      bool owned = false;
      if (it != partial_ranges.begin()) {
        const Interval& range = *(it - 1);
        const int32_t* run = ctx.runs.data + range.run * kRunFields;
        if (partial < range.end && partial - range.begin == int64_t(r) - run[3]) {
          owned = true;
          if (seen_by_row[range.run] == int64_t(r))
            Fail(code::kContext, At("rowPartials", i) + " = " + std::to_string(partial) +
                                     " is listed twice for row " + std::to_string(r));
          seen_by_row[range.run] = int64_t(r);
        }
      }
      if (!owned)
        Fail(code::kContext, At("rowPartials", i) + " = " + std::to_string(partial) +
                                 " is not a partial of row " + std::to_string(r) +
                                 " (partialBegin + row - rowBegin of a run containing the row)");
    }
  }
}

}  // namespace chunkattn
