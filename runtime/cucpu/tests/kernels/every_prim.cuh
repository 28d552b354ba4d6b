// One kernel that uses every wrapper of chunkattn/prims.cuh, with known inputs, so the emu build
// can check values and exact byte counts, and nvcc can check that every wrapper compiles.
// One warp. Each lane writes kPrimWords 32-bit words to out[lane * kPrimWords ...]:
//    0..14  ldg of float, int, __half2, __nv_bfloat162, uint2, uint4, float4, unsigned char
//   15..25  cp.async of 4, 8, 16 bytes and a 16-byte zero-fill copying 5 bytes (read back)
//   26..39  ldmatrix x1, x2, x4, x1.trans, x2.trans, x4.trans of four 8x8 b16 matrices
//   40..47  mma.m16n8k16 f16 and bf16 of the 16x16 and 16x8 integer matrices prim_a / prim_b
// Bytes read per lane: Q 8 (float, int), KV 8 + 33 (__half2, bf162; cp.async 4+8+16+5),
// PARTIAL 24 (uint2, uint4), CONTEXT 17 (float4, byte). Written: OUT 4 * kPrimWords.
#pragma once

#include "chunkattn/prims.cuh"

constexpr int kPrimWords = 48;

struct PrimArgs {
  const float* f32;
  const int* i32;
  const __half2* h2;
  const __nv_bfloat162* b2;
  const uint2* u2;
  const uint4* u4;
  const float4* f4;
  const unsigned char* u8;
  const unsigned char* copy_src;  // [32][64] bytes, 16-byte aligned
  uint32_t* out;                  // [32][kPrimWords]
};

// Small integers, exact in f16 and bf16.
__host__ __device__ inline float prim_a(int row, int col) {
  return float((row * 3 + col * 5) % 7 - 3);
}
__host__ __device__ inline float prim_b(int row, int col) {
  return float((row * 2 + col * 3) % 5 - 2);
}
// Element (row, col) of ldmatrix test matrix m, as b16 bits.
__host__ __device__ inline uint16_t prim_matrix(int m, int row, int col) {
  return uint16_t(m << 8 | row << 4 | col);
}

template <bool kBf16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint16_t l, h;
  if constexpr (kBf16) {
    l = __bfloat16_as_ushort(__float2bfloat16(lo));
    h = __bfloat16_as_ushort(__float2bfloat16(hi));
  } else {
    l = __half_as_ushort(__float2half(lo));
    h = __half_as_ushort(__float2half(hi));
  }
  return uint32_t(l) | uint32_t(h) << 16;
}

// mma fragments of prim_a / prim_b for this lane (layout: see prims.cuh).
template <bool kBf16>
__device__ __forceinline__ void prim_fragments(int lane, uint32_t (&a)[4], uint32_t (&b)[2]) {
  const int g = lane >> 2, t = lane & 3;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
    a[r] = pack2<kBf16>(prim_a(row, col), prim_a(row, col + 1));
  }
  for (int r = 0; r < 2; ++r) {
    const int row = 2 * t + 8 * r;
    b[r] = pack2<kBf16>(prim_b(row, g), prim_b(row + 1, g));
  }
}

template <class T>
__device__ __forceinline__ void put(uint32_t* out, int word, const T& v) {
  static_assert(sizeof(T) % 4 == 0, "whole words");
  uint32_t w[sizeof(T) / 4];
  memcpy(w, &v, sizeof(T));
  for (int i = 0; i < int(sizeof(T) / 4); ++i) ca::stg<CA_TRAFFIC_OUT>(out + word + i, w[i]);
}

__global__ void __launch_bounds__(32) every_prim(PrimArgs p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int lane = threadIdx.x;
  uint32_t* out = p.out + lane * kPrimWords;

  put(out, 0, ca::ldg<CA_TRAFFIC_Q>(p.f32 + lane));
  put(out, 1, ca::ldg<CA_TRAFFIC_Q>(p.i32 + lane));
  put(out, 2, ca::ldg<CA_TRAFFIC_KV>(p.h2 + lane));
  put(out, 3, ca::ldg<CA_TRAFFIC_KV>(p.b2 + lane));
  put(out, 4, ca::ldg<CA_TRAFFIC_PARTIAL>(p.u2 + lane));
  put(out, 6, ca::ldg<CA_TRAFFIC_PARTIAL>(p.u4 + lane));
  put(out, 10, ca::ldg<CA_TRAFFIC_CONTEXT>(p.f4 + lane));
  put(out, 14, uint32_t(ca::ldg<CA_TRAFFIC_CONTEXT>(p.u8 + lane)));

  // cp.async into this lane's 64 bytes of the arena; two groups, then wait for both.
  unsigned char* mine = smem + lane * 64;
  const unsigned char* src = p.copy_src + lane * 64;
  ca::cp_async<CA_TRAFFIC_KV, 4>(mine, src);
  ca::cp_async<CA_TRAFFIC_KV, 8>(mine + 8, src + 8);
  ca::cp_async_commit();
  ca::cp_async<CA_TRAFFIC_KV, 16>(mine + 16, src + 16);
  ca::cp_async_zfill<CA_TRAFFIC_KV, 16>(mine + 32, src + 32, 5);
  ca::cp_async_commit();
  ca::cp_async_wait<1>();
  ca::cp_async_wait<0>();
  ca::cp_async_wait_all();
  uint32_t w[11];
  memcpy(&w[0], mine, 4);
  memcpy(&w[1], mine + 8, 8);
  memcpy(&w[3], mine + 16, 16);
  memcpy(&w[7], mine + 32, 16);
  for (int i = 0; i < 11; ++i) ca::stg<CA_TRAFFIC_OUT>(out + 15 + i, w[i]);

  // ldmatrix: four 8x8 matrices of b16 at smem + 2048, 16-byte rows; lane l writes row l
  // (matrix l / 8, row l % 8) and gives its address.
  uint16_t* row = reinterpret_cast<uint16_t*>(smem + 2048 + lane * 16);
  for (int c = 0; c < 8; ++c) row[c] = prim_matrix(lane / 8, lane % 8, c);
  __syncwarp();
  uint32_t r1[1], r2[2], r4[4];
  ca::ldmatrix_x1(r1, row);
  put(out, 26, r1);
  ca::ldmatrix_x2(r2, row);
  put(out, 27, r2);
  ca::ldmatrix_x4(r4, row);
  put(out, 29, r4);
  ca::ldmatrix_x1_trans(r1, row);
  put(out, 33, r1);
  ca::ldmatrix_x2_trans(r2, row);
  put(out, 34, r2);
  ca::ldmatrix_x4_trans(r4, row);
  put(out, 36, r4);

  uint32_t a[4], b[2];
  const float zero[4] = {0.f, 0.f, 0.f, 0.f};
  float d[4];
  prim_fragments<false>(lane, a, b);
  ca::mma_m16n8k16_f16(d, a, b, zero);
  put(out, 40, d);
  prim_fragments<true>(lane, a, b);
  ca::mma_m16n8k16_bf16(d, a, b, zero);
  put(out, 44, d);
}
