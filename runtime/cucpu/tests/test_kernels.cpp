// The shim runs real kernels correctly: reductions, warp and block primitives, atomics,
// flash-decoding split + combine against float64 attention, tensor-core GEMM (f16, bf16) against a
// plain matmul, every prims.cuh wrapper, and exact traffic counts.
//
// Build: g++ -std=c++20 -pthread -include runtime/cucpu/cucpu.h -I/usr/local/cuda/include
//            -Itemplates/include -Iruntime/cucpu/tests/kernels runtime/cucpu/tests/test_kernels.cpp
// Run under CUCPU_ORDER=forward|reverse|random and any CUCPU_WORKERS: results must not change.
// Output: RESULT lines (check.h). `--small`: small shapes (sanitizer builds); `--bench`: adds a
// larger decode for timing.
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "decode_attn.cuh"
#include "every_prim.cuh"
#include "mma_gemm.cuh"
#include "reduce.cuh"

// Dynamic shared arrays of these kernels (the arena `smem` of the global namespace comes from
// prims.cuh; namespace tc needs its own).
CUCPU_DYNAMIC_SHARED(float, sdata)
namespace tc {
CUCPU_DYNAMIC_SHARED(unsigned char, smem)
}

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Traffic {
  CaStats s;
  uint64_t read(CaTraffic k) const { return s.bytes_read[k]; }
  uint64_t written(CaTraffic k) const { return s.bytes_written[k]; }
};
static Traffic traffic() {
  Traffic t;
  ca::traffic_snapshot(&t.s);
  return t;
}

// ---- reductions and primitives -------------------------------------------------------------

static void test_reduce(int n) {
  std::vector<float> x(n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1, 1);
  double ref = 0;
  for (float& v : x) ref += (v = U(rng));
  float out = 0.f;
  double t0 = now();
  cucpu::Error e = cucpu::launch(block_reduce_sum<256>, dim3(std::min(64, n / 1024)), dim3(256), 0,
                                 x.data(), n, &out);
  Result("reduce/block_reduce_sum")
      .error(e)
      .num("err", std::fabs(out - ref))
      .num("seconds", now() - t0)
      .print(e.ok() && std::fabs(out - ref) < 1e-2);

  const int bs = 256, nb = (n + 2 * bs - 1) / (2 * bs);
  std::vector<float> part(nb);
  t0 = now();
  e = cucpu::launch(smem_tree_reduce, dim3(nb), dim3(bs), bs * sizeof(float), x.data(), n,
                    part.data());
  double s = 0;
  for (float p : part) s += p;
  Result("reduce/smem_tree_reduce")
      .error(e)
      .num("err", std::fabs(s - ref))
      .num("blocks", nb)
      .num("seconds", now() - t0)
      .print(e.ok() && std::fabs(s - ref) < 1e-2);
}

static void test_barrier_votes() {
  int out[4] = {-1, -1, -1, -1};
  const int nt = 200;
  cucpu::Error e = cucpu::launch(barrier_votes, dim3(1), dim3(nt), 0, out);
  const int expect_count = (nt + 2) / 3;
  Result("block/syncthreads_count_and_or")
      .error(e)
      .num("count", out[0])
      .num("and", out[1])
      .num("or", out[2])
      .num("and_but", out[3])
      .print(e.ok() && out[0] == expect_count && out[1] == 1 && out[2] == 1 && out[3] == 0);
}

static void test_warp_ops() {
  const int nt = 48;  // warp 1 has 16 lanes
  std::vector<int> out(nt * 8, -1);
  cucpu::Error e = cucpu::launch(warp_ops, dim3(1), dim3(nt), 0, out.data());
  int bad = 0;
  for (int t = 0; t < nt; ++t) {
    const int lane = t & 31, base = t - lane, lanes = t < 32 ? 32 : 16;
    const unsigned active = lanes == 32 ? 0xffffffffu : 0xffffu;
    int expect[8];
    expect[0] = int(active);
    expect[1] = (base + 3) * 10;
    expect[2] = base + (lane ^ 1);
    expect[3] = ((lane & 15) + 2 >= 16 || lane + 2 >= lanes) ? t : t + 2;
    expect[4] = (lane & 7) < 1 ? t : t - 1;
    unsigned ballot = 0;
    for (int l = 0; l < lanes; ++l)
      if (l % 2) ballot |= 1u << l;
    expect[5] = int(ballot);
    expect[6] = 1 | ((lanes <= 40) << 1) | 0;
    const int src = lane ^ 4;
    expect[7] = int(2.f * (0.5f * float(base + src)));
    for (int i = 0; i < 8; ++i)
      if (out[t * 8 + i] != expect[i]) {
        if (bad < 5)
          std::printf("warp_ops: thread %d word %d = %d, want %d\n", t, i, out[t * 8 + i],
                      expect[i]);
        ++bad;
      }
  }
  Result("warp/shuffles_votes_activemask")
      .error(e)
      .num("mismatches", bad)
      .print(e.ok() && bad == 0);
}

