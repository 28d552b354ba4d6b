// Flash-decoding attention for one query token per (sequence, head), the shape of the project's
// decode kernels: every global read of Q, K, V and partials goes through ca::ldg, writes through
// ca::stg, shared memory is the byte arena `smem`.
//
//   q         [B, H, D]     f16
//   k, v      [B, H, T, D]  f16, token t < lengths[b] valid
//   part_acc  [B, H, S, D]  f32  un-normalized output of split s, relative to part_m
//   part_m    [B, H, S]     f32  running max (-inf for an empty split)
//   part_l    [B, H, S]     f32  softmax denominator
//   out       [B, H, D]     f32  (zeros for an empty sequence)
//
// decode_split_kernel: grid (S, H, B), 4 warps. The S splits cut [0, length) into equal ranges;
// each warp takes every 4th token (4 dims per lane, one 8-byte load of K and of V per lane), keeps
// an online softmax, and the 4 warps merge through shared memory.
// decode_combine_kernel: grid (H, B), D threads; merges the S partial states.
#pragma once

#include "chunkattn/prims.cuh"

constexpr int kDecodeD = 128;
constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kDecodePerLane = kDecodeD / 32;
static_assert(kDecodeThreads == kDecodeD, "the merge maps one thread per output dim");

struct DecodeParams {
  const __half* q;
  const __half* k;
  const __half* v;
  float* part_acc;
  float* part_m;
  float* part_l;
  float* out;
  const int* lengths;
  int B, H, T, S;
  float scale;
};

// Four consecutive halves, loaded as one 8-byte word, to floats.
__device__ __forceinline__ void unpack4(uint2 raw, float (&f)[4]) {
  const float2 lo = __half22float2(
      __halves2half2(__ushort_as_half(raw.x & 0xffff), __ushort_as_half(raw.x >> 16)));
  const float2 hi = __half22float2(
      __halves2half2(__ushort_as_half(raw.y & 0xffff), __ushort_as_half(raw.y >> 16)));
  f[0] = lo.x, f[1] = lo.y, f[2] = hi.x, f[3] = hi.y;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline size_t decode_split_smem_bytes() {
  return sizeof(float) * (kDecodeWarps * kDecodeD + 2 * kDecodeWarps);
}

__global__ void __launch_bounds__(kDecodeThreads) decode_split_kernel(DecodeParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int length = ca::ldg<CA_TRAFFIC_CONTEXT>(p.lengths + b);
  const int per_split = (length + p.S - 1) / p.S;
  const int begin = split * per_split;
  const int end = min(length, begin + per_split);
  const size_t bh = size_t(b) * p.H + h;

  float q[kDecodePerLane];
  const __half* qp = p.q + bh * kDecodeD + lane * kDecodePerLane;
  unpack4(ca::ldg<CA_TRAFFIC_Q>(reinterpret_cast<const uint2*>(qp)), q);
#pragma unroll
  for (int i = 0; i < kDecodePerLane; ++i) q[i] *= p.scale;

  float m = -INFINITY, l = 0.f, acc[kDecodePerLane];
#pragma unroll
  for (int i = 0; i < kDecodePerLane; ++i) acc[i] = 0.f;
  const __half* kb = p.k + bh * size_t(p.T) * kDecodeD + lane * kDecodePerLane;
  const __half* vb = p.v + bh * size_t(p.T) * kDecodeD + lane * kDecodePerLane;
  for (int t = begin + warp; t < end; t += kDecodeWarps) {
    float kf[kDecodePerLane], vf[kDecodePerLane];
    const __half* kr = kb + size_t(t) * kDecodeD;
    const __half* vr = vb + size_t(t) * kDecodeD;
    unpack4(ca::ldg<CA_TRAFFIC_KV>(reinterpret_cast<const uint2*>(kr)), kf);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kDecodePerLane; ++i) s += q[i] * kf[i];
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float correction = __expf(m - m_new);  // 0 for the first token (m = -inf)
    const float weight = __expf(s - m_new);
    l = l * correction + weight;
    unpack4(ca::ldg<CA_TRAFFIC_KV>(reinterpret_cast<const uint2*>(vr)), vf);
#pragma unroll
    for (int i = 0; i < kDecodePerLane; ++i) acc[i] = acc[i] * correction + weight * vf[i];
    m = m_new;
  }

  float* s_acc = reinterpret_cast<float*>(smem);  // [warps][D]
  float* s_m = s_acc + kDecodeWarps * kDecodeD;   // [warps]
  float* s_l = s_m + kDecodeWarps;                // [warps]
#pragma unroll
  for (int i = 0; i < kDecodePerLane; ++i)
    s_acc[warp * kDecodeD + lane * kDecodePerLane + i] = acc[i];
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
  __syncthreads();

  const int d = threadIdx.x;
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, s_m[w]);
  float L = 0.f, o = 0.f;
#pragma unroll
  for (int w = 0; w < kDecodeWarps; ++w) {
    const float f = s_m[w] == -INFINITY ? 0.f : __expf(s_m[w] - M);
    L += s_l[w] * f;
    o += s_acc[w * kDecodeD + d] * f;
  }
  const size_t ps = bh * p.S + split;
  ca::stg<CA_TRAFFIC_PARTIAL>(&p.part_acc[ps * kDecodeD + d], o);
  if (d == 0) {
    ca::stg<CA_TRAFFIC_PARTIAL>(&p.part_m[ps], M);
    ca::stg<CA_TRAFFIC_PARTIAL>(&p.part_l[ps], L);
  }
}

__global__ void __launch_bounds__(kDecodeD) decode_combine_kernel(DecodeParams p) {
  const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const size_t bh = size_t(b) * p.H + h;
  __shared__ float s_max;
  if (threadIdx.x < 32) {
    float M = -INFINITY;
    for (int s = threadIdx.x; s < p.S; s += 32)
      M = fmaxf(M, ca::ldg<CA_TRAFFIC_PARTIAL>(&p.part_m[bh * p.S + s]));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    if (threadIdx.x == 0) s_max = M;
  }
  __syncthreads();
  const float M = s_max;
  float L = 0.f, o = 0.f;
  for (int s = 0; s < p.S; ++s) {
    const float ms = ca::ldg<CA_TRAFFIC_PARTIAL>(&p.part_m[bh * p.S + s]);
    if (ms == -INFINITY) continue;  // empty split
    const float f = __expf(ms - M);
    L += ca::ldg<CA_TRAFFIC_PARTIAL>(&p.part_l[bh * p.S + s]) * f;
    o += ca::ldg<CA_TRAFFIC_PARTIAL>(&p.part_acc[(bh * p.S + s) * kDecodeD + d]) * f;
  }
  ca::stg<CA_TRAFFIC_OUT>(&p.out[bh * kDecodeD + d], L > 0.f ? o / L : 0.f);
}
