// test/cpu-kernels/tpp_bench.cpp — two-phase vs sequence-first decode on the cpu target.
//
// The BENCHMARKS.md microkernel workload at Llama2-7B shapes (32 heads, as `bench tpp`): b rows,
// a prompt of np tokens of which the first ns are shared by all rows (one run of ns/C chunks),
// plus `decoded` completion tokens per row (private). Per decode step, in one process and
// interleaved: our two-phase partition and our sequence-first (paged) baseline, which is phase 2
// alone over the same pool (same kernels, same threads). Reports the median of --reps timed
// steps after warm-up, the speedup, and phase-1 GFLOP/s (4 * b * Hq * ns * D flops).
//
// Build: g++ -O3 -march=native -fno-math-errno -std=c++20 -pthread
//          -I templates/include test/cpu-kernels/tpp_bench.cpp -o tpp_bench
// Usage: tpp_bench [--b 32] [--ns 2048] [--np 2048] [--decoded 128] [--threads 0] [--reps 9]
//                  [--dtype f16|bf16]
//                  [--grid] (ns = np in {1024, 2048, 4096} and ns = 0, b in {16, 32, 64})
// Env: CA_BENCH_HUGE=1 allocates the pools with ca::cpu::host_alloc (2 MiB pages);
//      CA_BENCH_ONE_SLOT=1 maps every shared chunk to one slot (phase 1 without memory stalls).
// The "min" columns (best step) are robust when other processes share the cores.
// Last line: one JSON object with every measured shape.
#define CA_TARGET_CPU 1
#define CA_CPU_PROFILE 1
#include "chunkattn/cpu/module.h"
#include "fixtures.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using ca::cpu::f16;

template <class T>
using BenchCfg = CfgT<32, 32, 128, 64, T, T, T>;

