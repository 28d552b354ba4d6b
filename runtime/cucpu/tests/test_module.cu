// An emu module as the project builds them: this .cu compiled by g++ with the shim into a shared
// library (-fPIC -shared), dlopened by module_host.cpp. Two copies (MODULE_ID 1 and 2) are loaded
// into one process. Kernel templates use the `smem` arena in namespace ca and the global one:
// the case where g++ calls the arena's TLS-init hook unconditionally (see prims.cuh).
#include <stdio.h>
#include <string.h>

#include "chunkattn/prims.cuh"

#ifndef MODULE_ID
#define MODULE_ID 1
#endif

namespace ca {
template <int kScale>
__global__ void reverse_scaled(const float* in, float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  s[threadIdx.x] = ldg<CA_TRAFFIC_KV>(in + threadIdx.x) * kScale;
  __syncthreads();
  stg<CA_TRAFFIC_OUT>(out + threadIdx.x, s[blockDim.x - 1 - threadIdx.x]);
}
}  // namespace ca

template <int kAdd>
__global__ void shifted(float* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  s[threadIdx.x] = float(threadIdx.x + kAdd);
  __syncwarp();
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, s[threadIdx.x], 1);
}

__global__ void deadlocks(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_sync(0xffffffffu, v, 0);  // BUG: module_deadlock
  __syncthreads();
  out[threadIdx.x] = v;
}

// 0 when both kernels give the right answer; traffic of the first one in *kv_bytes.
extern "C" __attribute__((visibility("default"))) int module_run_good(
    unsigned long long* kv_bytes) {
  float in[64], out[64];
  for (int i = 0; i < 64; ++i) in[i] = float(i);
  ca::traffic_reset();
  ca::traffic_count_launch();
  cucpu::Error e = cucpu::launch_named("reverse_scaled", ca::reverse_scaled<MODULE_ID>, 1, 64, 256,
                                       static_cast<const float*>(in), out);
  if (!e.ok()) return 1;
  for (int i = 0; i < 64; ++i)
    if (out[i] != float((63 - i) * MODULE_ID)) return 2;
  CaStats stats;
  ca::traffic_snapshot(&stats);
  *kv_bytes = stats.bytes_read[CA_TRAFFIC_KV];
  e = cucpu::launch_named("shifted", shifted<MODULE_ID>, 1, 32, 128, out);
  if (!e.ok()) return 3;
  for (int i = 0; i < 32; ++i)
    if (out[i] != float((i ^ 1) + MODULE_ID)) return 4;
  return 0;
}

// Runs a deadlocking kernel; writes the error's JSON to json. Returns 1 if the error came back.
extern "C" __attribute__((visibility("default"))) int module_run_bad(char* json, int size) {
  float out[64];
  const cucpu::Error e = cucpu::launch_named("deadlocks", deadlocks, 1, 64, 0, out);
  snprintf(json, size_t(size), "%s", e.to_json().c_str());
  return e.ok() ? 0 : 1;
}
