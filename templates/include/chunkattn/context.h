// chunkattn/context.h — the packed kernel context: its layout, typed accessors, and the one
// validator. Built by runtime/kernel-context.ts (packContext), checked by the addon, read by every
// target (cpu, emu, cuda) through ca::KernelContext. A new field touches this header, the TS
// builder and their tests, nothing else.
//
// One Int32Array / int32_t[total_words]: a fixed header, then sections. Word offsets:
//
//   header   [0] kMagic  [1] kLayout  [2] total_words
//            [3] num_rows  [4] num_runs  [5] num_partials  [6] num_requests  [7] num_io_rows
//            [8 + 2s] offset of section s (words from the start), [9 + 2s] its element count
//   sections, each starting at its offset (offsets ascend; a section is count int32 words):
//     kRowSeq             [num_rows]       sequence handle of each DFS row (pos.seq)
//     kRowLength          [num_rows]       visible KV tokens, current token included
//     kRowChunkOffsets    [num_rows + 1]   CSR into kRowChunkSlots
//     kRowChunkSlots      [Σ chunks]       every chunk of a row in token order (shared first)
//     kRowSharedChunks    [num_rows]       leading chunks of the row covered by runs
//     kRowPartialOffsets  [num_rows + 1]   CSR into kRowPartials
//     kRowPartials        [Σ partials]     partial indices phase 2 merges into the row
//     kRuns               [num_runs * 6]   CaSharedRun {chunk_begin, num_chunks, kv_begin,
//                                          row_begin, row_end, partial_begin}
//     kRunSlots           [Σ run chunks]   chunk slots of all runs, run after run
//     kRowIo              [num_rows]       io row (index into q/out) of each row; -1: not requested
//     kRequestRow         [num_requests]   the requested rows (row_io >= 0), the list phase 2 walks
//     kSeqRowOffsets      [groups + 1]     query rows per sequence: a CSR of row groups, or empty
//                                          (0 elements) for one row per sequence (decode)
//
// Multi-token queries (prefill of a suffix, chunked prefill, speculative verification): a
// sequence with n new tokens appears as n consecutive rows, one per query token, in causal order
// (kSeqRowOffsets groups them). Every row of a group has the sequence's chunk list, and its own
// rowLength: the KV tokens its query token sees (its position + 1), so the causal mask is the
// ordinary length mask and pos.q = rowLength - 1 in every kernel. Runs cover row ranges as usual,
// so phase 1 stacks the query rows of all sharers.
//
// Rows are the live sequences in DFS order of the prefix tree, so a tree node is shared by a
// contiguous row range. Phase 1 computes every run for all its sharers (a row without q reads
// zeros); phase 2 and the output cover only the requested rows. Everything is int32, so one
// buffer (one upload) holds it all.
#ifndef CHUNKATTN_CONTEXT_H_
#define CHUNKATTN_CONTEXT_H_

#include <stddef.h>
#include <stdint.h>

#include "chunkattn/abi.h"

#if defined(CA_TARGET_CPU) || defined(CA_TARGET_CUDA) || defined(CA_TARGET_EMU)
#include "chunkattn/variant.h"  // CA_HD for the build target
#elif !defined(CA_HD)
#define CA_HD inline  // host-only users (the addon, C++ tests)
#endif

#include <stdarg.h>
#include <stdio.h>

#include <algorithm>
#include <vector>

