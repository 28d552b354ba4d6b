// chunkattn/decode_phase2.cuh — phase 2 of two-phase decode, and the whole of sequence-first
// decode: one CTA per (row, KV head, split) attends to the row's tokens after its shared chunks
// (all of them when the context has no shared runs), then merges the row's phase-1 partials and
// writes the normalized output. When rows x KV heads cannot fill the GPU, the tokens are split
// over several CTAs (split-KV) and decode_merge_splits_kernel combines them.
//
// G >= 4 runs on tensor cores (phase2_tc_body; the PSA decode's list-driven instances stay on
// CUDA cores): the row's G query heads, padded to one m16 block,
// go through the phase-1 engine (tc_engine.cuh: mma.sync m16n8k16 fed by ldmatrix from a 2-stage
// cp.async ring), its warps splitting every stage's tokens, so each K/V element is read from
// shared memory once for all G heads; the warps' states then merge like the lane groups' below.
//
// Layout of the work on CUDA cores, G < 4 (the CUDA review in the design notes, "lanes along the
// head dimension"):
//   - kTx lanes own one token row: lane tx holds kVec elements of the head dimension (16 bytes;
//     8 bytes when G > 4, to keep q and o in registers), so a warp reads whole 128-byte lines and
//     every shared-memory phase of 8 lanes touches 32 distinct banks: no bank conflicts.
//   - q of the G heads and their running o live in registers; K serves all G heads once.
//   - K and V stream through a 2-stage cp.async ring, K and V of a stage in separate commit
//     groups: the scores of stage i need only K (wait_group 3), then V (wait_group 2), while the
//     copies of stage i + 1 fly. Each thread copies exactly the 16-byte pieces it later reads, so
//     its own wait_group makes them visible and the main loop needs no barrier at all.
//   - Each group of kTx lanes keeps its own online-softmax state over its rows; the groups merge
//     once, through shared memory, after the loop.
#ifndef CHUNKATTN_DECODE_PHASE2_CUH_
#define CHUNKATTN_DECODE_PHASE2_CUH_

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "chunkattn/abi.h"
#include "chunkattn/chunk_select_mask.cuh"
#include "chunkattn/decode_view.cuh"
#include "chunkattn/dtype.cuh"
#include "chunkattn/prims.cuh"
#include "chunkattn/softmax_state.h"
#include "chunkattn/tc_engine.cuh"
#include "chunkattn/variant.h"