static void test_atomics() {
  int counters[4] = {0, -1, 1, 0};
  float fsum = 0.f;
  const int blocks = 8, threads = 96;
  cucpu::Error e = cucpu::launch(atomics, dim3(blocks), dim3(threads), 0, counters, &fsum);
  const int n = blocks * threads;
  Result("atomics/add_max_min_cas")
      .error(e)
      .num("add", counters[0])
      .num("max", counters[1])
      .num("min", counters[2])
      .num("cas", counters[3])
      .num("fsum", fsum)
      .print(e.ok() && counters[0] == n && counters[1] == n - 1 && counters[2] == -(n - 1) &&
             counters[3] == n && fsum == 0.5f * n);
}

// ---- flash decoding ------------------------------------------------------------------------

// softmax(q . K^T * scale) V in float64.
static void attention_f64(const std::vector<__half>& q, const std::vector<__half>& k,
                          const std::vector<__half>& v, const std::vector<int>& lengths, int B,
                          int H, int T, std::vector<double>& out) {
  const int D = kDecodeD;
  const double scale = 1.0 / std::sqrt(double(D));
  out.assign(size_t(B) * H * D, 0.0);
  std::vector<double> s(T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const size_t bh = size_t(b) * H + h;
      double mx = -1e300;
      for (int t = 0; t < lengths[b]; ++t) {
        double acc = 0;
        for (int d = 0; d < D; ++d)
          acc += double(__half2float(q[bh * D + d])) * __half2float(k[(bh * T + t) * D + d]);
        s[t] = acc * scale;
        mx = std::max(mx, s[t]);
      }
      double L = 0;
      for (int t = 0; t < lengths[b]; ++t) L += (s[t] = std::exp(s[t] - mx));
      for (int d = 0; d < D; ++d) {
        double o = 0;
        for (int t = 0; t < lengths[b]; ++t) o += s[t] * __half2float(v[(bh * T + t) * D + d]);
        out[bh * D + d] = lengths[b] ? o / L : 0.0;
      }
    }
}

static void test_decode(int B, int H, int T, int S, bool ragged, bool report_time) {
  const int D = kDecodeD;
  std::mt19937 rng(42 + B + T + S);
  std::normal_distribution<float> N01(0, 1);
  std::vector<__half> q(size_t(B) * H * D), k(size_t(B) * H * T * D), v(k.size());
  for (auto& x : q) x = __float2half(N01(rng));
  for (auto& x : k) x = __float2half(N01(rng));
  for (auto& x : v) x = __float2half(N01(rng));
  std::vector<int> lengths(B, T);
  if (ragged)
    for (int b = 0; b < B; ++b) lengths[b] = (b * 7919) % (T + 1);  // includes 0 and short ones
  const float nan = std::nanf("");
  std::vector<float> part_acc(size_t(B) * H * S * D, nan), part_m(size_t(B) * H * S, nan),
      part_l(part_m.size(), nan), out(size_t(B) * H * D, nan);
  DecodeParams p{q.data(),
                 k.data(),
                 v.data(),
                 part_acc.data(),
                 part_m.data(),
                 part_l.data(),
                 out.data(),
                 lengths.data(),
                 B,
                 H,
                 T,
                 S,
                 1.0f / std::sqrt(float(D))};
  ca::traffic_reset();
  const double t0 = now();
  cucpu::Error e = cucpu::launch(decode_split_kernel, dim3(S, H, B), dim3(kDecodeThreads),
                                 decode_split_smem_bytes(), p);
  const double t1 = now();
  if (e.ok()) e = cucpu::launch(decode_combine_kernel, dim3(H, B), dim3(D), 0, p);
  const double t2 = now();
  const Traffic tr = traffic();
  std::vector<double> ref;
  attention_f64(q, k, v, lengths, B, H, T, ref);
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  const double rel = std::sqrt(num / std::max(den, 1e-300));  // NaN when an output was not written

  // Exact bytes: every (split, head, sequence) block reads Q once per warp; every token's K and V
  // once; the combine reads the split states.
  uint64_t kv = 0, combine = 0;
  for (int b = 0; b < B; ++b) {
    const int per = (lengths[b] + S - 1) / S;
    int nonempty = 0;
    for (int s = 0; s < S; ++s) nonempty += s * per < lengths[b];
    kv += uint64_t(H) * lengths[b] * D * 2 * 2;
    combine += uint64_t(H) * (S * 4 + D * (S * 4 + nonempty * 8));
  }
  const uint64_t blocks = uint64_t(S) * H * B;
  const bool bytes_ok = tr.read(CA_TRAFFIC_Q) == blocks * kDecodeWarps * D * 2 &&
                        tr.read(CA_TRAFFIC_KV) == kv &&
                        tr.read(CA_TRAFFIC_CONTEXT) == blocks * kDecodeThreads * 4 &&
                        tr.read(CA_TRAFFIC_PARTIAL) == combine &&
                        tr.written(CA_TRAFFIC_PARTIAL) == blocks * (D + 2) * 4 &&
                        tr.written(CA_TRAFFIC_OUT) == uint64_t(B) * H * D * 4;
  char name[96];
  snprintf(name, sizeof name, "decode/split_combine/B%d_H%d_T%d_S%d%s", B, H, T, S,
           ragged ? "_ragged" : "");
  Result r(name);
  r.error(e)
      .num("rel_err", rel)
      .num("q_bytes", double(tr.read(CA_TRAFFIC_Q)))
      .num("kv_bytes", double(tr.read(CA_TRAFFIC_KV)))
      .num("kv_bytes_expected", double(kv))
      .num("partial_bytes", double(tr.read(CA_TRAFFIC_PARTIAL)))
      .flag("bytes_ok", bytes_ok);
  if (report_time)
    r.num("split_seconds", t1 - t0)
        .num("combine_seconds", t2 - t1)
        .num("tokens_per_second", double(B) * H * T / (t1 - t0));
  r.print(e.ok() && rel < 1e-5 && bytes_ok);
}