namespace ca {

namespace ctx {
inline constexpr int32_t kMagic = 0x58544341;  // "ACTX"
inline constexpr int32_t kLayout = 2;

// Header words.
enum Word : int32_t {
  kWordMagic = 0,
  kWordLayout = 1,
  kWordTotal = 2,
  kWordNumRows = 3,
  kWordNumRuns = 4,
  kWordNumPartials = 5,
  kWordNumRequests = 6,
  kWordNumIoRows = 7,
  kWordSections = 8,
};

enum Section : int32_t {
  kRowSeq = 0,
  kRowLength,
  kRowChunkOffsets,
  kRowChunkSlots,
  kRowSharedChunks,
  kRowPartialOffsets,
  kRowPartials,
  kRuns,
  kRunSlots,
  kRowIo,
  kRequestRow,
  kSeqRowOffsets,
  kNumSections,
};

inline constexpr int32_t kHeaderWords = kWordSections + 2 * kNumSections;
inline constexpr int32_t kRunFields = 6;
static_assert(sizeof(CaSharedRun) == kRunFields * sizeof(int32_t), "CaSharedRun is 6 int32");

// JS names of the sections, for messages (the fields of runtime/kernel-context.ts).
inline const char* section_name(int32_t s) {
  static const char* const kNames[kNumSections] = {"rowSeq",          "rowLength",
                                                   "rowChunkOffsets", "rowChunkSlots",
                                                   "rowSharedChunks", "rowPartialOffsets",
                                                   "rowPartials",     "runs",
                                                   "runSlots",        "rowIo",
                                                   "requestRow",      "seqRowOffsets"};
  return s >= 0 && s < kNumSections ? kNames[s] : "?";
}
}  // namespace ctx

// A read-only view of a packed context (host or device memory). Cheap to copy; pass by value.
struct KernelContext {
  const int32_t* words;

  CA_HD int32_t word(int32_t i) const { return words[i]; }
  CA_HD int32_t num_rows() const { return words[ctx::kWordNumRows]; }
  CA_HD int32_t num_runs() const { return words[ctx::kWordNumRuns]; }
  CA_HD int32_t num_partials() const { return words[ctx::kWordNumPartials]; }
  CA_HD int32_t num_requests() const { return words[ctx::kWordNumRequests]; }
  CA_HD int32_t num_io_rows() const { return words[ctx::kWordNumIoRows]; }
  CA_HD const int32_t* section(int32_t s) const {
    return words + words[ctx::kWordSections + 2 * s];
  }
  CA_HD int32_t section_count(int32_t s) const { return words[ctx::kWordSections + 2 * s + 1]; }

  // Whole sections (for kernels that load through their own prims).
  CA_HD const int32_t* row_seqs() const { return section(ctx::kRowSeq); }
  CA_HD const int32_t* row_lengths() const { return section(ctx::kRowLength); }
  CA_HD const int32_t* row_chunk_offsets() const { return section(ctx::kRowChunkOffsets); }
  CA_HD const int32_t* chunk_slots() const { return section(ctx::kRowChunkSlots); }
  CA_HD const int32_t* row_shared_chunk_counts() const { return section(ctx::kRowSharedChunks); }
  CA_HD const int32_t* row_partial_offsets() const { return section(ctx::kRowPartialOffsets); }
  CA_HD const int32_t* partials() const { return section(ctx::kRowPartials); }
  CA_HD const CaSharedRun* runs() const {
    return reinterpret_cast<const CaSharedRun*>(section(ctx::kRuns));
  }
  CA_HD const int32_t* run_slots() const { return section(ctx::kRunSlots); }
  CA_HD const int32_t* row_ios() const { return section(ctx::kRowIo); }
  CA_HD const int32_t* request_rows() const { return section(ctx::kRequestRow); }
  CA_HD const int32_t* seq_row_offsets() const { return section(ctx::kSeqRowOffsets); }

