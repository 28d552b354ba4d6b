// Micro-benchmarks of the shim (numbers for README.md; not part of the test suite):
//   g++ -std=c++20 -O2 -pthread -include runtime/cucpu/cucpu.h -I/usr/local/cuda/include \
//       -Itemplates/include runtime/cucpu/tests/bench_switch.cpp -o bench && CUCPU_WORKERS=1
//       ./bench
// Each figure is the best of 5 repetitions.
#include <chrono>
#include <cstdio>

#include "chunkattn/prims.cuh"

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

__global__ void empty_kernel(int* out) {
  if (threadIdx.x == 12345) *out = 1;
}
__global__ void barriers(int iters, int* out) {
  int x = threadIdx.x;
  for (int i = 0; i < iters; ++i) {
    __syncthreads();
    x += i;
  }
  if (x == -1) *out = x;
}
__global__ void shuffles(int iters, float* out) {
  float v = threadIdx.x;
  for (int i = 0; i < iters; ++i) v += __shfl_xor_sync(0xffffffffu, v, 1 + (i & 15));
  if (v == -1.f) *out = v;
}
__global__ void loads(int iters, const float* x, float* out) {
  float v = 0.f;
  for (int i = 0; i < iters; ++i) v += ca::ldg<CA_TRAFFIC_KV>(x + ((threadIdx.x + i) & 1023));
  if (v == -1.f) *out = v;
}
__global__ void mmas(int iters, float* out) {
  uint32_t a[4] = {0x3c003c00u, 0, 0, 0}, b[2] = {0x3c003c00u, 0};
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  for (int i = 0; i < iters; ++i) ca::mma_m16n8k16_f16(d, a, b, d);
  if (d[0] == -1.f) *out = d[0];
}

template <class F>
static double best(F f) {
  double b = 1e30;
  for (int r = 0; r < 5; ++r) {
    const double t0 = now();
    f();
    b = std::min(b, now() - t0);
  }
  return b;
}

int main() {
  int o = 0;
  float of = 0.f;
  static float x[1024];
  const double empty1 = best([&] { (void)cucpu::launch(empty_kernel, dim3(1), dim3(256), 0, &o); });
  std::printf("launch of 1 block x 256 threads (empty kernel): %.1f us\n", empty1 * 1e6);
  const double empty =
      best([&] { (void)cucpu::launch(empty_kernel, dim3(1024), dim3(256), 0, &o); });
  std::printf("empty kernel, 1024 x 256 threads: %.1f ns per thread (start + finish a fiber)\n",
              empty / (1024.0 * 256) * 1e9);
  const double bar = best([&] { (void)cucpu::launch(barriers, dim3(8), dim3(256), 0, 1000, &o); });
  std::printf("__syncthreads: %.1f ns per thread per barrier (one fiber switch each)\n",
              bar / (8.0 * 256 * 1000) * 1e9);
  const double shf = best([&] { (void)cucpu::launch(shuffles, dim3(8), dim3(256), 0, 1000, &of); });
  std::printf("__shfl_xor_sync: %.1f ns per lane per shuffle\n", shf / (8.0 * 256 * 1000) * 1e9);
  const double ld = best([&] {
    (void)cucpu::launch(loads, dim3(8), dim3(256), 0, 1000, static_cast<const float*>(x), &of);
  });
  std::printf("ca::ldg (checked, counted): %.1f ns per load\n", ld / (8.0 * 256 * 1000) * 1e9);
  const double mm = best([&] { (void)cucpu::launch(mmas, dim3(8), dim3(128), 0, 200, &of); });
  std::printf("mma.m16n8k16: %.2f us per warp-wide mma (%.0f k mma/s)\n",
              mm / (8.0 * 4 * 200) * 1e6, 8.0 * 4 * 200 / mm / 1e3);
}
