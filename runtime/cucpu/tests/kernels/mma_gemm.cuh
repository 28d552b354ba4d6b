// Tensor-core GEMM through the prims: C[M][N] (f32) = A[M][K] * B[K][N], A and B row-major f16 or
// bf16. A block of 4 warps computes a 64x64 tile; K is walked in steps of 32 with a two-stage
// cp.async pipeline in the dynamic shared arena; fragments come from ldmatrix (x4 for A,
// x4.trans for B) and feed mma.sync.m16n8k16. M, N multiples of 64, K a multiple of 32.
//
// mma_tile_16x8x16: one warp, one m16n8k16 product, A via ldmatrix.x4 and B via ldmatrix.x2.trans.
#pragma once

#include "chunkattn/prims.cuh"

namespace tc {
constexpr int kBM = 64, kBN = 64, kBK = 32, kPad = 8;
constexpr int kALd = kBK + kPad;  // 40 elements = 80 bytes per row (a 16-byte multiple)
constexpr int kBLd = kBN + kPad;  // 72 elements = 144 bytes per row
constexpr size_t kGemmSmemBytes = 2 * (kBM * kALd + kBK * kBLd) * 2;  // two stages of A and B

template <class T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same<T, __half>::value)
    ca::mma_m16n8k16_f16(d, a, b, d);
  else
    ca::mma_m16n8k16_bf16(d, a, b, d);
}

template <class T>
__device__ __forceinline__ void load_stage(T (*As)[kALd], T (*Bs)[kBLd], const T* A, const T* B,
                                           int K, int N, int m0, int n0, int k0) {
  // A tile 64x32 = 256 pieces of 8 elements; B tile 32x64 = 256 pieces.
  for (int c = threadIdx.x; c < 256; c += 128) {
    const int r = c / 4, cc = (c % 4) * 8;
    ca::cp_async<CA_TRAFFIC_KV, 16>(&As[r][cc], A + size_t(m0 + r) * K + k0 + cc);
  }
  for (int c = threadIdx.x; c < 256; c += 128) {
    const int r = c / 8, cc = (c % 8) * 8;
    ca::cp_async<CA_TRAFFIC_KV, 16>(&Bs[r][cc], B + size_t(k0 + r) * N + n0 + cc);
  }
}

template <class T>
__global__ void __launch_bounds__(128) gemm_tc(const T* __restrict__ A, const T* __restrict__ B,
                                               float* __restrict__ C, int M, int N, int K) {
  (void)M;  // the grid covers M
  extern __shared__ __align__(128) unsigned char smem[];
  auto As = reinterpret_cast<T(*)[kBM][kALd]>(smem);                               // [2][BM][ALd]
  auto Bs = reinterpret_cast<T(*)[kBK][kBLd]>(smem + 2 * kBM * kALd * sizeof(T));  // [2][BK][BLd]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  float acc[8][4];
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;

  const int steps = K / kBK;
  load_stage<T>(As[0], Bs[0], A, B, K, N, m0, n0, 0);
  ca::cp_async_commit();
  for (int kt = 0; kt < steps; ++kt) {
    const int cur = kt & 1;
    if (kt + 1 < steps) load_stage<T>(As[cur ^ 1], Bs[cur ^ 1], A, B, K, N, m0, n0, (kt + 1) * kBK);
    ca::cp_async_commit();
    ca::cp_async_wait<1>();  // stage kt has landed for this thread
    __syncthreads();         // ... and for every thread
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t a[4];
      ca::ldmatrix_x4(a, &As[cur][warp * 16 + (lane & 15)][kk + (lane >> 4) * 8]);
#pragma unroll
      for (int j = 0; j < 8; j += 2) {
        uint32_t b[4];
        ca::ldmatrix_x4_trans(b, &Bs[cur][kk + (lane & 15)][j * 8 + (lane >> 4) * 8]);
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
        mma<T>(acc[j], a, b0);
        mma<T>(acc[j + 1], a, b1);
      }
    }
    __syncthreads();  // everyone has read `cur` before it is refilled
  }
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = m0 + warp * 16 + g + 8 * (i >= 2);
      const int c = n0 + j * 8 + 2 * t + (i & 1);
      ca::stg<CA_TRAFFIC_OUT>(&C[size_t(r) * N + c], acc[j][i]);
    }
}
template __global__ void gemm_tc<__half>(const __half*, const __half*, float*, int, int, int);
template __global__ void gemm_tc<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, float*,
                                                int, int, int);

// C (16x8) = A (16x16) * B (16x8), all row-major in global memory; one warp.
__global__ void mma_tile_16x8x16(const __half* __restrict__ A, const __half* __restrict__ B,
                                 float* __restrict__ C) {
  extern __shared__ __align__(128) unsigned char smem[];
  auto As = reinterpret_cast<__half(*)[16]>(smem);       // [16][16]
  auto Bs = reinterpret_cast<__half(*)[8]>(smem + 512);  // [16][8]
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) As[i / 16][i % 16] = ca::ldg<CA_TRAFFIC_Q>(A + i);
  for (int i = lane; i < 128; i += 32) Bs[i / 8][i % 8] = ca::ldg<CA_TRAFFIC_KV>(B + i);
  __syncwarp();
  uint32_t a[4], b[2];
  ca::ldmatrix_x4(a, &As[lane & 15][(lane >> 4) * 8]);
  ca::ldmatrix_x2_trans(
      b, &Bs[lane & 15][0]);  // lanes 16..31 repeat rows; their addresses are ignored
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  ca::mma_m16n8k16_f16(d, a, b, d);
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) C[(g + 8 * (i >= 2)) * 8 + 2 * t + (i & 1)] = d[i];
}
}  // namespace tc