  // Per row / run / request.
  CA_HD int32_t row_seq(int32_t r) const { return row_seqs()[r]; }
  CA_HD int32_t row_length(int32_t r) const { return row_lengths()[r]; }
  CA_HD int32_t row_num_chunks(int32_t r) const {
    return row_chunk_offsets()[r + 1] - row_chunk_offsets()[r];
  }
  CA_HD const int32_t* row_chunk_slots(int32_t r) const {
    return chunk_slots() + row_chunk_offsets()[r];
  }
  CA_HD int32_t row_shared_chunks(int32_t r) const { return row_shared_chunk_counts()[r]; }
  CA_HD int32_t row_num_partials(int32_t r) const {
    return row_partial_offsets()[r + 1] - row_partial_offsets()[r];
  }
  CA_HD const int32_t* row_partials(int32_t r) const {
    return partials() + row_partial_offsets()[r];
  }
  CA_HD const CaSharedRun& run(int32_t i) const { return runs()[i]; }
  CA_HD int32_t row_io(int32_t r) const { return row_ios()[r]; }
  CA_HD int32_t request_row(int32_t i) const { return request_rows()[i]; }
};

// Host code from here on (nvcc parses it in both passes; device code never calls it).
namespace ctx {

// What a validation failure is about (the addon maps these to ERR_CA_SHAPE / _RANGE / _CONTEXT /
// _UNSUPPORTED).
enum class Problem { kNone = 0, kShape, kRange, kContext, kUnsupported };

struct Error {
  Problem problem = Problem::kNone;
  char message[320] = "";
};

struct Limits {
  int32_t num_slots = 0;
  int32_t chunk_size = 1;
  bool phase1 = false;
};

__attribute__((format(printf, 3, 4))) inline bool fail(Error* error, Problem problem,
                                                       const char* format, ...) {
  if (error) {
    error->problem = problem;
    va_list args;
    va_start(args, format);
    vsnprintf(error->message, sizeof error->message, format, args);
    va_end(args);
  }
  return false;
}

// The header and section table: every section lies inside the buffer, in order, with the count
// the header's scalars demand. O(1); enough for a module to index sections safely (the values
// inside are the full validator's job).
inline bool check_layout(const int32_t* w, uint64_t words, Error* error) {
  if (!w || words < uint64_t(kHeaderWords))
    return fail(error, Problem::kShape, "context has %llu words, fewer than the %d-word header",
                (unsigned long long)words, kHeaderWords);
  if (w[kWordMagic] != kMagic || w[kWordLayout] != kLayout)
    return fail(error, Problem::kShape,
                "context is not a packed kernel context of layout %d (magic %d, layout %d): "
                "build it with packContext",
                kLayout, w[kWordMagic], w[kWordLayout]);
  if (uint64_t(uint32_t(w[kWordTotal])) != words || w[kWordTotal] < 0)
    return fail(error, Problem::kShape, "context header says %d words, the array has %llu",
                w[kWordTotal], (unsigned long long)words);
  const int32_t rows = w[kWordNumRows], runs = w[kWordNumRuns], requests = w[kWordNumRequests];
  if (rows < 0 || runs < 0 || requests < 0 || w[kWordNumPartials] < 0 || w[kWordNumIoRows] < 0)
    return fail(error, Problem::kRange,
                "context counts must be >= 0 (rows %d, runs %d, partials %d, requests %d, io "
                "rows %d)",
                rows, runs, w[kWordNumPartials], requests, w[kWordNumIoRows]);
  int64_t end = kHeaderWords;
  for (int32_t s = 0; s < kNumSections; ++s) {
    const int64_t offset = w[kWordSections + 2 * s], count = w[kWordSections + 2 * s + 1];
    if (count < 0 || offset < end || offset + count > int64_t(words))
      return fail(error, Problem::kShape,
                  "context section %s (offset %lld, %lld elements) lies outside the array or "
                  "overlaps the one before",
                  section_name(s), (long long)offset, (long long)count);
    end = offset + count;
  }
  const struct {
    int32_t section;
    int64_t expected;
    const char* why;
  } counts[] = {
      {kRowSeq, rows, "one per row"},
      {kRowLength, rows, "one per row"},
      {kRowSharedChunks, rows, "one per row"},
      {kRowChunkOffsets, int64_t(rows) + 1, "numRows + 1"},
      {kRowPartialOffsets, int64_t(rows) + 1, "numRows + 1"},
      {kRuns, int64_t(runs) * kRunFields,
       "a multiple of 6: chunkBegin, numChunks, kvBegin, rowBegin, rowEnd, partialBegin per run"},
      {kRowIo, rows, "one per row"},
      {kRequestRow, requests, "one per requested row"},
  };
  for (const auto& c : counts)
    if (w[kWordSections + 2 * c.section + 1] != c.expected)
      return fail(error, Problem::kShape, "%s has %d elements, expected %lld (%s)",
                  section_name(c.section), w[kWordSections + 2 * c.section + 1],
                  (long long)c.expected, c.why);
  return true;
}

// The row groups of kSeqRowOffsets (see the validator's "groups" rule). Fills last[r] with the
// last row of r's group; leaves it as given (last[r] = r) when the section is empty.
inline bool check_groups(const KernelContext& c, int32_t* last, Error* error) {
  const int32_t count = c.section_count(kSeqRowOffsets), num_rows = c.num_rows();
  if (count == 0) return true;
  const int32_t* o = c.seq_row_offsets();
  if (o[0] != 0 || o[count - 1] != num_rows)
    return fail(error, Problem::kContext,
                "seqRowOffsets must run from 0 to numRows = %d, got %d … %d", num_rows, o[0],
                o[count - 1]);
  for (int32_t g = 0; g + 1 < count; ++g)
    if (o[g + 1] <= o[g])
      return fail(error, Problem::kContext,
                  "seqRowOffsets[%d] = %d is not greater than seqRowOffsets[%d] = %d: every "
                  "group holds at least one row",
                  g + 1, o[g + 1], g, o[g]);
  for (int32_t g = 0; g + 1 < count; ++g) {
    const int32_t begin = o[g], end = o[g + 1];
    const int32_t tail = end - 1;
    const int32_t n = c.row_num_chunks(tail);
    for (int32_t r = begin; r < end; ++r) {
      last[r] = tail;
      if (r == tail) continue;
      if (c.row_seq(r) != c.row_seq(tail) || c.row_shared_chunks(r) != c.row_shared_chunks(tail) ||
          c.row_num_chunks(r) != n)
        return fail(error, Problem::kContext,
                    "row %d and row %d form one query group but differ in rowSeq, chunk count or "
                    "rowSharedChunks",
                    r, tail);
      for (int32_t k = 0; k < n; ++k)
        if (c.row_chunk_slots(r)[k] != c.row_chunk_slots(tail)[k])
          return fail(error, Problem::kContext,
                      "row %d and row %d form one query group but their chunk %d differs", r, tail,
                      k);
      if (c.row_length(r) < 1 || c.row_length(r + 1) != c.row_length(r) + 1)
        return fail(error, Problem::kContext,
                    "query rows of a group have consecutive positions: rowLength[%d] = %d, "
                    "rowLength[%d] = %d",
                    r, c.row_length(r), r + 1, c.row_length(r + 1));
    }
  }
  return true;
}

// The one full validator. Every index a kernel could follow is proven in range and the context
// self-consistent, so a module only ever sees contexts the prefix-tree runtime could have built.
// O(rows + chunks + Σ run rows); allocates (host only). C = chunk size, n_r = chunks of row r:
//   offsets   both CSR arrays start at 0, never decrease, end at their data section's length.
//   rows      rowSeq >= 0; n_r == 0 and length 0, or (n_r - 1)·C < length <= n_r·C;
//             0 <= rowSharedChunks[r] <= n_r.
//   groups    seqRowOffsets empty, or a CSR starting at 0, strictly increasing, ending at
//             numRows. Within a group every row has the last row's rowSeq, chunk list and
//             rowSharedChunks, and rowLength[r + 1] = rowLength[r] + 1 >= 2; the length rule
//             above applies to the group's last row (earlier rows see a causal prefix).
//   slots     rowChunkSlots and runSlots in [0, numSlots); rowPartials in [0, numPartials).
//   requests  rowIo in [-1, numIoRows), injective where >= 0; requestRow lists exactly the rows
//             with rowIo >= 0, each once.
//   runs      numChunks >= 1, chunkBegin + numChunks <= runSlots.length, kvBegin a multiple of
//             C, 0 <= rowBegin < rowEnd <= numRows, partial ranges disjoint and covering
//             [0, numPartials). A module without a phase-1 kernel accepts no runs.
//   tiling    for every row, its runs cover its chunks [0, shared_r) exactly once with the same
//             slots as rowChunkSlots, and rowPartials lists exactly the partials those runs give
//             it (partialBegin + r - rowBegin), each once.
inline bool validate(const int32_t* w, uint64_t words, const Limits& limits, Error* error) {
  if (!check_layout(w, words, error)) return false;
  const KernelContext c{w};
  const int64_t chunk = limits.chunk_size;
  const int32_t num_rows = c.num_rows(), num_runs = c.num_runs(), num_partials = c.num_partials(),
                num_io_rows = c.num_io_rows();
  const Problem kShape = Problem::kShape, kRange = Problem::kRange, kCtx = Problem::kContext;

  // CSR offsets.
  const struct {
    int32_t offsets, data;
  } csr[] = {{kRowChunkOffsets, kRowChunkSlots}, {kRowPartialOffsets, kRowPartials}};
  for (const auto& pair : csr) {
    const int32_t* o = c.section(pair.offsets);
    const char* name = section_name(pair.offsets);
    if (o[0] != 0) return fail(error, kCtx, "%s[0] = %d, must be 0", name, o[0]);
    for (int32_t r = 1; r <= num_rows; ++r)
      if (o[r] < o[r - 1])
        return fail(error, kCtx, "%s[%d] = %d is less than %s[%d] = %d: offsets must not decrease",
                    name, r, o[r], name, r - 1, o[r - 1]);
    if (o[num_rows] != c.section_count(pair.data))
      return fail(error, kShape, "%s has %d elements but %s[%d] = %d", section_name(pair.data),
                  c.section_count(pair.data), name, num_rows, o[num_rows]);
  }

  // Row groups (query rows of one sequence): `last[r]` is the last row of r's group.
  std::vector<int32_t> last(size_t(num_rows), 0);
  for (int32_t r = 0; r < num_rows; ++r) last[size_t(r)] = r;
  if (!check_groups(c, last.data(), error)) return false;

  // Per-row values.
  for (int32_t r = 0; r < num_rows; ++r) {
    if (c.row_seq(r) < 0)
      return fail(error, kRange, "rowSeq[%d] = %d is negative", r, c.row_seq(r));
    if (last[size_t(r)] != r) continue;  // checked against the group's last row
    const int64_t length = c.row_length(r), chunks = c.row_num_chunks(r);
    if (length < 0)
      return fail(error, kRange, "rowLength[%d] = %lld is negative", r, (long long)length);
    const bool fits =
        chunks == 0 ? length == 0 : (chunks - 1) * chunk < length && length <= chunks * chunk;
    if (!fits)
      return fail(error, kCtx,
                  "rowLength[%d] = %lld does not fit the row's %lld chunk(s) of %lld tokens: "
                  "need (chunks - 1)·C < length <= chunks·C, or 0 with 0 chunks",
                  r, (long long)length, (long long)chunks, (long long)chunk);
    const int64_t shared = c.row_shared_chunks(r);
    if (shared < 0 || shared > chunks)
      return fail(error, kRange,
                  "rowSharedChunks[%d] = %lld is out of range [0, %lld] (the row's chunks)", r,
                  (long long)shared, (long long)chunks);
  }
  const struct {
    int32_t section;
    int64_t limit;
    const char* limit_name;
  } indices[] = {{kRowChunkSlots, limits.num_slots, "numSlots"},
                 {kRunSlots, limits.num_slots, "numSlots"},
                 {kRowPartials, num_partials, "numPartials"},
                 {kRequestRow, num_rows, "numRows"}};
  for (const auto& index : indices) {
    const int32_t* v = c.section(index.section);
    for (int32_t i = 0; i < c.section_count(index.section); ++i)
      if (v[i] < 0 || v[i] >= index.limit)
        return fail(error, kRange, "%s[%d] = %d is out of range [0, %s = %lld)",
                    section_name(index.section), i, v[i], index.limit_name, (long long)index.limit);
  }
  {
    std::vector<uint8_t> io_used(size_t(num_io_rows), 0), requested(size_t(num_rows), 0);
    int32_t with_io = 0;
    for (int32_t r = 0; r < num_rows; ++r) {
      const int32_t io = c.row_io(r);
      if (io < -1 || io >= num_io_rows)
        return fail(error, kRange, "rowIo[%d] = %d is out of range [-1, numIoRows = %d)", r, io,
                    num_io_rows);
      if (io < 0) continue;
      ++with_io;
      if (io_used[size_t(io)]++)
        return fail(error, kCtx,
                    "rowIo[%d] = %d repeats an earlier row's io row: rowIo must be injective", r,
                    io);
    }
    for (int32_t i = 0; i < c.num_requests(); ++i) {
      const int32_t r = c.request_row(i);
      if (c.row_io(r) < 0)
        return fail(error, kCtx, "requestRow[%d] = %d names a row without an io row (rowIo -1)", i,
                    r);
      if (requested[size_t(r)]++)
        return fail(error, kCtx, "requestRow[%d] = %d repeats an earlier request", i, r);
    }
    if (with_io != c.num_requests())
      return fail(error, kCtx,
                  "%d row(s) have an io row but %d are requested: requestRow must list every row "
                  "with rowIo >= 0",
                  with_io, c.num_requests());
  }

  // Runs.
  if (num_runs > 0 && !limits.phase1)
    return fail(error, Problem::kUnsupported,
                "this module has no phase-1 kernel (partition without shared runs): runs must be "
                "empty, got %d run(s)",
                num_runs);
  struct Interval {
    int64_t begin, end;
    int32_t run;
  };
  std::vector<Interval> ranges;
  ranges.reserve(size_t(num_runs));
  for (int32_t j = 0; j < num_runs; ++j) {
    const CaSharedRun& run = c.run(j);
    if (run.num_chunks < 1)
      return fail(error, kRange, "runs[%d].numChunks = %d, must be >= 1", j, run.num_chunks);
    if (run.chunk_begin < 0 ||
        int64_t(run.chunk_begin) + run.num_chunks > c.section_count(kRunSlots))
      return fail(error, kRange,
                  "runs[%d].chunkBegin = %d with numChunks = %d is outside runSlots (%d elements)",
                  j, run.chunk_begin, run.num_chunks, c.section_count(kRunSlots));
    if (run.kv_begin < 0 || run.kv_begin % chunk != 0)
      return fail(error, kRange,
                  "runs[%d].kvBegin = %d must be >= 0 and a multiple of the chunk size %lld", j,
                  run.kv_begin, (long long)chunk);
    if (run.row_begin < 0 || run.row_begin >= run.row_end || run.row_end > num_rows)
      return fail(error, kRange,
                  "runs[%d] rows [%d, %d) must be a non-empty range within [0, numRows = %d)", j,
                  run.row_begin, run.row_end, num_rows);
    const int64_t rows = run.row_end - run.row_begin;
    if (run.partial_begin < 0 || run.partial_begin + rows > num_partials)
      return fail(error, kRange,
                  "runs[%d].partialBegin = %d with %lld row(s) is outside [0, numPartials = %d)", j,
                  run.partial_begin, (long long)rows, num_partials);
    ranges.push_back({run.partial_begin, run.partial_begin + rows, j});
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Interval& a, const Interval& b) { return a.begin < b.begin; });
  int64_t covered = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (i > 0 && ranges[i].begin < ranges[i - 1].end)
      return fail(error, kCtx,
                  "runs[%d] and runs[%d] write overlapping partials: each partial belongs to one "
                  "(run, row)",
                  ranges[i - 1].run, ranges[i].run);
    covered += ranges[i].end - ranges[i].begin;
  }
  if (covered != num_partials)
    return fail(error, kCtx,
                "numPartials = %d but the runs produce %lld partial(s): numPartials must equal "
                "the rows summed over runs",
                num_partials, (long long)covered);

