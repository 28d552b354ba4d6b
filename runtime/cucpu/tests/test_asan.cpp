// Memory-safety bugs in kernels, for a build with -fsanitize=address,undefined: each case must
// produce a sanitizer report naming the line marked `// BUG: <case>` (test/cucpu-sanitizers).
// Run one case per process (the first report ends it): test_asan <case>.
//   global_oob          plain read one past a heap buffer          heap-buffer-overflow
//   ldg_oob             ca::ldg one past a heap buffer             heap-buffer-overflow
//   cp_async_oob        ca::cp_async from past a heap buffer       heap-buffer-overflow
//   dynamic_shared_oob  smem arena past the launch's dynamic size  use-after-poison
//   static_shared_oob   static __shared__ array index              UBSan index out of bounds
//   stack_oob           a fiber's local array, out of bounds        stack-buffer-overflow
//   use_after_free      reading freed memory                       heap-use-after-free
//   none                no bug: no report
//   recover             deadlocked, trapping and throwing launches are unwound (exceptions
//                       through the fibers), then a correct launch: no report, no leak
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "chunkattn/prims.cuh"

__global__ void global_oob(const float* x, int n, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i % n] = x[i] * 2.f;  // BUG: global_oob
}

__global__ void ldg_oob(const float* x, int n, float* out) {
  const int i = threadIdx.x;
  if (i <= n) out[i % n] = ca::ldg<CA_TRAFFIC_KV>(x + i);  // BUG: ldg_oob
}

__global__ void cp_async_oob(const float* x, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  const float* src = x + 4 * threadIdx.x;
  ca::cp_async<CA_TRAFFIC_KV, 16>(smem + 16 * threadIdx.x, src);  // BUG: cp_async_oob
  ca::cp_async_wait_all();
  out[threadIdx.x] = reinterpret_cast<float*>(smem)[threadIdx.x];
}

__global__ void dynamic_shared_oob(float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  s[threadIdx.x] = 1.f;  // BUG: dynamic_shared_oob
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

__global__ void static_shared_oob(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = 1.f;  // BUG: static_shared_oob
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x % 64];
}

// Out of line, so the access is checked by ASan on the fiber's stack (not by UBSan's bounds).
__device__ __noinline__ float element(const float* p, int i) {
  return p[i];  // BUG: stack_oob
}
__global__ void stack_oob(const int* index, float* out) {
  float regs[8];
  for (int i = 0; i < 8; ++i) regs[i] = float(i);
  out[threadIdx.x] = element(regs, index[threadIdx.x]);
}

__global__ void deadlock(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x >= 32 && threadIdx.x < 48) v = __shfl_sync(0xffffffffu, v, 0);
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void trap_or_throw(float* out) {
  if (threadIdx.x == 7) __trap();
  if (threadIdx.x == 9) throw std::runtime_error("thrown in a kernel");
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void correct_sum(const float* x, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  s[threadIdx.x] = ca::ldg<CA_TRAFFIC_KV>(x + threadIdx.x);
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = s[0];
}

__global__ void use_after_free(const float* x, float* out) {
  out[threadIdx.x] = x[threadIdx.x];  // BUG: use_after_free
}

int main(int argc, char** argv) {
  const char* which = argc > 1 ? argv[1] : "none";
  std::vector<float> out(256);
  cucpu::Error e;
  if (!strcmp(which, "global_oob")) {
    std::vector<float> x(100, 1.f);
    e = cucpu::launch(global_oob, dim3(1), dim3(128), 0, x.data(), 100, out.data());
  } else if (!strcmp(which, "ldg_oob")) {
    std::vector<float> x(31, 1.f);
    e = cucpu::launch(ldg_oob, dim3(1), dim3(32), 0, x.data(), 31, out.data());
  } else if (!strcmp(which, "cp_async_oob")) {
    float* x = static_cast<float*>(aligned_alloc(16, 31 * 16));  // 31 of the 32 16-byte pieces
    e = cucpu::launch(cp_async_oob, dim3(1), dim3(32), 512, static_cast<const float*>(x),
                      out.data());
    free(x);
  } else if (!strcmp(which, "dynamic_shared_oob")) {
    e = cucpu::launch(dynamic_shared_oob, dim3(1), dim3(65), 64 * sizeof(float), out.data());
  } else if (!strcmp(which, "static_shared_oob")) {
    e = cucpu::launch(static_shared_oob, dim3(1), dim3(65), 0, out.data());
  } else if (!strcmp(which, "stack_oob")) {
    std::vector<int> index(32, 3);
    index[17] = 8;
    e = cucpu::launch(stack_oob, dim3(1), dim3(32), 0, static_cast<const int*>(index.data()),
                      out.data());
  } else if (!strcmp(which, "use_after_free")) {
    float* x = new float[32];
    delete[] x;
    e = cucpu::launch(use_after_free, dim3(1), dim3(32), 0, static_cast<const float*>(x),
                      out.data());
  } else if (!strcmp(which, "recover")) {
    int caught = 0;
    for (int i = 0; i < 10; ++i) {
      caught += !cucpu::launch(deadlock, dim3(2), dim3(64), 0, out.data()).ok();
      caught += !cucpu::launch(trap_or_throw, dim3(3), dim3(32), 0, out.data()).ok();
    }
    std::vector<float> x(256, 0.5f);
    float sum = 0.f;
    e = cucpu::launch(correct_sum, dim3(1), dim3(256), 1024, static_cast<const float*>(x.data()),
                      &sum);
    std::printf("caught %d of 20 failed launches; sum after them: %g (want 128)\n", caught, sum);
    if (caught != 20 || sum != 128.f) return 1;
  } else if (strcmp(which, "none") != 0) {
    std::printf("unknown case %s\n", which);
    return 2;
  }
  std::printf("finished without report: %s (%s)\n", which, e.to_string().c_str());
  return 0;
}
