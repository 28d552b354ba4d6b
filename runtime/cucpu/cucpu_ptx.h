// cucpu_ptx.h — CPU emulation of the warp-level PTX the attention kernels use:
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
//   ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16
//   cp.async.{ca,cg}.shared.global (4, 8, 16 bytes, optional zero-fill) + commit_group / wait_group
// Kernels do not call these directly: chunkattn/prims.cuh wraps each instruction (inline PTX for
// nvcc, these functions for the CPU build).
//
// Fragment layouts follow the PTX ISA (sections "Matrix Fragments for mma.m16n8k16 with floating
// point type" and "Warp-level matrix load instruction: ldmatrix"), with groupID g = lane >> 2 and
// threadID_in_group t = lane % 4. ldmatrix -> mma reproduces a matmul (tested); the layouts have
// not been compared with silicon.
// Included by cucpu.h; not a public entry point.
#pragma once

namespace cucpu::ptx {

// ---- mma.m16n8k16 -------------------------------------------------------------------------------
// A (16x16, row-major): register r in 0..3 holds elements a[2r] (low 16 bits) and a[2r+1] (high).
//   row(a_i) = g + 8*((i>>1)&1)          col(a_i) = 2t + (i&1) + 8*(i>=4)
// B (16x8 = KxN, column-major): register r in 0..1 holds b[2r], b[2r+1].
//   row(b_i) = 2t + (i&1) + 8*(i>=2)      col(b_i) = g
// C, D (16x8, f32): c0..c3
//   row(c_i) = g + 8*(i>=2)               col(c_i) = 2t + (i&1)
inline int a_row(int lane, int i) { return (lane >> 2) + 8 * ((i >> 1) & 1); }
inline int a_col(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >= 4); }
inline int b_row(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >= 2); }
inline int b_col(int lane, int) { return lane >> 2; }
inline int c_row(int lane, int i) { return (lane >> 2) + 8 * (i >= 2); }
inline int c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

struct MmaIn {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};
static_assert(sizeof(MmaIn) <= kLaneBytes);

inline float f16_bits_to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <bool kBf16>
inline void mma_m16n8k16_compute(const LaneBytes* in, LaneBytes* out, uint32_t, const void*) {
  float A[16][16], B[16][8], C[16][8];
  auto cvt = [](uint16_t h) { return kBf16 ? bf16_bits_to_float(h) : f16_bits_to_float(h); };
  for (int l = 0; l < 32; ++l) {
    MmaIn m;
    std::memcpy(&m, in[l], sizeof m);
    for (int i = 0; i < 8; ++i)
      A[a_row(l, i)][a_col(l, i)] = cvt(uint16_t(m.a[i >> 1] >> (16 * (i & 1))));
    for (int i = 0; i < 4; ++i)
      B[b_row(l, i)][b_col(l, i)] = cvt(uint16_t(m.b[i >> 1] >> (16 * (i & 1))));
    for (int i = 0; i < 4; ++i) C[c_row(l, i)][c_col(l, i)] = m.c[i];
  }
  for (int l = 0; l < 32; ++l) {
    float d[4];
    for (int i = 0; i < 4; ++i) {
      const int r = c_row(l, i), c = c_col(l, i);
      // Products of two f16 / bf16 values are exact in f32; accumulate in f32 in k order.
      float acc = C[r][c];
      for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][c];
      d[i] = acc;
    }
    std::memcpy(out[l], d, sizeof d);
  }
}

// D = A * B + C. A warp collective: all 32 lanes must execute it.
template <bool kBf16>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                         const float (&c)[4], const std::source_location& site) {
  MmaIn m;
  std::memcpy(m.a, a, sizeof m.a);
  std::memcpy(m.b, b, sizeof m.b);
  std::memcpy(m.c, c, sizeof m.c);
  warp_collective(kBf16 ? "mma.sync.m16n8k16.bf16" : "mma.sync.m16n8k16.f16", 0xffffffffu,
                  &mma_m16n8k16_compute<kBf16>, nullptr, &m, sizeof m, d, sizeof d, site);
}