  // Tiling.
  std::vector<uint8_t> chunk_covered(size_t(c.section_count(kRowChunkSlots)), 0);
  std::vector<int32_t> runs_per_row(size_t(num_rows), 0);
  for (int32_t j = 0; j < num_runs; ++j) {
    const CaSharedRun& run = c.run(j);
    const int64_t first = run.kv_begin / chunk;
    for (int32_t r = run.row_begin; r < run.row_end; ++r) {
      if (first + run.num_chunks > c.row_shared_chunks(r))
        return fail(error, kCtx,
                    "runs[%d] covers chunks [%lld, %lld) of row %d, which has only %d shared "
                    "chunk(s)",
                    j, (long long)first, (long long)(first + run.num_chunks), r,
                    c.row_shared_chunks(r));
      const int64_t base = c.row_chunk_offsets()[r];
      for (int32_t k = 0; k < run.num_chunks; ++k) {
        const size_t index = size_t(base + first + k);
        if (chunk_covered[index])
          return fail(error, kCtx, "chunk %lld of row %d is covered by more than one run",
                      (long long)(first + k), r);
        chunk_covered[index] = 1;
        const int32_t run_slot = c.run_slots()[run.chunk_begin + k];
        if (run_slot != c.chunk_slots()[index])
          return fail(error, kCtx,
                      "runs[%d] chunk %d is slot %d but row %d's chunk %lld is slot %d", j, k,
                      run_slot, r, (long long)(first + k), c.chunk_slots()[index]);
      }
      ++runs_per_row[size_t(r)];
    }
  }
  std::vector<int64_t> seen_by_row(size_t(num_runs), -1);
  for (int32_t r = 0; r < num_rows; ++r) {
    const int64_t base = c.row_chunk_offsets()[r];
    for (int32_t k = 0; k < c.row_shared_chunks(r); ++k)
      if (!chunk_covered[size_t(base + k)])
        return fail(error, kCtx,
                    "chunk %d of row %d is counted in rowSharedChunks but no run covers it", k, r);
    if (c.row_num_partials(r) != runs_per_row[size_t(r)])
      return fail(error, kCtx,
                  "row %d lists %d partial(s) in rowPartials but is shared by %d run(s)", r,
                  c.row_num_partials(r), runs_per_row[size_t(r)]);
    for (int32_t i = 0; i < c.row_num_partials(r); ++i) {
      const int64_t partial = c.row_partials(r)[i];
      const int32_t at = c.row_partial_offsets()[r] + i;
      auto it = std::upper_bound(ranges.begin(), ranges.end(), partial,
                                 [](int64_t p, const Interval& range) { return p < range.begin; });
      bool owned = false;
      if (it != ranges.begin()) {
        const Interval& range = *(it - 1);
        if (partial < range.end && partial - range.begin == r - c.run(range.run).row_begin) {
          owned = true;
          if (seen_by_row[size_t(range.run)] == r)
            return fail(error, kCtx, "rowPartials[%d] = %lld is listed twice for row %d", at,
                        (long long)partial, r);
          seen_by_row[size_t(range.run)] = r;
        }
      }
      if (!owned)
        return fail(error, kCtx,
                    "rowPartials[%d] = %lld is not a partial of row %d (partialBegin + row - "
                    "rowBegin of a run containing the row)",
                    at, (long long)partial, r);
    }
  }
  return true;
}