namespace ca {

constexpr int pow2_at_least(int n) { return n <= 1 ? 1 : 2 * pow2_at_least((n + 1) / 2); }

// Launch geometry and the dynamic shared-memory arena (codegen/plan.ts mirrors it). kListed: the
// PSA decode's instances (chunk_select_mask.cuh), which stay on CUDA cores for every G: the
// tensor-core engine walks contiguous chunk ranges, a row's selected chunks are a list.
template <class Cfg, bool kListed = false>
struct Phase2Plan {
  using KvT = typename Cfg::KvT;
  static constexpr int G = Cfg::kQHeads / Cfg::kKvHeads, D = Cfg::kHeadDim, C = Cfg::kChunk;
  // G >= 4: the row's G query heads, padded to one m16 block, run through the tensor-core engine
  // (tc_engine.cuh) with warps splitting every stage's tokens; each K/V element is read from
  // shared memory once. Below, CUDA cores (lanes along the head dimension).
  static constexpr bool kTensorCores = G >= 4 && !kListed;
  using TcEng = TcEngine<KvT, D, 1, (D > 128 ? 2 : 4), 16>;
  static constexpr int kThreads = kTensorCores ? TcEng::kThreads : 128;
  // CUDA cores: 16 bytes a lane; 8 when G > 4 keeps q and o in registers, unless a row would need
  // more than a warp of 8-byte lanes. (Tensor cores: 16-byte copies.)
  static constexpr int kLaneBytes = G <= 4 || D * int(sizeof(KvT)) / 8 > 32 ? 16 : 8;
  static constexpr int kVec = kLaneBytes / int(sizeof(KvT));  // elements per lane
  // CTAs per SM the registers are budgeted for (__launch_bounds__): 4 (128 registers a thread),
  // 2 when q and o alone need more than 64 registers, or on tensor cores (up to 255).
  static constexpr int kMinBlocks = kTensorCores || 2 * G * kVec > 64 ? 2 : 4;
  static constexpr int kMaxRegisters = 65536 / (kThreads * kMinBlocks) > 255
                                           ? 255
                                           : 65536 / (kThreads * kMinBlocks);
  static constexpr int kTxUsed = D / kVec;            // lanes holding a row's elements
  static constexpr int kTx = pow2_at_least(kTxUsed);  // lanes per token row
  // States merged after the loop: the lane groups (one per token row in flight), or the warps.
  static constexpr int kGroups = kTensorCores ? TcEng::kWarps : kThreads / kTx;
  static constexpr int kRowsPerGroup = G > 4 ? 2 : 4;  // rows a group scores per stage
  // Tokens per tile: a CUDA-core stage; on tensor cores the unit of splits, whole chunks (the
  // engine streams its own kKT-token stages).
  static constexpr int kKT =
      kTensorCores ? (TcEng::kKT > C ? TcEng::kKT : C) : kGroups * kRowsPerGroup;
  static constexpr int kStages = 2;
  // Splits keep at least this many tokens each (fewer is not worth a merge).
  static constexpr int kMinSplitTiles = (128 + kKT - 1) / kKT;
  static constexpr int kMaxSplits = 16;

  // CUDA cores' ring.
  static constexpr size_t kTileBytes = size_t(kKT) * D * sizeof(KvT);
  static constexpr size_t kOffK = 0;                             // KvT [kStages][kKT][D]
  static constexpr size_t kOffV = kOffK + kStages * kTileBytes;  // KvT [kStages][kKT][D]
  static constexpr size_t kRingBytes = kTensorCores ? TcEng::kLoopBytes : 2 * kStages * kTileBytes;
  // After the loop the ring holds the groups' states: f32 [kGroups][G][kMergePitch] with o in
  // [0, D), m at D and l at D + 1 (pitch keeps float4 rows aligned; on tensor cores ≡ 8 mod 32
  // words, so the warps' float2 stores of accumulator rows are conflict-free).
  static constexpr int kMergePitch = kTensorCores ? D + 8 : D + 4;
  static constexpr size_t kMergeBytes = size_t(kGroups) * G * kMergePitch * 4;
  static constexpr size_t kSmemBytes = kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes;
  // q is staged once in V stage 1 (free until iteration 0 refills it).
  static constexpr size_t kOffQ = kOffV + kTileBytes;
  // The split merge's arena: f32 lse [G][kMaxSplits].
  static constexpr size_t kMergeSplitsSmemBytes = size_t(G) * kMaxSplits * 4;

