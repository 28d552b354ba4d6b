// Block reductions and warp / block primitives in plain CUDA (no prims): the shim must run
// unmodified CUDA. Compiled by nvcc (tests/kernels/all.cu) and by g++ + cucpu (test_*.cpp).
//
//   block_reduce_sum  warp shuffles + static __shared__ + atomicAdd
//   smem_tree_reduce  dynamic shared memory under its own name (sdata), 9 barriers per block
//   barrier_votes     __syncthreads_count / _and / _or
//   warp_ops          shuffles of every kind (widths, partial warps), votes, __activemask
//   atomics           atomicAdd (int, float), atomicMax, atomicMin, atomicCAS across blocks
#pragma once

template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    block_reduce_sum(const float* __restrict__ x, int n, float* __restrict__ out) {
  __shared__ float warp_sums[kBlock / 32];
  float v = 0.f;
  for (int i = blockIdx.x * kBlock + threadIdx.x; i < n; i += gridDim.x * kBlock) v += x[i];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kBlock / 32 ? warp_sums[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) atomicAdd(out, v);
  }
}
template __global__ void block_reduce_sum<256>(const float*, int, float*);

// partial[b] = sum of x[2 * blockDim.x * b, 2 * blockDim.x * (b + 1)); dynamic smem: blockDim
// floats.
__global__ void smem_tree_reduce(const float* __restrict__ x, int n, float* __restrict__ partial) {
  extern __shared__ float sdata[];
  const unsigned tid = threadIdx.x;
  const unsigned i = blockIdx.x * blockDim.x * 2 + tid;
  float v = 0.f;
  if (i < unsigned(n)) v = x[i];
  if (i + blockDim.x < unsigned(n)) v += x[i + blockDim.x];
  sdata[tid] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (tid < s) sdata[tid] += sdata[tid + s];
    __syncthreads();
  }
  if (tid == 0) partial[blockIdx.x] = sdata[0];
}

// out[0..3] = count(t % 3 == 0), and(t < blockDim), or(t == 17), and(t != 5).
__global__ void barrier_votes(int* out) {
  const int t = threadIdx.x;
  const int count = __syncthreads_count(t % 3 == 0);
  const int all = __syncthreads_and(t < int(blockDim.x));
  const int any = __syncthreads_or(t == 17);
  const int all_but = __syncthreads_and(t != 5);
  if (t == 0) {
    out[0] = count;
    out[1] = all;
    out[2] = any;
    out[3] = all_but;
  }
}

// Every thread writes 8 ints to out[t * 8 ...]. Launched with 48 threads: warp 1 has 16 lanes.
__global__ void warp_ops(int* out) {
  const int t = threadIdx.x, lane = t & 31;
  const unsigned active = __activemask();
  int* o = out + t * 8;
  o[0] = int(active);
  o[1] = __shfl_sync(active, t * 10, 3);
  o[2] = __shfl_xor_sync(active, t, 1);
  o[3] = __shfl_down_sync(active, t, 2, 16);
  o[4] = __shfl_up_sync(active, t, 1, 8);
  o[5] = int(__ballot_sync(active, lane % 2));
  o[6] = __any_sync(active, lane == 5) | (__all_sync(active, lane < 40) << 1) |
         (__all_sync(active, lane < 7) << 2);
  __syncwarp(active);
  const float f = __shfl_xor_sync(active, 0.5f * float(t), 4);
  o[7] = int(2.f * f);
}

// counters: [0] += 1 per thread, [1] = max(t), [2] = min(-t), [3] += 1 per thread via CAS loop;
// fsum += 0.5 per thread.
__global__ void atomics(int* counters, float* fsum) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&counters[0], 1);
  atomicMax(&counters[1], t);
  atomicMin(&counters[2], -t);
  int old = atomicAdd(&counters[3], 0), assumed;
  do {
    assumed = old;
    old = atomicCAS(&counters[3], assumed, assumed + 1);
  } while (old != assumed);
  atomicAdd(fsum, 0.5f);
}