// Packs sections into `out` (host C++ callers: tests and benchmarks; JS uses packContext).
// `sections[s]` / `counts[s]` for every Section; counts are taken as given (no validation).
inline void pack(std::vector<int32_t>& out, int32_t num_rows, int32_t num_runs,
                 int32_t num_partials, int32_t num_requests, int32_t num_io_rows,
                 const int32_t* const sections[kNumSections], const int32_t counts[kNumSections]) {
  int64_t total = kHeaderWords;
  for (int32_t s = 0; s < kNumSections; ++s) total += counts[s];
  out.assign(size_t(total), 0);
  out[kWordMagic] = kMagic;
  out[kWordLayout] = kLayout;
  out[kWordTotal] = int32_t(total);
  out[kWordNumRows] = num_rows;
  out[kWordNumRuns] = num_runs;
  out[kWordNumPartials] = num_partials;
  out[kWordNumRequests] = num_requests;
  out[kWordNumIoRows] = num_io_rows;
  int32_t offset = kHeaderWords;
  for (int32_t s = 0; s < kNumSections; ++s) {
    out[size_t(kWordSections + 2 * s)] = offset;
    out[size_t(kWordSections + 2 * s + 1)] = counts[s];
    for (int32_t i = 0; i < counts[s]; ++i) out[size_t(offset + i)] = sections[s][i];
    offset += counts[s];
  }
}

}  // namespace ctx

}  // namespace ca

#endif  // CHUNKATTN_CONTEXT_H_
