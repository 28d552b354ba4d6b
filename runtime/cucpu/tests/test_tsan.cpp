// Data races in kernels, for a build with -fsanitize=thread. Every CUDA thread is a TSan fiber;
// __syncthreads and __syncwarp are release/acquire edges and fiber switches carry no
// synchronization, so two accesses to the same memory not ordered by a barrier (or atomics) are
// reported. Each racy case must be reported at the line marked `// BUG: <case>`
// (test/cucpu-sanitizers); `recover` must report nothing. One case per process: test_tsan <case>.
//   racy_smem      tree reduction missing its __syncthreads           shared memory
//   racy_global    counter += 1 instead of atomicAdd                  global memory
//   racy_cp_async  cp.async data read by another thread with no barrier after the wait
//   recover        a deadlocking launch, then correct kernels: no race, right result
#include <cstdio>
#include <cstring>
#include <vector>

#include "chunkattn/prims.cuh"

__global__ void racy_smem(const float* x, float* out) {
  __shared__ float s[128];
  s[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  for (unsigned stride = 64; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];  // BUG: racy_smem
    // missing __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = s[0];
}

__global__ void racy_global(int* counter) {
  *counter += 1;  // BUG: racy_global
}

__global__ void racy_cp_async(const float* x, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  ca::cp_async<CA_TRAFFIC_KV, 16>(&s[threadIdx.x * 4], &x[threadIdx.x * 4]);
  ca::cp_async_wait_all();
  // missing __syncthreads(): the neighbour's copy may not have landed
  out[threadIdx.x] = s[(threadIdx.x * 4 + 4) % 256];  // BUG: racy_cp_async
}

__global__ void deadlock(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x >= 32 && threadIdx.x < 48) v = __shfl_sync(0xffffffffu, v, 0);
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void correct_sum(const float* x, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  s[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(out, s[0]);
}

int main(int argc, char** argv) {
  const char* which = argc > 1 ? argv[1] : "recover";
  std::vector<float> x(1024, 1.f), out(1024);
  cucpu::Error e;
  if (!strcmp(which, "racy_smem")) {
    e = cucpu::launch(racy_smem, dim3(1), dim3(128), 0, static_cast<const float*>(x.data()),
                      out.data());
  } else if (!strcmp(which, "racy_global")) {
    std::vector<int> counter(1, 0);
    e = cucpu::launch(racy_global, dim3(1), dim3(64), 0, counter.data());
  } else if (!strcmp(which, "racy_cp_async")) {
    e = cucpu::launch(racy_cp_async, dim3(1), dim3(64), 1024, static_cast<const float*>(x.data()),
                      out.data());
  } else if (!strcmp(which, "recover")) {
    const cucpu::Error bad = cucpu::launch(deadlock, dim3(2), dim3(64), 0, out.data());
    float sum = 0.f;
    e = cucpu::launch(correct_sum, dim3(8), dim3(128), 512, static_cast<const float*>(x.data()),
                      &sum);
    std::printf("deadlock caught: %s; sum after it: %g (want 1024)\n", bad.ok() ? "no" : "yes",
                sum);
    if (bad.ok() || sum != 1024.f) return 1;
  } else {
    std::printf("unknown case %s\n", which);
    return 2;
  }
  std::printf("finished: %s (%s)\n", which, e.to_string().c_str());
  return e.ok() ? 0 : 1;
}