// ---- tensor cores --------------------------------------------------------------------------

static float to_float(__half h) { return __half2float(h); }
static float to_float(__nv_bfloat16 h) { return __bfloat162float(h); }
template <class T>
static T from_float(float f) {
  if constexpr (std::is_same_v<T, __half>)
    return __float2half(f);
  else
    return __float2bfloat16(f);
}

template <class T>
static void test_gemm(int M, int N, int K, const char* type) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> U(-1, 1);
  std::vector<T> A(size_t(M) * K), B(size_t(K) * N);
  for (auto& x : A) x = from_float<T>(U(rng));
  for (auto& x : B) x = from_float<T>(U(rng));
  std::vector<float> C(size_t(M) * N, std::nanf(""));
  ca::traffic_reset();
  const double t0 = now();
  cucpu::Error e = cucpu::launch(tc::gemm_tc<T>, dim3(N / tc::kBN, M / tc::kBM), dim3(128),
                                 tc::kGemmSmemBytes, A.data(), B.data(), C.data(), M, N, K);
  const double t1 = now();
  const Traffic tr = traffic();
  double max_err = 0;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double r = 0;
      for (int kk = 0; kk < K; ++kk)
        r += double(to_float(A[size_t(i) * K + kk])) * to_float(B[size_t(kk) * N + j]);
      const double d = std::fabs(r - C[size_t(i) * N + j]);
      max_err = std::isnan(d) ? INFINITY : std::max(max_err, d);
    }
  // Each block reads its A and B panels once: (64 x K + K x 64) elements.
  const uint64_t expect_kv =
      uint64_t(N / tc::kBN) * (M / tc::kBM) * (tc::kBM + tc::kBN) * K * sizeof(T);
  const bool bytes_ok =
      tr.read(CA_TRAFFIC_KV) == expect_kv && tr.written(CA_TRAFFIC_OUT) == uint64_t(M) * N * 4;
  char name[64];
  snprintf(name, sizeof name, "gemm/%s/%dx%dx%d", type, M, N, K);
  const double mmas = (M / 16.0) * (N / 8.0) * (K / 16.0);
  Result(name)
      .error(e)
      .num("max_err", max_err)
      .num("kv_bytes", double(tr.read(CA_TRAFFIC_KV)))
      .flag("bytes_ok", bytes_ok)
      .num("seconds", t1 - t0)
      .num("mma_per_second", mmas / (t1 - t0))
      .print(e.ok() && max_err < 1e-3 * std::sqrt(double(K)) && bytes_ok);
}