  static_assert(Cfg::kQHeads % Cfg::kKvHeads == 0, "GQA group must be integral");
  static_assert(D % kVec == 0 && kTx <= 32, "a token row fits one warp");
  static_assert(kVec % 4 == 0, "o moves through shared memory as float4");
  static_assert(sizeof(typename Cfg::QT) == sizeof(KvT), "q is staged in a K/V tile");
  static_assert(kTensorCores || size_t(G) * D * sizeof(KvT) <= kTileBytes, "q fits one tile");
  static_assert(!kTensorCores || (G <= 16 && TcEng::kWarps == TcEng::kMaxWN),
                "one m16 block; every warp takes a token slice");
};

// Where phase 2 puts its result and finds phase 1's.
struct Phase2Io {
  int splits;             // CTAs per (row, KV head); > 1: results go to split_o / split_lse
  float* split_o;         // [requests * splits][Hq][D] o / l
  float* split_lse;       // [requests * splits][Hq] natural log; -inf = empty
  const float* part_o;    // phase-1 partials [num_partials * part_splits][Hq][D], or null
  const float* part_lse;  // [num_partials * part_splits][Hq]
  int part_splits;
  ChunkSelection sel;  // kListed kernels: the PSA selection (chunk_select_mask.cuh)
};

template <int kBytes>
struct VecOf;
template <>
struct VecOf<16> {
  using type = uint4;
};
template <>
struct VecOf<8> {
  using type = uint2;
};

// Loads kVec elements (kLaneBytes) and widens them to f32.
template <class T, int kVec, class Raw>
CA_DEVICE void widen(const Raw& raw, float (&out)[kVec]) {
  T e[kVec];
  memcpy(static_cast<void*>(e), &raw, sizeof raw);
#pragma unroll
  for (int i = 0; i < kVec; ++i) out[i] = to_float(e[i]);
}

// A warp-uniform value loaded once: lane 0 reads it, the warp gets it by shuffle (every lane
// must call this together). The GPU serves a uniform load with one transaction anyway; the
// emulator counts bytes per thread, so this keeps the counted traffic what a GPU moves.
template <class F>
CA_DEVICE int warp_uniform(F&& load) {
  const int lane = threadIdx.x & 31;
  return __shfl_sync(0xffffffffu, lane == 0 ? load() : 0, 0);
}

// The row's phase-1 partials: indices ctx.row_partial(k) for k in [begin, end).
struct PartialRange {
  int begin, end;
};

// Folds the row's phase-1 partials for query head h into (state, acc) of element d.
CA_DEVICE void merge_phase1(const DecodeView& ctx, const Phase2Io& io, PartialRange partials, int h,
                            int d, SoftmaxState& state, float& acc, int hq, int head_dim) {
  if (io.part_o == nullptr) return;
  for (int k = partials.begin; k < partials.end; ++k) {
    const int pidx = ctx.row_partial(k);
    for (int sp = 0; sp < io.part_splits; ++sp) {
      const size_t slot = size_t(pidx) * io.part_splits + sp;
      const SoftmaxState::Rescale f =
          state.merge_lse(ldg<CA_TRAFFIC_PARTIAL>(io.part_lse + slot * hq + h));
      if (f.other == 0.f) {
        acc *= f.self;
        continue;
      }
      const float ob = ldg<CA_TRAFFIC_PARTIAL>(io.part_o + (slot * hq + h) * head_dim + d);
      acc = acc * f.self + ob * f.other;
    }
  }
}

// How a row's ntok tokens split into tiles over at most `splits` CTAs: `per` tiles each (at
// least kMinSplitTiles), `used` CTAs with work (1 for an empty row). Both kernels compute it from
// the row's length, so a row that needs one split writes its output directly and the merge
// kernel skips it.
struct SplitTiles {
  int all, per, used;
};
template <class Pl>
CA_DEVICE SplitTiles split_tiles(int ntok, int splits) {
  const int all = (ntok + Pl::kKT - 1) / Pl::kKT;
  int per = (all + splits - 1) / splits;
  if (per < Pl::kMinSplitTiles) per = Pl::kMinSplitTiles;
  return {all, per, all == 0 ? 1 : (all + per - 1) / per};
}

// Merges the kGroups states of each query head in `mrg` (f32 [kGroups][G][kMergePitch]: o, then
// m (base 2) at D and l at D + 1) and the row's phase-1 partials, and writes the normalized output,
// or this split's state when the row has several (decode_merge_splits_kernel finishes them).
template <class Pl, class Cfg>
CA_DEVICE void phase2_finish(const DecodeView& ctx, const DecodeTensors& t, const Phase2Io& io,
                             const float* mrg, int req, int split, int used, int io_row,
                             PartialRange partials) {
  using OutT = typename Cfg::OutT;
  constexpr int G = Pl::G, D = Pl::D, Hq = Cfg::kQHeads;
  const int kvh = blockIdx.y;
  OutT* out = static_cast<OutT*>(t.out) + (size_t(io_row) * Hq + kvh * G) * D;
  for (int e = threadIdx.x; e < G * D; e += Pl::kThreads) {
    const int g = e / D, d = e % D;
    float m = -INFINITY;
    for (int w = 0; w < Pl::kGroups; ++w)
      m = fmaxf(m, lds(mrg + (size_t(w) * G + g) * Pl::kMergePitch + D));
    const float ref = m == -INFINITY ? 0.f : m;
    float acc = 0.f, l = 0.f;
    for (int w = 0; w < Pl::kGroups; ++w) {
      const float* st = mrg + (size_t(w) * G + g) * Pl::kMergePitch;
      const float2 ml = lds(reinterpret_cast<const float2*>(st + D));
      const float f = exp2f(ml.x - ref);
      acc += lds(st + d) * f;
      l += ml.y * f;
    }
    SoftmaxState state;  // natural-log units from here on
    if (l > 0.f) state.m = ref * kLn2, state.l = l;
    const int h = kvh * G + g;
    if (used > 1) {
      const size_t slot = (size_t(req) * io.splits + split) * Hq + h;
      stg<CA_TRAFFIC_PARTIAL>(io.split_o + slot * D + d, acc * state.inv_l());
      if (d == 0) stg<CA_TRAFFIC_PARTIAL>(io.split_lse + slot, state.lse());
    } else {
      merge_phase1(ctx, io, partials, h, d, state, acc, Hq, D);
      stg<CA_TRAFFIC_OUT>(out + e, from_float<OutT>(acc * state.inv_l()));
    }
  }
}

// CUDA cores (G < 4, or a PSA instance): see the file comment. kListed: attend only the row's
// selected private chunks (chunk_select_mask.cuh).
template <class Cfg, class Variant, bool kListed>
CA_DEVICE void phase2_cc_body(const DecodeView& ctx, const DecodeTensors& t, const Phase2Io& io) {
  using Pl = Phase2Plan<Cfg, kListed>;
  using QT = typename Cfg::QT;
  using KvT = typename Cfg::KvT;
  using Vec = typename VecOf<Pl::kLaneBytes>::type;
  constexpr int G = Pl::G, D = Pl::D, C = Pl::C, Hq = Cfg::kQHeads, Hkv = Cfg::kKvHeads;
  constexpr int kVec = Pl::kVec, kTx = Pl::kTx, kKT = Pl::kKT, kRows = Pl::kRowsPerGroup;

  extern __shared__ __align__(128) unsigned char smem[];
  KvT* ks = reinterpret_cast<KvT*>(smem + Pl::kOffK);
  KvT* vs = reinterpret_cast<KvT*>(smem + Pl::kOffV);

  // One CTA row per requested row: blockIdx.x is the request, its DFS row comes from the context.
  const int req = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int row = warp_uniform([&] { return ctx.request_row(req); });
  const int tid = threadIdx.x, grp = tid / kTx, tx = tid % kTx;
  const bool lane_used = tx < Pl::kTxUsed;
  const int length = warp_uniform([&] { return ctx.row_length(row); });
  const int seq = Variant::kHasMask || Variant::kHasScoreMod
                      ? warp_uniform([&] { return ctx.row_seq(row); })
                      : 0;
  const int32_t* slots =
      ctx.c.chunk_slots() + warp_uniform([&] { return ctx.row_chunk_offset(row); });
  const auto priv = PrivateChunks<C, kListed>::template of<Hkv>(ctx, io.sel, row, kvh, length);
  const int ntok = priv.ntok;

  // This split's tiles of the row's tokens. A split past the row's last one has nothing to do.
  const SplitTiles sp = split_tiles<Pl>(ntok, io.splits);
  if (split >= sp.used) return;
  const int tile0 = split * sp.per;
  const int ntiles = sp.all - tile0 < sp.per ? sp.all - tile0 : sp.per;

  // q of the G heads: copied once into shared memory (every group needs all of it), then each
  // lane keeps its elements in registers, pre-scaled (base-2 exponent unless score_mod).
  const float qscale = Variant::kHasScoreMod ? t.softmax_scale : t.softmax_scale * kLog2e;
  const int io_row = warp_uniform([&] { return ctx.row_io(row); });
  const PartialRange partials =
      io.part_o == nullptr ? PartialRange{0, 0}
                           : PartialRange{warp_uniform([&] { return ctx.row_partials_begin(row); }),
                                          warp_uniform([&] { return ctx.row_partials_end(row); })};
  {
    constexpr int kPieces = int(G * D * sizeof(QT) / 16);
    const unsigned char* src = reinterpret_cast<const unsigned char*>(
        static_cast<const QT*>(t.q) + (size_t(io_row) * Hq + kvh * G) * D);
    for (int e = tid; e < kPieces; e += Pl::kThreads)
      cp_async<CA_TRAFFIC_Q, 16>(smem + Pl::kOffQ + 16 * e, src + 16 * e);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  }
  const QT* qs = reinterpret_cast<const QT*>(smem + Pl::kOffQ);
  float q[G][kVec];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane_used) {
      widen<QT, kVec>(lds(reinterpret_cast<const Vec*>(qs + g * D) + tx), q[g]);
#pragma unroll
      for (int i = 0; i < kVec; ++i) q[g][i] *= qscale;
    } else {
#pragma unroll
      for (int i = 0; i < kVec; ++i) q[g][i] = 0.f;
    }
  }

  // Token (within the row's private part) of row j of this group in local tile i.
  auto token_of = [&](int i, int j) { return (tile0 + i) * kKT + grp * kRows + j; };
  // Slots of this group's rows in local tile i, loaded one iteration before the copies need them:
  // the group's first lane loads, the group's lanes get them by shuffle (all lanes call this).
  auto slots_of = [&](int i, int(&out)[kRows]) {
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int u = token_of(i, j);
      const int mine = tx == 0 && i < ntiles && u < ntok ? ctx.chunk_slot(slots, priv.chunk(u)) : 0;
      out[j] = __shfl_sync(0xffffffffu, mine, (tid & 31) / kTx * kTx);
    }
  };
  // Copies this thread's pieces of local tile i (K or V) into `stage`.
  auto issue = [&](int i, int stage, bool v, const int(&slot)[kRows]) {
    if (i >= ntiles || !lane_used) return;
    KvT* base = (v ? vs : ks) + size_t(stage) * kKT * D;
    const KvT* pool = static_cast<const KvT*>(v ? t.v_pool : t.k_pool);
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int u = token_of(i, j);
      if (u >= ntok) continue;
      cp_async<CA_TRAFFIC_KV, Pl::kLaneBytes>(
          base + size_t(grp * kRows + j) * D + tx * kVec,
          pool + ((size_t(slot[j]) * Hkv + kvh) * C + u % C) * D + tx * kVec);
    }
  };

  float o[G][kVec];
  float m_run[G], l_run[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m_run[g] = -INFINITY, l_run[g] = 0.f;
#pragma unroll
    for (int i = 0; i < kVec; ++i) o[g][i] = 0.f;
  }

  __syncthreads();  // q is in registers: its stage may be refilled

  int slot[kRows];
  slots_of(0, slot);
  issue(0, 0, false, slot);
  cp_async_commit();
  issue(0, 0, true, slot);
  cp_async_commit();
  slots_of(1, slot);

  for (int i = 0; i < ntiles; ++i) {
    const int stage = i % Pl::kStages;
    // Stage i + 1's copies (its K, then its V group) fly while stage i is computed. The stage
    // they overwrite was read by this same thread in iteration i - 1.
    issue(i + 1, (i + 1) % Pl::kStages, false, slot);
    cp_async_commit();
    issue(i + 1, (i + 1) % Pl::kStages, true, slot);
    cp_async_commit();
    slots_of(i + 2, slot);
    cp_async_wait<3>();  // K of stage i (V of i, K and V of i + 1 may fly)

    float s[kRows][G];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int u = token_of(i, j);
      const bool valid = u < ntok;
      float kf[kVec];
      if (valid && lane_used) {
        widen<KvT, kVec>(
            lds(reinterpret_cast<const Vec*>(ks + (size_t(stage) * kKT + grp * kRows + j) * D) +
                tx),
            kf);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) kf[e] = 0.f;
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot = fmaf(q[g][e], kf[e], dot);
#pragma unroll
        for (int off = kTx / 2; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        bool visible = valid;
        const Pos pos{seq, kvh * G + g, kvh, length - 1,
                      Variant::kHasMask || Variant::kHasScoreMod ? priv.position(u) : 0};
        if (Variant::kHasMask && visible) visible = Variant::mask(pos, t.params);
        if (Variant::kHasScoreMod && visible) dot = Variant::score_mod(dot, pos, t.params) * kLog2e;
        s[j][g] = visible ? dot : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = m_run[g];
#pragma unroll
      for (int j = 0; j < kRows; ++j) mx = fmaxf(mx, s[j][g]);
      const float ref = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(m_run[g] - ref);
      m_run[g] = mx;
      l_run[g] *= alpha;
#pragma unroll
      for (int e = 0; e < kVec; ++e) o[g][e] *= alpha;
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        s[j][g] = exp2f(s[j][g] - ref);
        l_run[g] += s[j][g];
      }
    }

    cp_async_wait<2>();  // V of stage i
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      if (token_of(i, j) >= ntok || !lane_used) continue;
      float vf[kVec];
      widen<KvT, kVec>(
          lds(reinterpret_cast<const Vec*>(vs + (size_t(stage) * kKT + grp * kRows + j) * D) + tx),
          vf);
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int e = 0; e < kVec; ++e) o[g][e] = fmaf(s[j][g], vf[e], o[g][e]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every copy has landed: the ring becomes the merge area

  float* mrg = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    float* w = mrg + (size_t(grp) * G + g) * Pl::kMergePitch;
    if (lane_used)
#pragma unroll
      for (int e = 0; e < kVec; e += 4)
        sts(reinterpret_cast<float4*>(w + tx * kVec + e),
            make_float4(o[g][e], o[g][e + 1], o[g][e + 2], o[g][e + 3]));
    if (tx == 0) sts(reinterpret_cast<float2*>(w + D), make_float2(m_run[g], l_run[g]));
  }
  __syncthreads();

  phase2_finish<Pl, Cfg>(ctx, t, io, mrg, req, split, sp.used, io_row, partials);
}

