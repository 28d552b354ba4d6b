// chunkattn/psa_abi.h — the C ABI of progressive sparse attention (PSA; options: dsl/README.md).
//
// Optional entry points: the addon resolves them when a module exports them (every target). The
// cpu target runs ca_psa_decode on the host (chunkattn/cpu/sparse_decode.h); cuda/emu run the
// select (chunkattn/select.cuh), the guard (chunkattn/psa_guard.cuh) and the list-driven two-phase
// decode (chunkattn/chunk_select_mask.cuh) on the stream. Shapes as in chunkattn/abi.h, plus
//
//   meta      [num_slots, Hkv, CA_PSA_META_VECTORS, D]   dtype.kv   (one layer's chunk metadata)
//             per (slot, KV head): mean key, per-channel variance (≥ 0), per-channel min, max,
//             accumulated in f32 over the chunk's C tokens; valid for full chunks only.
//   lists     [num_rows, Hkv, max_chunks] int32   selected chunks of each (DFS row, KV head), as
//             indices into the row's chunk list (token order), ascending
//   counts    [num_rows, Hkv] int32               entries of each list; -1 for unrequested rows
//
// ca_psa_decode runs `select` (scores every full chunk with the corrected log-mass estimate
// capped by the Quest bound, forces chunk 0 + the recent window + the tail, finds each head's
// threshold by bisection, unions the GQA group, adds the safety net, clamps to [k_min, k_max],
// compacts) and then the decode driven by those lists inside two-phase: a shared chunk is loaded
// once for all the sharers that selected it; a sharer that did not select it skips it. When
// every requested list is complete it runs ca_decode itself, so mass 1 equals dense exactly.
#ifndef CHUNKATTN_PSA_ABI_H_
#define CHUNKATTN_PSA_ABI_H_

#include <stdint.h>

#include "chunkattn/abi.h"

#define CA_PSA_META_VECTORS 4

#ifdef __cplusplus
extern "C" {
#endif

// Summarize full chunks of one layer: meta[slots[i]] for every KV head, from k_pool.
typedef struct CaPsaMetaParams {
  const void* k_pool;  // [num_slots, Hkv, C, D]
  int32_t num_slots;
  void* meta;  // [num_slots, Hkv, CA_PSA_META_VECTORS, D] dtype.kv
  int32_t num_chunks;
  const int32_t* slots;  // [num_chunks], each slot a full chunk
} CaPsaMetaParams;

typedef struct CaPsaParams {
  uint32_t struct_bytes;       // sizeof(CaPsaParams)
  const void* meta;            // this layer's metadata, module memory
  float mass;                  // (0, 1]; ≥ 1 selects everything
  int32_t k_min, k_max;        // chunks per list, forced included (forced chunks always stay)
  int32_t recent_chunks;       // the last recent_chunks chunks are forced (the tail always is)
  float safety_net;            // fraction of the non-forced chunks added by their Quest bound
  int32_t use_box;             // 1: cap by the Quest bound and run the safety net; 0: mean/var only
  int32_t dense_below_tokens;  // rows of at most this many tokens select every chunk
  int32_t guard;               // 1: the progressive step (see sparse_decode.h)
  int32_t max_chunks;          // list capacity per (row, KV head): ≥ every row's chunk count
  int32_t* lists;              // [num_rows, Hkv, max_chunks]: host memory (cpu), module (cuda/emu)
  int32_t* counts;             // [num_rows, Hkv]: host memory (cpu), module memory (cuda/emu)
  int32_t* guard_added;  // [num_rows, Hkv] chunks the guard added (0 without guard); may be null;
                         // host memory (cpu), module memory (cuda/emu)
  int32_t select_only;   // 1: select alone (lists, counts); out is not written
  void* scratch;         // cuda/emu: module memory of ca_psa_scratch_bytes() bytes (select_only) or
                         // ca_psa_decode_scratch_bytes(); cpu: unused
} CaPsaParams;

// Scratch of the cuda/emu select kernel: per requested (row, KV head), G + 2 floats (every
// head's estimate, the Quest bound, the best log π) and one int32 of flags per chunk.
static inline uint64_t ca_psa_scratch_bytes(int32_t num_requests, int32_t kv_heads, int32_t q_heads,
                                            int32_t max_chunks) {
  const uint64_t group = (uint64_t)(q_heads / kv_heads);
  return (uint64_t)num_requests * (uint64_t)kv_heads * (group + 3) * (uint64_t)max_chunks * 4;
}

#define CA_PSA_PHASE1_TILE_ROWS 128  // stacked rows of a phase-1 item (decode_phase1.cuh kMT)

static inline uint64_t ca_psa_align(uint64_t bytes) { return (bytes + 255) / 256 * 256; }

// Scratch of the cuda/emu ca_psa_decode without select_only: the select's (above), then row_sel
// [num_rows, Hkv, max_chunks] uint8, private_begin [num_rows, Hkv] int32 and tile_sel
// [phase-1 items, Hkv, max_chunks] uint8 (chunk_select_mask.cuh), each rounded up to 256 bytes;
// phase-1 items = num_runs + ⌊num_partials · G / CA_PSA_PHASE1_TILE_ROWS⌋ (phase1_items).
static inline uint64_t ca_psa_decode_scratch_bytes(int32_t num_rows, int32_t num_requests,
                                                   int32_t num_runs, int32_t num_partials,
                                                   int32_t kv_heads, int32_t q_heads,
                                                   int32_t max_chunks) {
  const uint64_t group = (uint64_t)(q_heads / kv_heads);
  const uint64_t items =
      (uint64_t)num_runs + (uint64_t)num_partials * group / CA_PSA_PHASE1_TILE_ROWS;
  const uint64_t rows = (uint64_t)num_rows * (uint64_t)kv_heads;
  return ca_psa_align(ca_psa_scratch_bytes(num_requests, kv_heads, q_heads, max_chunks)) +
         ca_psa_align(rows * (uint64_t)max_chunks) + ca_psa_align(rows * 4) +
         ca_psa_align(items * (uint64_t)kv_heads * (uint64_t)max_chunks);
}

int ca_psa_meta(const CaPsaMetaParams* p, void* stream);
int ca_psa_decode(const CaDecodeParams* p, const CaPsaParams* s, void* stream);

#ifdef __cplusplus
}
#endif

#endif  // CHUNKATTN_PSA_ABI_H_
