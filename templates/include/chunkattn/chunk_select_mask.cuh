// chunkattn/chunk_select_mask.cuh — the PSA selection as the two-phase kernels see it (cuda/emu):
// the hooks decode_phase1.cuh and decode_phase2.cuh call when instantiated with kListed = true
// (ca_psa_decode, module_psa.cuh). With kListed = false every hook is the dense identity and
// compiles away.
//
//   lists          [num_rows, Hkv, max_chunks] int32  selected chunks of each row, ascending
//                                                     (select.cuh)
//   counts         [num_rows, Hkv] int32              entries of each list; -1: row not requested
//   row_sel        [num_rows, Hkv, max_chunks] uint8  1 where the row selected the chunk
//   private_begin  [num_rows, Hkv] int32              first list entry past the row's shared chunks
//   tile_sel       [phase1_items, Hkv, max_chunks] uint8
//                  1 where any sharer of phase-1 item x (one m-tile of a run) selected chunk i of
//                  the run (i counted from the run's first chunk)
// (psa_row_select_kernel and psa_tile_select_kernel, chunk_select_kernels.cuh, fill the last
// three.)
//
// Phase 1: a run chunk no sharer of the tile selected is never copied (its stage slot is zero-
// filled, no K/V bytes) and a stage with none is not computed; a sharer that did not select a
// loaded chunk sees its tokens as -inf. So a row's result never depends on who shares its tile.
// Phase 2: the row's private tokens are those of its selected private chunks, in list order
// (PrivateChunks maps the kernel's token index u to a chunk and a key position).
#ifndef CHUNKATTN_CHUNK_SELECT_MASK_CUH_
#define CHUNKATTN_CHUNK_SELECT_MASK_CUH_

#include <stdint.h>

#include "chunkattn/decode_view.cuh"
#include "chunkattn/prims.cuh"

namespace ca {

// Device pointers of one call's selection (null members in a dense decode).
struct ChunkSelection {
  const int32_t* lists;
  const int32_t* counts;
  const uint8_t* row_sel;
  const int32_t* private_begin;
  const uint8_t* tile_sel;
  int32_t max_chunks;
};

namespace chunk_select {

// A value every lane of the warp loads once (lane 0 reads; all lanes must call).
template <class F>
CA_DEVICE int uniform(F&& load) {
  const int lane = threadIdx.x & 31;
  return __shfl_sync(0xffffffffu, lane == 0 ? load() : 0, 0);
}

// Row r's (KV head kvh) selection byte of its chunk `chunk`.
CA_DEVICE bool row_selects(const ChunkSelection& s, int r, int kvh, int hkv, int chunk) {
  return ldg<CA_TRAFFIC_CONTEXT>(s.row_sel + (size_t(r) * hkv + kvh) * size_t(s.max_chunks) +
                                 chunk) != 0;
}

// Whether any sharer of phase-1 item `item` selected run chunk `chunk`.
CA_DEVICE bool tile_selects(const ChunkSelection& s, int item, int kvh, int hkv, int chunk) {
  return ldg<CA_TRAFFIC_CONTEXT>(s.tile_sel + (size_t(item) * hkv + kvh) * size_t(s.max_chunks) +
                                 chunk) != 0;
}

// Bit k: row r selected row chunk first + k, for k in [0, n) (n <= 32). Phase 1 calls this once
// per stage for the stacked row a lane holds.
CA_DEVICE uint32_t row_stage_bits(const ChunkSelection& s, int r, int kvh, int hkv, int first,
                                  int n) {
  uint32_t bits = 0;
  for (int k = 0; k < n; ++k) bits |= uint32_t(row_selects(s, r, kvh, hkv, first + k)) << k;
  return bits;
}

}  // namespace chunk_select

// The private tokens phase 2 attends for one (row, KV head): u in [0, ntok).
//   dense:  the row's tokens after its shared chunks, tok_begin + u
//   listed: the tokens of the row's selected private chunks in list order (the tail, always
//           selected, last), so only those chunks are ever read
template <int C, bool kListed>
struct PrivateChunks {
  int tok_begin;        // dense: first private token (a multiple of C)
  const int32_t* list;  // listed: the row's list from its first private entry
  int ntok;

  // The row chunk holding token u.
  CA_DEVICE int chunk(int u) const {
    if constexpr (kListed)
      return ldg<CA_TRAFFIC_CONTEXT>(list + u / C);
    else
      return (tok_begin + u) / C;
  }
  // The key position of token u (pos.kv of the spec's mask / score_mod).
  CA_DEVICE int position(int u) const {
    if constexpr (kListed)
      return chunk(u) * C + u % C;
    else
      return tok_begin + u;
  }

  // All lanes of the warp call this together. `length`: the row's visible tokens.
  template <int kHkv>
  static CA_DEVICE PrivateChunks of(const DecodeView& ctx, const ChunkSelection& s, int row,
                                    int kvh, int length) {
    PrivateChunks p{0, nullptr, 0};
    if constexpr (kListed) {
      const size_t at = size_t(row) * kHkv + kvh;
      const int count =
          chunk_select::uniform([&] { return ldg<CA_TRAFFIC_CONTEXT>(s.counts + at); });
      const int begin =
          chunk_select::uniform([&] { return ldg<CA_TRAFFIC_CONTEXT>(s.private_begin + at); });
      p.list = s.lists + at * size_t(s.max_chunks) + begin;
      const int n = count - begin;
      if (n > 0) {
        const int last =
            chunk_select::uniform([&] { return ldg<CA_TRAFFIC_CONTEXT>(p.list + n - 1); });
        p.ntok = (n - 1) * C + (length - last * C);
      }
    } else {
      (void)s, (void)kvh;
      p.tok_begin = chunk_select::uniform([&] { return ctx.row_shared_chunks(row); }) * C;
      p.ntok = length > p.tok_begin ? length - p.tok_begin : 0;
    }
    return p;
  }
};

}  // namespace ca

#endif  // CHUNKATTN_CHUNK_SELECT_MASK_CUH_