// Tensor cores (G >= 4): the row's G query heads, padded to one m16 block, over this split's
// tiles of the row's tokens after its shared chunks (all of them in sequence-first), through the
// tensor-core engine; its warps' states merge with the partials in phase2_finish.
template <class Cfg, class Variant>
CA_DEVICE void phase2_tc_body(const DecodeView& ctx, const DecodeTensors& t, const Phase2Io& io) {
  using Pl = Phase2Plan<Cfg>;
  constexpr int G = Pl::G, D = Pl::D, C = Pl::C;
  extern __shared__ __align__(128) unsigned char smem[];
  const int req = blockIdx.x, split = blockIdx.z;
  const int row = warp_uniform([&] { return ctx.request_row(req); });
  const int length = warp_uniform([&] { return ctx.row_length(row); });
  const int shared = warp_uniform([&] { return ctx.row_shared_chunks(row); });
  const int ntok = length > shared * C ? length - shared * C : 0;
  const SplitTiles sp = split_tiles<Pl>(ntok, io.splits);
  if (split >= sp.used) return;
  // This split's tokens [u0, u0 + n) of the private part: whole tiles, so whole chunks.
  const int u0 = split * sp.per * Pl::kKT;
  const int n = ntok - u0 < sp.per * Pl::kKT ? ntok - u0 : sp.per * Pl::kKT;
  const int io_row = warp_uniform([&] { return ctx.row_io(row); });
  const PartialRange partials =
      io.part_o == nullptr ? PartialRange{0, 0}
                           : PartialRange{warp_uniform([&] { return ctx.row_partials_begin(row); }),
                                          warp_uniform([&] { return ctx.row_partials_end(row); })};
  const int chunk0 = warp_uniform([&] { return ctx.row_chunk_offset(row); }) + shared + u0 / C;
  const TcWork work{chunk0, n > 0 ? n : 0, shared * C + u0, row, 0, G};
  TcState<1, D> st;
  tc_attend<typename Pl::TcEng, Cfg, Variant, 1, TcList::kRowChunkSlots>(ctx, t, work, st);

  // Each warp's states of the G live rows (accumulator rows gq and gq + 8) into the merge area.
  __syncthreads();  // (the ring's last reads are done)
  float* mrg = reinterpret_cast<float*>(smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int g = gq + 8 * h;
    if (g >= G) continue;
    float* w = mrg + (size_t(warp) * G + g) * Pl::kMergePitch;
#pragma unroll
    for (int k = 0; k < D / 8; ++k)
      sts(reinterpret_cast<float2*>(w + k * 8 + 2 * tq),
          make_float2(st.o[0][k][2 * h], st.o[0][k][2 * h + 1]));
    if (tq == 0) sts(reinterpret_cast<float2*>(w + D), make_float2(st.m[0][h], st.l[0][h]));
  }
  __syncthreads();
  phase2_finish<Pl, Cfg>(ctx, t, io, mrg, req, split, sp.used, io_row, partials);
}

