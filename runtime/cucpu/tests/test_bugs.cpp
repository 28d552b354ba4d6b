// Planted bugs: every one must be caught, at the right place, and the process must go on working.
//
// A kernel bug is marked `// BUG: <name>` on the line the diagnostic must name; test/cucpu-bugs
// finds the marker and compares it with the error's file:line. After every failed launch a good
// kernel runs in the same process and must give the right answer ("recovered").
// Output: RESULT lines (check.h). Memory-safety bugs are in test_asan.cpp, races in test_tsan.cpp.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "chunkattn/prims.cuh"

// ---- the bugs --------------------------------------------------------------------------------

// __syncthreads in both branches of a divergent if: two call sites.
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();  // BUG: divergent_barrier
  }
  out[threadIdx.x] = 1.f;
}

// A shuffle that reads a lane outside its mask.
__global__ void shfl_source_outside_mask(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_xor_sync(0x0000ffffu, v, 16);  // BUG: shfl_source_outside_mask
  out[threadIdx.x] = v;
}

// A lane executes a collective whose mask does not include it.
__global__ void lane_not_in_mask(float* out) {
  const unsigned mask = threadIdx.x == 0 ? 0xfffffffeu : 0xffffffffu;
  out[threadIdx.x] = float(__ballot_sync(mask, threadIdx.x & 1));  // BUG: lane_not_in_mask
}

// A full-mask shuffle executed by half a warp; the other half has returned.
__global__ void shfl_after_half_warp_exit(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] =
      __shfl_sync(0xffffffffu, 1.f * threadIdx.x, 0);  // BUG: shfl_after_half_warp_exit
}

// mma.sync needs the whole warp; lanes 0..7 have returned.
__global__ void mma_after_exit(float* out) {
  if (threadIdx.x < 8) return;
  uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  ca::mma_m16n8k16_f16(d, a, b, d);  // BUG: mma_after_exit
  out[threadIdx.x] = d[0];
}

// __syncwarp with a full mask by lanes 16..31, while lanes 0..15 sync among themselves and return.
__global__ void syncwarp_waits_for_exited(float* out) {
  if (threadIdx.x < 16) {
    __syncwarp(0x0000ffffu);
    return;
  }
  __syncwarp();  // BUG: syncwarp_waits_for_exited
  out[threadIdx.x] = 1.f;
}

// Lanes of one warp wait in different full-mask collectives: the even lanes (lane 0 first) in the
// ballot, the odd ones in the shuffle. The diagnostic names lane 0's collective.
__global__ void mismatched_collectives(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x & 1)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    v = float(__ballot_sync(0xffffffffu, v > 3));  // BUG: mismatched_collectives
  out[threadIdx.x] = v;
}

// Half of warp 1 waits in a full-warp shuffle while the rest of the block waits at __syncthreads.
__global__ void barrier_deadlock(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x >= 32 && threadIdx.x < 48)
    v = __shfl_sync(0xffffffffu, v, 0);  // BUG: barrier_deadlock
  __syncthreads();
  out[threadIdx.x] = v;
}

// ldmatrix row addresses must be 16-byte aligned.
__global__ void ldmatrix_misaligned(float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  uint32_t r[4];
  ca::ldmatrix_x4(r, smem + threadIdx.x * 16 + 8);  // BUG: ldmatrix_misaligned
  out[threadIdx.x] = float(r[0]);
}

// A 16-byte global load from an address that is only 4-byte aligned.
__global__ void ldg_misaligned(const float* in, float* out) {
  const uint4* p = reinterpret_cast<const uint4*>(in + 1 + 4 * threadIdx.x);
  const uint4 v = ca::ldg<CA_TRAFFIC_KV>(p);  // BUG: ldg_misaligned
  out[threadIdx.x] = float(v.x);
}

// cp.async of 16 bytes from an 8-byte aligned source.
__global__ void cp_async_misaligned(const float* in, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  const float* src = in + 2 + 4 * threadIdx.x;
  ca::cp_async<CA_TRAFFIC_KV, 16>(smem + threadIdx.x * 16, src);  // BUG: cp_async_misaligned
  ca::cp_async_wait_all();
  out[threadIdx.x] = 1.f;
}

// __trap() in one thread.
__global__ void trap_in_one_thread(float* out) {
  if (threadIdx.x == 5) __trap();  // BUG: trap_in_one_thread
  out[threadIdx.x] = 1.f;
}