static void test_mma_tile() {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> U(-2, 2);
  std::vector<__half> A(256), B(128);
  std::vector<float> C(128, std::nanf(""));
  for (auto& x : A) x = __float2half(U(rng));
  for (auto& x : B) x = __float2half(U(rng));
  cucpu::Error e =
      cucpu::launch(tc::mma_tile_16x8x16, dim3(1), dim3(32), 1024, A.data(), B.data(), C.data());
  double max_err = 0;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double r = 0;
      for (int k = 0; k < 16; ++k)
        r += double(__half2float(A[i * 16 + k])) * __half2float(B[k * 8 + j]);
      const double d = std::fabs(r - C[i * 8 + j]);
      max_err = std::isnan(d) ? INFINITY : std::max(max_err, d);
    }
  Result("mma/tile_16x8x16_ldmatrix_x4_x2trans")
      .error(e)
      .num("max_err", max_err)
      .print(e.ok() && max_err < 1e-4);
}

// ---- every prim: values and exact byte counts ------------------------------------------------

static uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static void test_every_prim() {
  std::vector<float> f32(32);
  std::vector<int> i32(32);
  std::vector<__half2> h2(32);
  std::vector<__nv_bfloat162> b2(32);
  std::vector<uint2> u2(32);
  std::vector<uint4> u4(32);
  std::vector<float4> f4(32);
  std::vector<unsigned char> u8(32);
  alignas(16) static unsigned char copy_src[32 * 64];
  for (int l = 0; l < 32; ++l) {
    f32[l] = 0.25f * l;
    i32[l] = -7 * l;
    h2[l] = __floats2half2_rn(float(l), -float(l));
    b2[l] = __floats2bfloat162_rn(float(l) + 0.5f, 2.0f);
    u2[l] = make_uint2(l, 1000 + l);
    u4[l] = make_uint4(l, l * 2, l * 3, 0xdead0000u + l);
    f4[l] = make_float4(l, l + 0.5f, -l, 1e6f);
    u8[l] = uint8_t(200 + l);
  }
  for (int i = 0; i < 32 * 64; ++i) copy_src[i] = uint8_t(i * 7 + 3);
  std::vector<uint32_t> out(32 * kPrimWords, 0xcdcdcdcdu);
  PrimArgs args{f32.data(), i32.data(), h2.data(), b2.data(), u2.data(),
                u4.data(),  f4.data(),  u8.data(), copy_src,  out.data()};
  ca::traffic_reset();
  cucpu::Error e = cucpu::launch(every_prim, dim3(1), dim3(32), 4096, args);
  ca::traffic_count_launch();
  const Traffic tr = traffic();

  int bad = 0;
  auto expect = [&](int lane, int word, uint32_t want, const char* what) {
    const uint32_t got = out[lane * kPrimWords + word];
    if (got != want) {
      if (bad < 8)
        std::printf("every_prim: lane %d word %d (%s) = 0x%08x, want 0x%08x\n", lane, word, what,
                    got, want);
      ++bad;
    }
  };
  for (int l = 0; l < 32; ++l) {
    uint32_t w[4];
    expect(l, 0, bits(f32[l]), "ldg float");
    expect(l, 1, uint32_t(i32[l]), "ldg int");
    memcpy(w, &h2[l], 4);
    expect(l, 2, w[0], "ldg __half2");
    memcpy(w, &b2[l], 4);
    expect(l, 3, w[0], "ldg __nv_bfloat162");
    expect(l, 4, u2[l].x, "ldg uint2");
    expect(l, 5, u2[l].y, "ldg uint2");
    memcpy(w, &u4[l], 16);
    for (int i = 0; i < 4; ++i) expect(l, 6 + i, w[i], "ldg uint4");
    memcpy(w, &f4[l], 16);
    for (int i = 0; i < 4; ++i) expect(l, 10 + i, w[i], "ldg float4");
    expect(l, 14, u8[l], "ldg unsigned char");
    // cp.async: bytes [0,4) [8,16) [16,32) copied; [32,37) copied then zero-filled to 48.
    unsigned char want[44] = {};
    const unsigned char* src = copy_src + l * 64;
    memcpy(want, src, 4);
    memcpy(want + 4, src + 8, 8);
    memcpy(want + 12, src + 16, 16);
    memcpy(want + 28, src + 32, 5);
    for (int i = 0; i < 11; ++i) {
      uint32_t x;
      memcpy(&x, want + 4 * i, 4);
      expect(l, 15 + i, x, "cp.async");
    }
    // ldmatrix: register m of lane l; plain: row l/4 of matrix m, columns 2(l%4), +1;
    // trans: column l/4 of rows 2(l%4), 2(l%4)+1.
    auto plain = [&](int m) {
      return uint32_t(prim_matrix(m, l / 4, 2 * (l % 4))) |
             uint32_t(prim_matrix(m, l / 4, 2 * (l % 4) + 1)) << 16;
    };
    auto trans = [&](int m) {
      return uint32_t(prim_matrix(m, 2 * (l % 4), l / 4)) |
             uint32_t(prim_matrix(m, 2 * (l % 4) + 1, l / 4)) << 16;
    };
    expect(l, 26, plain(0), "ldmatrix.x1");
    for (int m = 0; m < 2; ++m) expect(l, 27 + m, plain(m), "ldmatrix.x2");
    for (int m = 0; m < 4; ++m) expect(l, 29 + m, plain(m), "ldmatrix.x4");
    expect(l, 33, trans(0), "ldmatrix.x1.trans");
    for (int m = 0; m < 2; ++m) expect(l, 34 + m, trans(m), "ldmatrix.x2.trans");
    for (int m = 0; m < 4; ++m) expect(l, 36 + m, trans(m), "ldmatrix.x4.trans");
    // mma: D(row, col) for this lane's 4 elements.
    for (int i = 0; i < 4; ++i) {
      const int row = l / 4 + 8 * (i >= 2), col = 2 * (l % 4) + (i & 1);
      float d = 0;
      for (int kk = 0; kk < 16; ++kk) d += prim_a(row, kk) * prim_b(kk, col);
      expect(l, 40 + i, bits(d), "mma f16");
      expect(l, 44 + i, bits(d), "mma bf16");
    }
  }
  const uint64_t q = 32 * 8, kv = 32 * (8 + 33), partial = 32 * 24, context = 32 * 17,
                 written = 32 * 4 * kPrimWords;
  bool bytes_ok = tr.read(CA_TRAFFIC_Q) == q && tr.read(CA_TRAFFIC_KV) == kv &&
                  tr.read(CA_TRAFFIC_PARTIAL) == partial &&
                  tr.read(CA_TRAFFIC_CONTEXT) == context && tr.read(CA_TRAFFIC_OUT) == 0 &&
                  tr.written(CA_TRAFFIC_OUT) == written && tr.s.launches == 1;
  for (int k = 0; k < CA_TRAFFIC_COUNT; ++k)
    if (k != CA_TRAFFIC_OUT && tr.written(CaTraffic(k)) != 0) bytes_ok = false;
  Result("prims/every_prim_values").error(e).num("mismatches", bad).print(e.ok() && bad == 0);
  Result("prims/traffic_exact_bytes")
      .num("q", double(tr.read(CA_TRAFFIC_Q)))
      .num("kv", double(tr.read(CA_TRAFFIC_KV)))
      .num("partial", double(tr.read(CA_TRAFFIC_PARTIAL)))
      .num("context", double(tr.read(CA_TRAFFIC_CONTEXT)))
      .num("out_written", double(tr.written(CA_TRAFFIC_OUT)))
      .num("launches", double(tr.s.launches))
      .print(e.ok() && bytes_ok);
  ca::traffic_reset();
  const Traffic zero = traffic();
  bool all_zero = zero.s.launches == 0;
  for (int k = 0; k < CA_TRAFFIC_COUNT; ++k)
    all_zero = all_zero && zero.read(CaTraffic(k)) == 0 && zero.written(CaTraffic(k)) == 0;
  Result("prims/traffic_reset").print(all_zero);
}

int main(int argc, char** argv) {
  // --small: shapes for sanitizer builds; --bench: adds a larger decode for timing.
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool small = mode == "--small";
  test_reduce(small ? 1 << 14 : 1 << 18);
  test_barrier_votes();
  test_warp_ops();
  test_atomics();
  test_decode(2, 2, 100, 3, false, false);
  test_decode(5, 1, small ? 65 : 257, 4, true, false);  // ragged lengths, including 0: empty splits
  if (!small) test_decode(4, 2, 512, 8, false, true);
  if (mode == "--bench") test_decode(32, 1, 1024, 8, false, true);
  test_mma_tile();
  test_gemm<__half>(64, 64, 32, "f16");
  if (!small) test_gemm<__half>(128, 128, 256, "f16");
  test_gemm<__nv_bfloat16>(small ? 64 : 128, 64, small ? 64 : 128, "bf16");
  test_every_prim();
  std::printf("%d check(s) failed\n", g_failed_checks);
  return g_failed_checks != 0;
}