// grid (requests, Hkv, splits), block kThreads, dynamic shared memory kSmemBytes (of
// Phase2Plan<Cfg, kListed>).
template <class Cfg, class Variant, bool kListed = false>
__global__ void __launch_bounds__(Phase2Plan<Cfg, kListed>::kThreads,
                                  Phase2Plan<Cfg, kListed>::kMinBlocks)
    decode_phase2_kernel(const DecodeView ctx, const DecodeTensors t, const Phase2Io io) {
  if constexpr (Phase2Plan<Cfg, kListed>::kTensorCores)
    phase2_tc_body<Cfg, Variant>(ctx, t, io);
  else
    phase2_cc_body<Cfg, Variant, kListed>(ctx, t, io);
}

// Split-KV merge: one CTA per (row, KV head) combines the splits' states and the row's phase-1
// partials and writes the output. A separate launch, so the splits' results are visible to ldg.
template <class Cfg, bool kListed = false>
__global__ void __launch_bounds__(Phase2Plan<Cfg, kListed>::kThreads,
                                  Phase2Plan<Cfg, kListed>::kMinBlocks)
    decode_merge_splits_kernel(const DecodeView ctx, const DecodeTensors t, const Phase2Io io) {
  using Pl = Phase2Plan<Cfg, kListed>;
  using OutT = typename Cfg::OutT;
  constexpr int G = Pl::G, D = Pl::D, Hq = Cfg::kQHeads;
  const int req = blockIdx.x, kvh = blockIdx.y;
  const int row = warp_uniform([&] { return ctx.request_row(req); });
  const int length = warp_uniform([&] { return ctx.row_length(row); });
  const SplitTiles tiles = split_tiles<Pl>(
      PrivateChunks<Pl::C, kListed>::template of<Cfg::kKvHeads>(ctx, io.sel, row, kvh, length).ntok,
      io.splits);
  if (tiles.used <= 1) return;  // phase 2 wrote this row's output itself
  const int io_row = warp_uniform([&] { return ctx.row_io(row); });
  const PartialRange partials =
      io.part_o == nullptr ? PartialRange{0, 0}
                           : PartialRange{warp_uniform([&] { return ctx.row_partials_begin(row); }),
                                          warp_uniform([&] { return ctx.row_partials_end(row); })};
  // Each split's lse is read once, into shared memory, for all of its head's elements.
  extern __shared__ __align__(128) unsigned char smem[];
  float* lse_s = reinterpret_cast<float*>(smem);  // [G][kMaxSplits]
  for (int e = threadIdx.x; e < G * tiles.used; e += Pl::kThreads) {
    const int g = e / tiles.used, sp = e % tiles.used;
    sts(lse_s + g * Pl::kMaxSplits + sp,
        ldg<CA_TRAFFIC_PARTIAL>(io.split_lse + (size_t(req) * io.splits + sp) * Hq + kvh * G + g));
  }
  __syncthreads();
  OutT* out = static_cast<OutT*>(t.out) + (size_t(io_row) * Hq + kvh * G) * D;
  for (int e = threadIdx.x; e < G * D; e += Pl::kThreads) {
    const int g = e / D, d = e % D, h = kvh * G + g;
    SoftmaxState state;
    float acc = 0.f;
    for (int sp = 0; sp < tiles.used; ++sp) {
      const size_t slot = (size_t(req) * io.splits + sp) * Hq + h;
      const SoftmaxState::Rescale f = state.merge_lse(lds(lse_s + g * Pl::kMaxSplits + sp));
      if (f.other == 0.f) {
        acc *= f.self;
        continue;
      }
      acc = acc * f.self + ldg<CA_TRAFFIC_PARTIAL>(io.split_o + slot * D + d) * f.other;
    }
    merge_phase1(ctx, io, partials, h, d, state, acc, Hq, D);
    stg<CA_TRAFFIC_OUT>(out + e, from_float<OutT>(acc * state.inv_l()));
  }
}

