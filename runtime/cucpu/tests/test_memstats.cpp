// The shim costs warp-wide memory instructions as a GPU serves them: shared-memory wavefronts (32
// banks x 4 bytes; 8-byte accesses in 2 phases, 16-byte accesses and ldmatrix rows in 4 phases;
// a broadcast word is free) and global 32-byte sectors per traffic category. Every case below has
// a hand-computed expected count; planted bank conflicts and uncoalesced reads must cost more.
//
// Build: like test_kernels.cpp (emuFlags). Output: RESULT lines (check.h).
#include <cstdio>
#include <string>
#include <vector>

#include "check.h"
#include "chunkattn/prims.cuh"

// Access patterns. Each kernel repeats its instruction `reps` times per thread with a barrier in
// between some of them, so grouping across barriers and loops is exercised too.
enum Pattern : int {
  kF32Stride1,        // lane reads float [lane]                    1 wavefront
  kF32Stride2,        // float [2 lane]: 2-way conflict              2
  kF32Stride32,       // float [32 lane]: 32-way conflict            32
  kF32Broadcast,      // float [0] for every lane                     1
  kF32Half,           // float [lane], lanes 0..15 only               1
  kU16RowStride,      // half [lane * 128] (256 B stride, lane=token) 32
  kU16Stride1,        // half [lane]                                  1
  kU64Stride1,        // 8-byte [lane]: 2 phases of 16 lanes          2
  kU128Stride1,       // 16-byte [lane]: 4 phases of 8 lanes          4
  kU128TwoRows,       // 16-byte, lanes 0-15 row 0, 16-31 row 1 (256 B rows)  4
  kU128SameBank,      // 16-byte [lane * 8]: (128 B stride) 8-way per phase  32
  kStoreF32Stride33,  // float store [33 lane]: conflict-free (padding)  1
};

__global__ void shared_pattern_kernel(int pattern, int reps, float* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int lane = threadIdx.x % 32;
  float* f = reinterpret_cast<float*>(smem);
  const __half* h = reinterpret_cast<const __half*>(smem);
  float acc = 0.f;
  for (int i = threadIdx.x; i < 8192; i += blockDim.x) ca::sts(&f[i], 1.f);  // costed too
  __syncthreads();
  for (int r = 0; r < reps; ++r) {
    switch (pattern) {
      case kF32Stride1:
        acc += ca::lds(&f[lane]);
        break;
      case kF32Stride2:
        acc += ca::lds(&f[2 * lane]);
        break;
      case kF32Stride32:
        acc += ca::lds(&f[32 * lane]);
        break;
      case kF32Broadcast:
        acc += ca::lds(&f[0]);
        break;
      case kF32Half:
        if (lane < 16) acc += ca::lds(&f[lane]);
        break;
      case kU16RowStride:
        acc += __half2float(ca::lds(&h[lane * 128]));
        break;
      case kU16Stride1:
        acc += __half2float(ca::lds(&h[lane]));
        break;
      case kU64Stride1:
        acc += ca::lds(reinterpret_cast<const float2*>(f) + lane).x;
        break;
      case kU128Stride1:
        acc += ca::lds(reinterpret_cast<const float4*>(f) + lane).x;
        break;
      case kU128TwoRows:
        acc += ca::lds(reinterpret_cast<const float4*>(smem + (lane / 16) * 256) + lane % 16).x;
        break;
      case kU128SameBank:
        acc += ca::lds(reinterpret_cast<const float4*>(f) + 8 * lane).x;
        break;
      case kStoreF32Stride33:
        ca::sts(&f[33 * lane], acc);
        break;
    }
    if (r % 2 == 1) __syncthreads();
  }
  if (acc == -1.f) *sink = acc;  // keeps the loads
}

// ldmatrix.x4 from rows of `stride` bytes: lane l gives row (l & 15), column half (l >> 4).
__global__ void ldmatrix_kernel(int stride, float* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  for (int i = threadIdx.x; i < 4096; i += blockDim.x)
    ca::sts(reinterpret_cast<float*>(smem) + i, 0.f);
  __syncthreads();
  const int lane = threadIdx.x % 32;
  uint32_t r[4];
  ca::ldmatrix_x4(r, smem + (lane & 15) * stride + (lane >> 4) * 16);
  if (r[0] == 12345u) *sink = 1.f;
}