namespace {

constexpr int Hq = BenchCfg<f16>::kQHeads, Hkv = BenchCfg<f16>::kKvHeads,
              D = BenchCfg<f16>::kHeadDim, C = BenchCfg<f16>::kChunk;

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The pool as the module's ca_malloc would allocate it (huge pages when CA_BENCH_HUGE=1).
template <class T>
struct HostArray {
  T* ptr;
  size_t n;
  explicit HostArray(size_t count) : n(count) {
    const bool huge = getenv("CA_BENCH_HUGE") && atoi(getenv("CA_BENCH_HUGE"));
    ptr =
        static_cast<T*>(huge ? ca::cpu::host_alloc(count * sizeof(T)) : malloc(count * sizeof(T)));
    if (!ptr) abort();
    hugepages = huge;
  }
  ~HostArray() { hugepages ? ca::cpu::host_free(ptr, n * sizeof(T)) : free(ptr); }
  T& operator[](size_t i) { return ptr[i]; }
  T* data() { return ptr; }
  bool hugepages;
};

struct Result {
  int b, ns, np, decoded, threads;
  double tpp_us, seq_us, phase1_us, speedup, phase1_gflops, seq_kv_gbps;
  double tpp_min_us, seq_min_us, phase1_min_us;  // best step: robust against other load
};

template <class T>
Result run_shape(int b, int ns, int np, int decoded, int threads, int reps) {
  std::mt19937_64 rng(42);
  const int shared_chunks = ns / C;
  const int private_tokens = np - ns + decoded;
  const int private_chunks = (private_tokens + C - 1) / C;
  const int num_slots = shared_chunks + b * private_chunks;
  std::vector<int> slot_ids(num_slots);
  std::iota(slot_ids.begin(), slot_ids.end(), 0);
  std::shuffle(slot_ids.begin(), slot_ids.end(), rng);  // chunks scattered over the pool

  const size_t pool_elems = size_t(num_slots) * Hkv * C * D;
  HostArray<T> k_pool(pool_elems), v_pool(pool_elems);
  std::vector<T> q(size_t(b) * Hq * D), out(q.size());
  std::normal_distribution<float> normal(0.f, 1.f);
  for (size_t i = 0; i < pool_elems; ++i) {
    k_pool[i] = ca::cpu::from_f32<T>(normal(rng));
    v_pool[i] = ca::cpu::from_f32<T>(normal(rng));
  }
  for (auto& x : q) x = ca::cpu::from_f32<T>(normal(rng));

  std::vector<int> shared_slots(slot_ids.begin(), slot_ids.begin() + shared_chunks);
  // Diagnostic: CA_BENCH_ONE_SLOT=1 maps every shared chunk to one slot (cache-resident K/V:
  // phase 1 without memory stalls).
  if (getenv("CA_BENCH_ONE_SLOT") && atoi(getenv("CA_BENCH_ONE_SLOT")))
    std::fill(shared_slots.begin(), shared_slots.end(), slot_ids[0]);
  auto make = [&](bool two_phase) {
    Context cx;
    cx.row_chunk_offsets.push_back(0);
    cx.row_partial_offsets.push_back(0);
    const bool runs = two_phase && shared_chunks > 0 && b >= 2;
    for (int r = 0; r < b; ++r) {
      cx.row_io.push_back(r);
      cx.row_seq.push_back(r);
      cx.row_length.push_back(np + decoded);
      for (int s : shared_slots) cx.row_chunk_slots.push_back(s);
      for (int j = 0; j < private_chunks; ++j)
        cx.row_chunk_slots.push_back(slot_ids[shared_chunks + r * private_chunks + j]);
      cx.row_chunk_offsets.push_back(int(cx.row_chunk_slots.size()));
      cx.row_shared_chunks.push_back(runs ? shared_chunks : 0);
      if (runs) cx.row_partials.push_back(r);
      cx.row_partial_offsets.push_back(int(cx.row_partials.size()));
    }
    if (runs) {
      cx.runs.push_back(CaSharedRun{0, shared_chunks, 0, 0, b, 0});
      cx.run_slots = shared_slots;
      cx.num_partials = b;
    }
    return cx;
  };
  Context tpp = make(true), seq = make(false);
  std::vector<char> workspace;
  auto params_of = [&](Context& cx) {
    CaDecodeParams p{};
    bind_context(p, cx, b);
    p.q = q.data();
    p.out = out.data();
    p.k_pool = k_pool.data();
    p.v_pool = v_pool.data();
    p.num_slots = num_slots;
    p.softmax_scale = 1.f / sqrtf(float(D));
    p.num_threads = threads;
    return p;
  };
  CaDecodeParams p_tpp = params_of(tpp), p_seq = params_of(seq);
  workspace.resize(ca::cpu::workspace_bytes<BenchCfg<T>>(p_tpp) + 64);
  p_tpp.workspace = workspace.data();
  p_tpp.workspace_bytes = workspace.size();

  auto step = [&](const CaDecodeParams& p, double* phase1_us) {
    const double t0 = seconds();
    const int st = ca::cpu::decode<BenchCfg<T>, Plain>(p);
    const double t = seconds() - t0;
    if (st != CA_OK) {
      fprintf(stderr, "decode failed: %s\n", ca::cpu::last_error());
      exit(1);
    }
    if (phase1_us) {
      const auto& pt = ca::cpu::phase_times();
      *phase1_us = (pt.phase1_end_ns.load() - pt.start_ns.load()) * 1e-3;
    }
    return t * 1e6;
  };
  for (int i = 0; i < 3; ++i) {
    step(p_tpp, nullptr);
    step(p_seq, nullptr);
  }
  std::vector<double> t_tpp, t_seq, t_p1;
  for (int i = 0; i < reps; ++i) {
    double p1 = 0;
    t_tpp.push_back(step(p_tpp, &p1));
    t_p1.push_back(p1);
    t_seq.push_back(step(p_seq, nullptr));
  }
  Result r{};
  r.b = b;
  r.ns = ns;
  r.np = np;
  r.decoded = decoded;
  r.threads = ca::cpu::resolve_num_threads(threads);
  r.tpp_us = median(t_tpp);
  r.seq_us = median(t_seq);
  r.phase1_us = !tpp.runs.empty() ? median(t_p1) : 0;
  r.tpp_min_us = *std::min_element(t_tpp.begin(), t_tpp.end());
  r.seq_min_us = *std::min_element(t_seq.begin(), t_seq.end());
  r.phase1_min_us = !tpp.runs.empty() ? *std::min_element(t_p1.begin(), t_p1.end()) : 0;
  r.speedup = r.seq_us / r.tpp_us;
  r.phase1_gflops = r.phase1_us > 0 ? 4.0 * b * Hq * double(ns) * D / (r.phase1_us * 1e3) : 0;
  r.seq_kv_gbps = 2.0 * b * Hkv * double(np + decoded) * D * sizeof(T) / (r.seq_us * 1e3);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int b = 32, ns = 2048, np = 2048, decoded = 128, threads = 0, reps = 9;
  bool grid = false, bf16_data = false;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return i + 1 < argc ? atoi(argv[++i]) : 0; };
    if (!strcmp(argv[i], "--b"))
      b = next();
    else if (!strcmp(argv[i], "--ns"))
      ns = next();
    else if (!strcmp(argv[i], "--np"))
      np = next();
    else if (!strcmp(argv[i], "--decoded"))
      decoded = next();
    else if (!strcmp(argv[i], "--threads"))
      threads = next();
    else if (!strcmp(argv[i], "--reps"))
      reps = next();
    else if (!strcmp(argv[i], "--grid"))
      grid = true;
    else if (!strcmp(argv[i], "--dtype") && i + 1 < argc)
      bf16_data = !strcmp(argv[++i], "bf16");
  }
  if (ns % C || ns > np) {
    fprintf(stderr, "ns must be a multiple of %d and <= np\n", C);
    return 2;
  }
  std::vector<Result> results;
  std::vector<std::array<int, 3>> shapes;  // b, ns, np
  if (grid) {
    for (int bb : {16, 32, 64})
      for (int n : {1024, 2048, 4096}) {
        shapes.push_back({bb, n, n});
        if (n == 2048) shapes.push_back({bb, 0, n});
      }
  } else {
    shapes.push_back({b, ns, np});
    if (ns != 0) shapes.push_back({b, 0, np});
  }
  fprintf(
      stderr,
      "cpu target (%s), Hq=%d Hkv=%d D=%d C=%d %s, %d threads, median of %d steps, decoded=%d\n",
      ca::cpu::isa(), Hq, Hkv, D, C, bf16_data ? "bf16" : "f16",
      ca::cpu::resolve_num_threads(threads), reps, decoded);
  printf("%4s %6s %6s | %12s %12s %8s | %10s %10s | %10s || %9s %9s %8s %10s\n", "b", "ns", "np",
         "two-phase us", "seq-first us", "speedup", "phase1 us", "p1 GFLOP/s", "seq KV GB/s",
         "min 2p us", "min sf us", "min spd", "min p1 GF/s");
  for (auto [bb, n_s, n_p] : shapes) {
    const Result r = bf16_data ? run_shape<ca::cpu::bf16>(bb, n_s, n_p, decoded, threads, reps)
                               : run_shape<f16>(bb, n_s, n_p, decoded, threads, reps);
    results.push_back(r);
    printf(
        "%4d %6d %6d | %12.1f %12.1f %7.2fx | %10.1f %10.1f | %10.1f || %9.1f %9.1f %7.2fx "
        "%10.1f\n",
        r.b, r.ns, r.np, r.tpp_us, r.seq_us, r.speedup, r.phase1_us, r.phase1_gflops, r.seq_kv_gbps,
        r.tpp_min_us, r.seq_min_us, r.seq_min_us / r.tpp_min_us,
        r.phase1_min_us > 0 ? 4.0 * r.b * Hq * double(r.ns) * D / (r.phase1_min_us * 1e3) : 0.0);
    fflush(stdout);
  }
  printf(
      "{\"isa\":\"%s\",\"heads\":{\"q\":%d,\"kv\":%d},\"headDim\":%d,\"chunk\":%d,\"dtype\":"
      "\"%s\",\"results\":[",
      ca::cpu::isa(), Hq, Hkv, D, C, bf16_data ? "bf16" : "f16");
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    printf(
        "%s{\"b\":%d,\"ns\":%d,\"np\":%d,\"decoded\":%d,\"threads\":%d,\"twoPhaseUs\":%.1f,"
        "\"sequenceFirstUs\":%.1f,"
        "\"speedup\":%.3f,\"phase1Us\":%.1f,\"phase1Gflops\":%.1f,\"twoPhaseMinUs\":%.1f,"
        "\"sequenceFirstMinUs\":%.1f,\"phase1MinUs\":%.1f}",
        i ? "," : "", r.b, r.ns, r.np, r.decoded, r.threads, r.tpp_us, r.seq_us, r.speedup,
        r.phase1_us, r.phase1_gflops, r.tpp_min_us, r.seq_min_us, r.phase1_min_us);
  }
  printf("]}\n");
  return 0;
}