// ---------------------------------------------------------------------------------------------
// Host: the split factor and the workspace.

// CTAs per (row, KV head): enough to give every SM kMinBlocks CTAs when rows x KV heads cannot,
// at most kMaxSplits, and no more than the longest row's tokens (after its shared chunks) fill at
// kMinSplitTiles tiles each (the kernel keeps >= 128 tokens per split; a CTA past a row's last
// split only returns, but it still costs a launch slot and its context loads).
template <class Cfg>
inline int phase2_splits(int num_rows, int sm_count, int64_t max_row_tokens) {
  using Pl = Phase2Plan<Cfg>;
  const int64_t ctas = int64_t(num_rows) * Cfg::kKvHeads;
  const int64_t slots = int64_t(sm_count) * Pl::kMinBlocks;
  if (ctas <= 0 || ctas * 2 > slots) return 1;
  int64_t s = slots / ctas;
  const int64_t tiles = (max_row_tokens + Pl::kKT - 1) / Pl::kKT;
  const int64_t useful = (tiles + Pl::kMinSplitTiles - 1) / Pl::kMinSplitTiles;
  if (s > useful) s = useful;
  if (s < 1) s = 1;
  return int(s > Pl::kMaxSplits ? Pl::kMaxSplits : s);
}

// The most tokens a requested row attends to in phase 2 (after its shared chunks), from the host
// copy of the context.
template <class Cfg>
inline int64_t phase2_max_row_tokens(const KernelContext& host) {
  int64_t most = 0;
  for (int i = 0; i < host.num_requests(); ++i) {
    const int r = host.request_row(i);
    const int64_t n =
        int64_t(host.row_length(r)) - int64_t(host.row_shared_chunks(r)) * Cfg::kChunk;
    if (n > most) most = n;
  }
  return most;
}

// Workspace of a split decode: o [requests * splits][Hq][D] then lse [requests * splits][Hq], f32.
template <class Cfg>
inline uint64_t phase2_workspace_bytes(int num_rows, int splits) {
  if (splits <= 1) return 0;
  const uint64_t n = uint64_t(num_rows) * splits * Cfg::kQHeads;
  return n * Cfg::kHeadDim * 4 + n * 4;
}

}  // namespace ca

#endif  // CHUNKATTN_DECODE_PHASE2_CUH_