// Global reads: float at [lane * stride] (a KV category), uint4 at [lane] (Q), cp.async of 16
// bytes at [lane] (partial) with its shared side, and float stores at [lane] (out).
__global__ void global_pattern_kernel(const float* src, int stride, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int lane = threadIdx.x % 32;
  float acc = ca::ldg<CA_TRAFFIC_KV>(src + lane * stride);
  acc += ca::ldg<CA_TRAFFIC_Q>(reinterpret_cast<const float4*>(src) + lane).x;
  ca::cp_async<CA_TRAFFIC_PARTIAL, 16>(smem + 16 * lane, src + 4 * lane);
  ca::cp_async_wait_all();
  __syncthreads();
  ca::stg<CA_TRAFFIC_OUT>(out + blockIdx.x * blockDim.x + threadIdx.x, acc);
}

static cucpu::KernelStats stats_of(const std::string& name) {
  const auto table = cucpu::kernel_stats_snapshot();
  const auto it = table.find(name);
  return it == table.end() ? cucpu::KernelStats{} : it->second;
}

static void test_shared(const char* label, Pattern pattern, uint64_t per_instruction) {
  ca::traffic_reset();
  float sink = 0.f;
  const int warps = 4, reps = 6, blocks = 3;
  const cucpu::Error e = cucpu::launch_named(label, shared_pattern_kernel, dim3(blocks),
                                             dim3(32 * warps), 32768, int(pattern), reps, &sink);
  const cucpu::KernelStats s = stats_of(label);
  // The fill: 8192 floats, 64 sts of 32 contiguous floats per block, 1 wavefront each.
  const uint64_t fill = uint64_t(blocks) * 8192 / 32;
  const int lanes_per_warp = pattern == kF32Half ? 16 : 32;
  const uint64_t instructions = uint64_t(blocks) * warps * reps;
  const uint64_t expected = fill + instructions * per_instruction;
  Result(std::string("smem/") + label)
      .error(e)
      .num("wavefronts", double(s.mem.smem_wavefronts))
      .num("expected", double(expected))
      .num("instructions", double(s.mem.smem_instructions))
      .num("launches", double(s.launches))
      .print(e.ok() && s.launches == 1 && s.mem.smem_wavefronts == expected &&
             s.mem.smem_instructions == fill + instructions && lanes_per_warp > 0);
}

static void test_ldmatrix(int stride, uint64_t per_instruction) {
  ca::traffic_reset();
  float sink = 0.f;
  const std::string name = "ldmatrix_stride_" + std::to_string(stride);
  const cucpu::Error e =
      cucpu::launch_named(name.c_str(), ldmatrix_kernel, dim3(1), dim3(64), 16384, stride, &sink);
  const cucpu::KernelStats s = stats_of(name);
  // 4096 f32 stores of the fill (64 instructions x 1) + one ldmatrix per warp.
  const uint64_t expected = 4096 / 32 + 2 * per_instruction;
  Result("smem/" + name)
      .error(e)
      .num("wavefronts", double(s.mem.smem_wavefronts))
      .num("expected", double(expected))
      .print(e.ok() && s.mem.smem_wavefronts == expected);
}

// 256-byte aligned floats, so sector counts are exact by hand.
struct AlignedFloats {
  explicit AlignedFloats(size_t n) : p(static_cast<float*>(aligned_alloc(256, n * 4))) {
    for (size_t i = 0; i < n; ++i) p[i] = 1.f;
  }
  ~AlignedFloats() { free(p); }
  float* p;
};

static void test_global(int stride, uint64_t kv_sectors_per_warp) {
  ca::traffic_reset();
  AlignedFloats src(32 * 33 + 64), out(64);
  const std::string name = "global_stride_" + std::to_string(stride);
  const cucpu::Error e = cucpu::launch_named(name.c_str(), global_pattern_kernel, dim3(1), dim3(64),
                                             1024, src.p, stride, out.p);
  const auto m = stats_of(name).mem;
  // Two warps, each: 32 floats (KV), 32 x 16 contiguous bytes (Q: 16 sectors), 32 x 16-byte
  // cp.async (partial: 16 sectors; its shared side 4 wavefronts), 32 contiguous floats (out: 4).
  const bool ok = e.ok() && m.requested[CA_TRAFFIC_KV] == 2 * 32 * 4 &&
                  m.sectors[CA_TRAFFIC_KV] == 2 * kv_sectors_per_warp &&
                  m.requested[CA_TRAFFIC_Q] == 2 * 512 && m.sectors[CA_TRAFFIC_Q] == 2 * 16 &&
                  m.requested[CA_TRAFFIC_PARTIAL] == 2 * 512 &&
                  m.sectors[CA_TRAFFIC_PARTIAL] == 2 * 16 && m.requested[CA_TRAFFIC_OUT] == 256 &&
                  m.sectors[CA_TRAFFIC_OUT] == 2 * 4 && m.smem_wavefronts == 2 * 4 &&
                  m.global_instructions == 2 * 4;
  Result("global/" + name)
      .error(e)
      .num("kv_sectors", double(m.sectors[CA_TRAFFIC_KV]))
      .num("kv_requested", double(m.requested[CA_TRAFFIC_KV]))
      .num("kv_efficiency", double(m.requested[CA_TRAFFIC_KV]) / (32.0 * m.sectors[CA_TRAFFIC_KV]))
      .num("q_sectors", double(m.sectors[CA_TRAFFIC_Q]))
      .num("out_sectors", double(m.sectors[CA_TRAFFIC_OUT]))
      .print(ok);
}