// A C++ exception escapes the kernel (not CUDA, but it must not take the process down).
__global__ void exception_escapes(float* out) {
  if (threadIdx.x == 3) throw std::out_of_range("index 99 of 4");
  out[threadIdx.x] = 1.f;
}

// Only blocks 3 and up go wrong (a full-warp shuffle by 8 lanes, the others return); the error
// names block 3 whatever the number of workers.
__global__ void fails_from_block_3(float* out) {
  float v = 0.f;
  if (blockIdx.x >= 3 && threadIdx.x < 8)
    v = __shfl_sync(0xffffffffu, v, 0);  // BUG: fails_from_block_3
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// The result of cp.async read before cp.async.wait_group: stale shared memory, as on a GPU.
__global__ void cp_async_read_before_wait(const float* x, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  ca::cp_async<CA_TRAFFIC_KV, 16>(&s[threadIdx.x * 4], &x[threadIdx.x * 4]);
  ca::cp_async_commit();
  // missing: ca::cp_async_wait<0>();
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x * 4 + 5) % 128];
}

// Dynamic shared memory read before anything wrote it: every block starts with 0xff bytes (NaN).
__global__ void smem_read_before_write(float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  out[threadIdx.x] = reinterpret_cast<float*>(smem)[threadIdx.x];
}