// ---- ldmatrix.m8n8.b16 -------------------------------------------------------------------------
// Lanes 8m..8m+7 give the addresses of the 8 rows (16 bytes each, 16-byte aligned) of matrix m;
// the other lanes' addresses are ignored. Each such lane reads its own row (so sanitizers see the
// read where it happens); the last lane to arrive distributes. Register m of lane l:
//   plain : row l>>2, columns 2(l&3), 2(l&3)+1 (low, high half)
//   .trans: element (l>>2, 2(l&3)+j) of the transposed matrix, i.e. column l>>2 of rows
//           2(l&3) and 2(l&3)+1
template <int kNum, bool kTrans>
inline void ldmatrix_compute(const LaneBytes* in, LaneBytes* out, uint32_t, const void*) {
  for (int l = 0; l < 32; ++l) {
    uint32_t r[kNum];
    for (int m = 0; m < kNum; ++m) {
      uint16_t lo, hi;
      if (!kTrans) {
        const unsigned char* p = in[8 * m + (l >> 2)] + 4 * (l & 3);
        std::memcpy(&lo, p, 2);
        std::memcpy(&hi, p + 2, 2);
      } else {
        std::memcpy(&lo, in[8 * m + 2 * (l & 3)] + 2 * (l >> 2), 2);
        std::memcpy(&hi, in[8 * m + 2 * (l & 3) + 1] + 2 * (l >> 2), 2);
      }
      r[m] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
    std::memcpy(out[l], r, sizeof r);
  }
}

template <int kNum, bool kTrans>
inline void ldmatrix(uint32_t (&r)[kNum], const void* row, const std::source_location& site) {
  static_assert(kNum == 1 || kNum == 2 || kNum == 4);
  const char* name = kNum == 1   ? (kTrans ? "ldmatrix.x1.trans" : "ldmatrix.x1")
                     : kNum == 2 ? (kTrans ? "ldmatrix.x2.trans" : "ldmatrix.x2")
                                 : (kTrans ? "ldmatrix.x4.trans" : "ldmatrix.x4");
  Thread& t = running_thread(name);
  unsigned lane;
  {
    Untracked untracked;
    lane = t.lane;
  }
  unsigned char bytes[16] = {};
  const bool supplies_row = lane < 8u * kNum;
  if (supplies_row) {
    if (reinterpret_cast<uintptr_t>(row) & 15)
      fail(t, ErrorKind::kMisaligned, site,
           std::string(name) + " at " + format_location(site) + ": lane " + std::to_string(lane) +
               " gives row address " + std::to_string(reinterpret_cast<uintptr_t>(row)) +
               ", which is not 16-byte aligned");
    std::memcpy(bytes, row, 16);
    mem_access(MemSpace::kShared, 0, row, 16, site);  // 8 rows (one matrix) per phase
  }
  warp_collective(name, 0xffffffffu, &ldmatrix_compute<kNum, kTrans>, nullptr, bytes, sizeof bytes,
                  r, sizeof r, site);
}

// ---- cp.async ----------------------------------------------------------------------------------
// A copy is performed when a cp.async.wait_group covering its group runs, by the thread that
// issued it. Reading the destination before the wait (and the barrier after it) shows stale data,
// as a missing wait would on the GPU (where it is a race).
inline void cp_async(void* dst, const void* src, uint32_t bytes, uint32_t src_bytes,
                     const std::source_location& site) {
  Thread& t = running_thread("cp.async");
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & (bytes - 1))
    fail(t, ErrorKind::kMisaligned, site,
         "cp.async of " + std::to_string(bytes) + " bytes at " + format_location(site) +
             ": shared address " + std::to_string(reinterpret_cast<uintptr_t>(dst)) +
             " and global address " + std::to_string(reinterpret_cast<uintptr_t>(src)) +
             " must both be " + std::to_string(bytes) + "-byte aligned");
#if defined(CUCPU_ASAN)
  // Read the source now, so that ASan reports an out-of-bounds source where the copy is issued.
  unsigned char probe[16];
  std::memcpy(probe, src, std::min(src_bytes, bytes) & 31);
#endif
  Untracked untracked;
  t.async_copies.push_back({dst, src, bytes, std::min(src_bytes, bytes), t.async_committed});
}

inline void cp_async_commit() {
  Thread& t = running_thread("cp.async.commit_group");
  Untracked untracked;
  ++t.async_committed;
}

// Performs the copies of all committed groups but the newest `pending` ones.
inline void cp_async_wait(int pending) {
  Thread& t = running_thread("cp.async.wait_group");
  uint64_t limit;
  {
    Untracked untracked;
    limit = t.async_committed > uint64_t(pending) ? t.async_committed - uint64_t(pending) : 0;
  }
  for (;;) {
    Thread::AsyncCopy c;
    {
      Untracked untracked;
      if (t.async_done == t.async_copies.size() || t.async_copies[t.async_done].group >= limit) {
        if (t.async_done == t.async_copies.size()) {
          t.async_copies.clear();
          t.async_done = 0;
        }
        break;
      }
      c = t.async_copies[t.async_done++];
    }
    // The thread's own accesses: visible to ASan and TSan.
    std::memcpy(c.dst, c.src, c.src_bytes);
    if (c.src_bytes < c.bytes)
      std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
  }
}

}  // namespace cucpu::ptx