// A planted conflict costs more than the same loads without it, and an uncoalesced read moves
// more sectors for the same bytes.
static void test_planted() {
  float sink = 0.f;
  uint64_t w[2];
  for (int planted = 0; planted < 2; ++planted) {
    ca::traffic_reset();
    const char* name = planted ? "planted" : "clean";
    cucpu::launch_named(name, shared_pattern_kernel, dim3(1), dim3(32), 32768,
                        int(planted ? kU16RowStride : kU16Stride1), 4, &sink);
    w[planted] = stats_of(name).mem.smem_wavefronts;
  }
  Result("smem/planted_conflict_costs_more")
      .num("clean", double(w[0]))
      .num("planted", double(w[1]))
      .print(w[1] > w[0] + 4 * 30);
  AlignedFloats src(32 * 33 + 64), out(64);
  double eff[2];
  for (int strided = 0; strided < 2; ++strided) {
    ca::traffic_reset();
    const char* name = strided ? "uncoalesced" : "coalesced";
    cucpu::launch_named(name, global_pattern_kernel, dim3(1), dim3(64), 1024, src.p,
                        strided ? 33 : 1, out.p);
    const auto m = stats_of(name).mem;
    eff[strided] = double(m.requested[CA_TRAFFIC_KV]) / (32.0 * m.sectors[CA_TRAFFIC_KV]);
  }
  Result("global/uncoalesced_lower_efficiency")
      .num("coalesced", eff[0])
      .num("uncoalesced", eff[1])
      .print(eff[0] == 1.0 && eff[1] == 0.125);
}

// CUCPU_MEMSTATS=0 records nothing, but the launch still counts.
static void test_disabled() {
  ca::traffic_reset();
  setenv("CUCPU_MEMSTATS", "0", 1);
  float sink = 0.f;
  const cucpu::Error e = cucpu::launch_named("disabled", shared_pattern_kernel, dim3(1), dim3(32),
                                             32768, int(kF32Stride32), 2, &sink);
  unsetenv("CUCPU_MEMSTATS");
  const auto s = stats_of("disabled");
  Result("smem/disabled").error(e).print(e.ok() && s.launches == 1 && s.mem.smem_wavefronts == 0);
}

int main() {
  test_shared("f32_stride1", kF32Stride1, 1);
  test_shared("f32_stride2", kF32Stride2, 2);
  test_shared("f32_stride32", kF32Stride32, 32);
  test_shared("f32_broadcast", kF32Broadcast, 1);
  test_shared("f32_half_warp", kF32Half, 1);
  test_shared("u16_row_stride_256B", kU16RowStride, 32);
  test_shared("u16_stride1", kU16Stride1, 1);
  test_shared("u64_stride1", kU64Stride1, 2);
  test_shared("u128_stride1", kU128Stride1, 4);
  test_shared("u128_two_rows", kU128TwoRows, 4);
  test_shared("u128_same_bank", kU128SameBank, 32);
  test_shared("store_f32_stride33", kStoreF32Stride33, 1);
  test_ldmatrix(272, 4);   // rows padded to D + 8 halves (D = 128): conflict-free
  test_ldmatrix(256, 32);  // unpadded: the 8 rows of a phase share their banks
  test_global(1, 4);
  test_global(32, 32);
  test_planted();
  test_disabled();
  std::printf("%d check(s) failed\n", g_failed_checks);
  return g_failed_checks != 0;
}