// Tree reduction with the barrier inside the loop forgotten: the result depends on the schedule.
__global__ void racy_tree_reduce(const float* x, float* out) {
  __shared__ float s[256];
  s[threadIdx.x] = x[blockIdx.x * 256 + threadIdx.x];
  __syncthreads();
  for (unsigned stride = 128; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    if (stride >= 32) __syncwarp();  // missing __syncthreads()
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// ---- the good kernel run after every failure ---------------------------------------------------

__global__ void good_sum(const float* x, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  s[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  float v = s[0];
  v = __shfl_sync(0xffffffffu, v, 0);
  if (threadIdx.x == 0) *out = v;
}

static bool good_launch_works() {
  std::vector<float> x(256);
  for (int i = 0; i < 256; ++i) x[i] = float(i % 17);
  float out = -1.f;
  const cucpu::Error e =
      cucpu::launch(good_sum, dim3(1), dim3(256), 256 * sizeof(float), x.data(), &out);
  float want = 0.f;
  for (float v : x) want += v;
  return e.ok() && out == want;
}

static void expect_error(const char* name, const cucpu::Error& e) {
  const bool recovered = good_launch_works();
  Result(std::string("bug/") + name)
      .error(e)
      .flag("recovered", recovered)
      .print(!e.ok() && recovered);
}

int main() {
  std::vector<float> x(1024), out(1024);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 7);
  alignas(16) static float aligned[1024];

  expect_error("divergent_barrier",
               cucpu::launch(divergent_barrier, dim3(1), dim3(32), 0, out.data()));
  expect_error("shfl_source_outside_mask",
               cucpu::launch(shfl_source_outside_mask, dim3(1), dim3(32), 0, out.data()));
  expect_error("lane_not_in_mask",
               cucpu::launch(lane_not_in_mask, dim3(1), dim3(32), 0, out.data()));
  expect_error("shfl_after_half_warp_exit",
               cucpu::launch(shfl_after_half_warp_exit, dim3(1), dim3(32), 0, out.data()));
  expect_error("mma_after_exit", cucpu::launch(mma_after_exit, dim3(1), dim3(32), 0, out.data()));
  expect_error("syncwarp_waits_for_exited",
               cucpu::launch(syncwarp_waits_for_exited, dim3(1), dim3(32), 0, out.data()));
  expect_error("mismatched_collectives",
               cucpu::launch(mismatched_collectives, dim3(1), dim3(32), 0, out.data()));
  expect_error("barrier_deadlock",
               cucpu::launch(barrier_deadlock, dim3(1), dim3(64), 0, out.data()));
  expect_error("ldmatrix_misaligned",
               cucpu::launch(ldmatrix_misaligned, dim3(1), dim3(32), 1024, out.data()));
  expect_error("ldg_misaligned", cucpu::launch(ldg_misaligned, dim3(1), dim3(32), 0,
                                               static_cast<const float*>(aligned), out.data()));
  expect_error("cp_async_misaligned",
               cucpu::launch(cp_async_misaligned, dim3(1), dim3(32), 1024,
                             static_cast<const float*>(aligned), out.data()));
  expect_error("trap_in_one_thread", cucpu::launch_named("trap_in_one_thread", trap_in_one_thread,
                                                         dim3(2), dim3(32), 0, out.data()));
  expect_error("exception_escapes",
               cucpu::launch(exception_escapes, dim3(1), dim3(32), 0, out.data()));
  expect_error("fails_from_block_3",
               cucpu::launch(fails_from_block_3, dim3(8), dim3(32), 0, out.data()));

  // Invalid launches are refused before anything runs.
  expect_error("invalid/empty_block",
               cucpu::launch(good_sum, dim3(1), dim3(0), 0, static_cast<const float*>(x.data()),
                             out.data()));
  expect_error("invalid/block_too_large",
               cucpu::launch(good_sum, dim3(1), dim3(2048), 0, static_cast<const float*>(x.data()),
                             out.data()));
  expect_error("invalid/dynamic_smem_too_large",
               cucpu::launch(good_sum, dim3(1), dim3(32), 1 << 20,
                             static_cast<const float*>(x.data()), out.data()));
  {
    const char* old = std::getenv("CUCPU_ORDER");
    const std::string saved = old ? old : "";
    setenv("CUCPU_ORDER", "sideways", 1);
    const cucpu::Error e = cucpu::launch(good_sum, dim3(1), dim3(32), 128,
                                         static_cast<const float*>(x.data()), out.data());
    if (old)
      setenv("CUCPU_ORDER", saved.c_str(), 1);
    else
      unsetenv("CUCPU_ORDER");
    expect_error("invalid/bad_cucpu_order", e);
  }

  // Many failed launches in a row leave nothing behind.
  {
    int caught = 0;
    for (int i = 0; i < 50; ++i)
      caught += !cucpu::launch(barrier_deadlock, dim3(2), dim3(256), 0, out.data()).ok();
    const bool recovered = good_launch_works();
    Result("recovery/50_failed_launches_then_good")
        .num("caught", caught)
        .flag("recovered", recovered)
        .print(caught == 50 && recovered);
  }

  // Silent bugs the shim makes visible.
  {
    std::vector<float> o(128, -1.f);
    const cucpu::Error e = cucpu::launch(cp_async_read_before_wait, dim3(1), dim3(32), 512,
                                         static_cast<const float*>(x.data()), o.data());
    bool stale = false;
    for (int i = 0; i < 32; ++i) stale |= o[i] != x[(i * 4 + 5) % 128];
    Result("silent/cp_async_read_before_wait").error(e).flag("stale", stale).print(e.ok() && stale);
  }
  {
    std::vector<float> o(64, 0.f);
    const cucpu::Error e = cucpu::launch(smem_read_before_write, dim3(1), dim3(64), 256, o.data());
    bool all_nan = true;
    for (float v : o) all_nan &= std::isnan(v);
    Result("silent/smem_read_before_write_is_nan")
        .error(e)
        .flag("nan", all_nan)
        .print(e.ok() && all_nan);
  }
  {  // The missing barrier changes the result under another schedule.
    const char* orders[3] = {"forward", "reverse", "random"};
    float sums[3];
    const char* old = std::getenv("CUCPU_ORDER");
    const std::string saved = old ? old : "";
    for (int k = 0; k < 3; ++k) {
      setenv("CUCPU_ORDER", orders[k], 1);
      std::vector<float> r(4, 0.f);
      (void)cucpu::launch(racy_tree_reduce, dim3(4), dim3(256), 0,
                          static_cast<const float*>(x.data()), r.data());
      sums[k] = r[0];
    }
    if (old)
      setenv("CUCPU_ORDER", saved.c_str(), 1);
    else
      unsetenv("CUCPU_ORDER");
    double want = 0;
    for (int i = 0; i < 256; ++i) want += x[i];
    Result("silent/missing_syncthreads_depends_on_order")
        .num("forward", sums[0])
        .num("reverse", sums[1])
        .num("random", sums[2])
        .num("true", want)
        .print(sums[0] != sums[1] || sums[0] != sums[2] || sums[0] != want);
  }
  std::printf("%d check(s) failed\n", g_failed_checks);
  return g_failed_checks != 0;
}
