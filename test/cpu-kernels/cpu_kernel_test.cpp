// test/cpu-kernels/cpu_kernel_test.cpp — the cpu target's kernels against float64 attention.
//
// Builds random prefix trees itself (shared prefixes, nested sharing, many small groups, no
// sharing, single rows; lengths 0, 1, C-1, C, C+1), lays them out in a shuffled chunk pool
// (unwritten token positions hold NaN, so reading past a length shows), poisons `out` with NaN
// and runs ca::cpu::decode in three partitions:
//   two-phase       runs for every chunk shared by >= 2 rows (random run splits), phase 2 the rest
//   chunk-first     every chunk in a run, private tails included (single-row runs, length mask)
//   sequence-first  num_runs = 0 (the paged baseline)
// and compares every output with a float64 reference (relative L2 error against the dtype's gate).
// Also checks the vector layer (exp, transposes, conversions), write_kv, copy_chunk and argument
// errors.
//
// Output: one JSON object per line ({"check": ...} or {"case": ...}), then {"summary": ...}.
// Exit status 0 when everything passed. Usage: cpu_kernel_test [--seed N] [--quick]
// (-DCA_TEST_FEWER_CONFIGS builds five of the eight configurations, for the fallback ISAs.)
#define CA_TARGET_CPU 1
#include "chunkattn/cpu/module.h"
#include "fixtures.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using ca::cpu::bf16;
using ca::cpu::f16;

namespace {

int g_failures = 0;
int g_checks = 0;
double g_worst[3] = {0, 0, 0};  // worst relative error seen per gate class (f32, f16, bf16)

void report_check(const char* name, bool ok, const char* detail) {
  ++g_checks;
  if (!ok) ++g_failures;
  printf("{\"check\":\"%s\",\"ok\":%s,\"detail\":\"%s\"}\n", name, ok ? "true" : "false", detail);
  fflush(stdout);
}

// ---------------------------------------------------------------------------------------------
// Variants beyond Plain (CfgT and Plain are in fixtures.h).

// Gemma-style logit soft-capping plus a sliding window: params = {cap, window}.
struct SoftcapWindow {
  static constexpr bool kHasScoreMod = true, kHasMask = true;
  CA_HD static float score_mod(float score, const ca::Pos&, const float* params) {
    return params[0] * tanhf(score / params[0]);
  }
  CA_HD static bool mask(const ca::Pos& pos, const float* params) {
    return float(pos.q - pos.kv) < params[1];
  }
  static constexpr int kNumParams = 2;
  static double ref_score(double s, const ca::Pos&, const double* params) {
    return params[0] * tanh(s / params[0]);
  }
  static bool ref_mask(const ca::Pos& pos, const double* params) {
    return double(pos.q - pos.kv) < params[1];
  }
  static const char* name() { return "softcap+window"; }
};

// ALiBi-like bias that depends on the query head, plus a mask on (seq, head, token) parity, so a
// wrong head, sequence or position mapping shows: params = {slope}.
struct HeadBiasMask {
  static constexpr bool kHasScoreMod = true, kHasMask = true;
  CA_HD static float score_mod(float score, const ca::Pos& pos, const float* params) {
    return score - params[0] * float(pos.q_head + 1) * float(pos.q - pos.kv) +
           0.25f * float(pos.kv_head);
  }
  CA_HD static bool mask(const ca::Pos& pos, const float*) {
    return (pos.kv + pos.seq + pos.q_head) % 5 != 0;
  }
  static constexpr int kNumParams = 1;
  static double ref_score(double s, const ca::Pos& pos, const double* params) {
    return s - params[0] * double(pos.q_head + 1) * double(pos.q - pos.kv) +
           0.25 * double(pos.kv_head);
  }
  static bool ref_mask(const ca::Pos& pos, const double*) {
    return (pos.kv + pos.seq + pos.q_head) % 5 != 0;
  }
  static const char* name() { return "head-bias+mask"; }
};

// Score modification only (no mask).
struct ScoreOnly {
  static constexpr bool kHasScoreMod = true, kHasMask = false;
  CA_HD static float score_mod(float score, const ca::Pos& pos, const float* params) {
    return score + params[0] * float((pos.seq * 7 + pos.kv) % 3);
  }
  CA_HD static bool mask(const ca::Pos&, const float*) { return true; }
  static constexpr int kNumParams = 1;
  static double ref_score(double s, const ca::Pos& pos, const double* params) {
    return s + params[0] * double((pos.seq * 7 + pos.kv) % 3);
  }
  static bool ref_mask(const ca::Pos&, const double*) { return true; }
  static const char* name() { return "score-only"; }
};

template <class T>
const char* dtype_name() {
  if (std::is_same<T, f16>::value) return "f16";
  if (std::is_same<T, bf16>::value) return "bf16";
  return "f32";
}
template <class T>
int gate_class() {
  if (std::is_same<T, bf16>::value) return 2;
  if (std::is_same<T, f16>::value) return 1;
  return 0;
}
const double kGate[3] = {1e-5, 2e-3, 1e-2};

template <class T>
T nan_value() {
  if constexpr (std::is_same<T, f16>::value)
    return f16{0x7e00};
  else if constexpr (std::is_same<T, bf16>::value)
    return bf16{0x7fc0};
  else
    return NAN;
}
template <class T>
bool is_nan_bits(T x) {
  return std::isnan(ca::cpu::to_f32(x));
}

// ---------------------------------------------------------------------------------------------
// Prefix trees.

struct Node {
  int chunks = 0;        // full chunks of this node
  int tail_tokens = -1;  // leaf: private tokens after the path; -1 for an internal node
  std::vector<Node> children;
};

struct Segment {  // a node's chunks as seen by the rows below it
  std::vector<int> slots;
  int first_chunk;  // chunk index (depth) of the first chunk in every sharer
  int row_begin, row_end;
  int valid_tokens_last;  // tokens written in the last chunk (C unless a leaf's partial tail)
  bool leaf;
};

struct Layout {
  int num_slots = 0;
  std::vector<std::vector<int>> row_chunks;  // slots in token order
  std::vector<std::vector<int>> row_segments;
  std::vector<int> row_length;
  std::vector<Segment> segments;
  std::vector<std::pair<int, int>> slot_fill;  // (slot, valid tokens) of every used slot
};

void flatten(const Node& node, int depth_chunks, std::vector<int>& path, Layout& out,
             std::vector<int>& slot_ids, int chunk_size) {
  const int seg_index = int(out.segments.size());
  out.segments.push_back(Segment{});
  {
    Segment& seg = out.segments.back();
    seg.first_chunk = depth_chunks;
    seg.row_begin = int(out.row_length.size());
    seg.leaf = node.tail_tokens >= 0;
    const int n = seg.leaf ? (node.tail_tokens + chunk_size - 1) / chunk_size : node.chunks;
    for (int i = 0; i < n; ++i) seg.slots.push_back(slot_ids[out.num_slots++]);
    seg.valid_tokens_last =
        seg.leaf && node.tail_tokens % chunk_size ? node.tail_tokens % chunk_size : chunk_size;
    for (int i = 0; i < n; ++i)
      out.slot_fill.push_back({seg.slots[i], i + 1 == n ? seg.valid_tokens_last : chunk_size});
  }
  path.push_back(seg_index);
  if (node.tail_tokens >= 0) {
    std::vector<int> chunks;
    for (int s : path)
      for (int slot : out.segments[s].slots) chunks.push_back(slot);
    out.row_chunks.push_back(chunks);
    out.row_segments.push_back(path);
    out.row_length.push_back(depth_chunks * chunk_size + node.tail_tokens);
  } else {
    for (const Node& child : node.children)
      flatten(child, depth_chunks + node.chunks, path, out, slot_ids, chunk_size);
  }
  path.pop_back();
  out.segments[seg_index].row_end = int(out.row_length.size());
}

int count_slots(const Node& node, int chunk_size) {
  int n = node.tail_tokens >= 0 ? (node.tail_tokens + chunk_size - 1) / chunk_size : node.chunks;
  for (const Node& c : node.children) n += count_slots(c, chunk_size);
  return n;
}

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(uint64_t seed) : gen(seed) {}
  int uniform(int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(gen);
  }  // inclusive
  double normal() { return std::normal_distribution<double>(0.0, 1.0)(gen); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(gen) < p; }
};

int pick_tail(Rng& rng, int C) {
  switch (rng.uniform(0, 6)) {
    case 0:
      return 0;
    case 1:
      return 1;
    case 2:
      return C - 1;
    case 3:
      return C;
    case 4:
      return C + 1;
    default:
      return rng.uniform(0, 3 * C);
  }
}

Node leaf(int tail) {
  Node n;
  n.tail_tokens = tail;
  return n;
}

// A shared prefix of `prefix_chunks` and `rows` private suffixes.
Node tree_all(Rng& rng, int rows, int prefix_chunks, int C) {
  Node root;
  root.chunks = prefix_chunks;
  for (int i = 0; i < rows; ++i) root.children.push_back(leaf(pick_tail(rng, C)));
  return root;
}
// No sharing at all.
Node tree_none(Rng& rng, int rows, int C) {
  Node root;
  for (int i = 0; i < rows; ++i) root.children.push_back(leaf(rng.uniform(0, 4 * C)));
  return root;
}
// Many small groups under one prefix.
Node tree_groups(Rng& rng, int rows, int C) {
  Node root;
  root.chunks = rng.uniform(0, 2);
  for (int left = rows; left > 0;) {
    const int size = std::min(left, rng.uniform(1, 4));
    Node group;
    group.chunks = rng.uniform(1, 3);
    for (int i = 0; i < size; ++i) group.children.push_back(leaf(pick_tail(rng, C)));
    if (size == 1)
      group = [&] {
        Node chain;  // a single sharer: its chunks are private (not a two-phase run)
        chain.chunks = group.chunks;
        chain.children = group.children;
        return chain;
      }();
    root.children.push_back(group);
    left -= size;
  }
  return root;
}
// Three levels of sharing: root prefix, subtrees, sub-subtrees.
Node tree_nested(Rng& rng, int rows, int C) {
  Node root;
  root.chunks = rng.uniform(1, 3);
  int left = rows;
  while (left > 0) {
    Node mid;
    mid.chunks = rng.uniform(1, 2);
    const int mid_rows = std::min(left, rng.uniform(2, 9));
    int mleft = mid_rows;
    while (mleft > 0) {
      const int n = std::min(mleft, rng.uniform(1, 4));
      if (n == 1) {
        mid.children.push_back(leaf(pick_tail(rng, C)));
      } else {
        Node low;
        low.chunks = rng.uniform(1, 2);
        for (int i = 0; i < n; ++i) low.children.push_back(leaf(pick_tail(rng, C)));
        mid.children.push_back(low);
      }
      mleft -= n;
    }
    root.children.push_back(mid);
    left -= mid_rows;
  }
  return root;
}

// ---------------------------------------------------------------------------------------------
// Kernel context for one partition.

enum class Mode { TwoPhase, ChunkFirst, SequenceFirst };
const char* mode_name(Mode m) {
  return m == Mode::TwoPhase     ? "two-phase"
         : m == Mode::ChunkFirst ? "chunk-first"
                                 : "sequence-first";
}

Context build_context(const Layout& lay, Mode mode, Rng& rng, const std::vector<int>& row_io,
                      const std::vector<int>& row_seq) {
  Context cx;
  const int rows = int(lay.row_length.size());
  cx.row_io.assign(row_io.begin(), row_io.end());
  cx.row_seq.assign(row_seq.begin(), row_seq.end());
  cx.row_length.assign(lay.row_length.begin(), lay.row_length.end());
  cx.row_chunk_offsets.push_back(0);
  for (int r = 0; r < rows; ++r) {
    for (int s : lay.row_chunks[r]) cx.row_chunk_slots.push_back(s);
    cx.row_chunk_offsets.push_back(int(cx.row_chunk_slots.size()));
  }
  std::vector<std::vector<int>> partials_of(rows);
  std::vector<int> shared(rows, 0);
  for (const Segment& seg : lay.segments) {
    if (seg.slots.empty()) continue;
    const int sharers = seg.row_end - seg.row_begin;
    bool is_run = false;
    if (mode == Mode::TwoPhase) is_run = !seg.leaf && sharers >= 2;
    if (mode == Mode::ChunkFirst) is_run = true;
    if (!is_run) continue;
    // Split the segment into runs of random length (tests run boundaries).
    const int n = int(seg.slots.size());
    for (int begin = 0; begin < n;) {
      const int len = rng.chance(0.5) ? n - begin : rng.uniform(1, n - begin);
      CaSharedRun run;
      run.chunk_begin = int(cx.run_slots.size());
      run.num_chunks = len;
      run.kv_begin = (seg.first_chunk + begin) * 0;  // set below (needs chunk size)
      run.row_begin = seg.row_begin;
      run.row_end = seg.row_end;
      run.partial_begin = cx.num_partials;
      cx.num_partials += sharers;
      for (int i = 0; i < len; ++i) cx.run_slots.push_back(seg.slots[begin + i]);
      run.kv_begin = seg.first_chunk + begin;  // in chunks for now
      cx.runs.push_back(run);
      for (int r = seg.row_begin; r < seg.row_end; ++r) {
        partials_of[r].push_back(run.partial_begin + (r - seg.row_begin));
        shared[r] += len;
      }
      begin += len;
    }
  }
  cx.row_partial_offsets.push_back(0);
  for (int r = 0; r < rows; ++r) {
    // Partials merge in any order: shuffle to prove it.
    std::shuffle(partials_of[r].begin(), partials_of[r].end(), rng.gen);
    for (int pidx : partials_of[r]) cx.row_partials.push_back(pidx);
    cx.row_partial_offsets.push_back(int(cx.row_partials.size()));
    cx.row_shared_chunks.push_back(shared[r]);
  }
  // Shuffle the run order (phase 1 must not depend on it).
  std::shuffle(cx.runs.begin(), cx.runs.end(), rng.gen);
  return cx;
}

// ---------------------------------------------------------------------------------------------
// One test case: a Cfg, a Variant, a tree.

template <class Cfg, class Variant>
struct Case {
  using QT = typename Cfg::QT;
  using KvT = typename Cfg::KvT;
  using OutT = typename Cfg::OutT;
  static constexpr int Hq = Cfg::kQHeads, Hkv = Cfg::kKvHeads, D = Cfg::kHeadDim, C = Cfg::kChunk,
                       G = Hq / Hkv;

  static double run(const std::string& label, const Node& tree, Rng& rng, int num_threads) {
    const int needed_slots = count_slots(tree, C);
    const int num_slots = needed_slots + rng.uniform(0, 3);
    std::vector<int> slot_ids(num_slots);
    std::iota(slot_ids.begin(), slot_ids.end(), 0);
    std::shuffle(slot_ids.begin(), slot_ids.end(), rng.gen);
    Layout lay;
    std::vector<int> path;
    flatten(tree, 0, path, lay, slot_ids, C);
    const int rows = int(lay.row_length.size());
    const int num_io_rows = rows + rng.uniform(0, 2);

    // Pool: written tokens random, everything else NaN.
    const size_t chunk_elems = size_t(C) * D;
    std::vector<KvT> k_pool(size_t(num_slots) * Hkv * chunk_elems, nan_value<KvT>());
    std::vector<KvT> v_pool(k_pool.size(), nan_value<KvT>());
    for (auto [slot, valid] : lay.slot_fill)
      for (int h = 0; h < Hkv; ++h)
        for (int t = 0; t < valid; ++t)
          for (int d = 0; d < D; ++d) {
            const size_t i = ((size_t(slot) * Hkv + h) * C + t) * D + d;
            k_pool[i] = ca::cpu::from_f32<KvT>(float(rng.normal()));
            v_pool[i] = ca::cpu::from_f32<KvT>(float(rng.normal()));
          }
    std::vector<QT> q(size_t(num_io_rows) * Hq * D);
    for (auto& x : q) x = ca::cpu::from_f32<QT>(float(1.5 * rng.normal()));
    std::vector<int> row_io(num_io_rows);
    std::iota(row_io.begin(), row_io.end(), 0);
    std::shuffle(row_io.begin(), row_io.end(), rng.gen);
    row_io.resize(rows);
    std::vector<int> row_seq(rows);
    for (auto& s : row_seq) s = rng.uniform(0, 1000);
    std::vector<float> params(std::max(1, Variant::kNumParams));
    std::vector<double> params_d(params.size());
    if (Variant::kNumParams >= 1)
      params[0] = std::is_same<Variant, HeadBiasMask>::value ? 0.01f : 2.5f;
    if (Variant::kNumParams >= 2) params[1] = float(rng.uniform(1, 2 * C + 5));
    if (std::is_same<Variant, ScoreOnly>::value) params[0] = 0.7f;
    for (size_t i = 0; i < params.size(); ++i) params_d[i] = params[i];
    const float scale = 1.f / sqrtf(float(D));

    // Float64 reference.
    std::vector<double> ref(size_t(rows) * Hq * D, 0.0);
    for (int r = 0; r < rows; ++r) {
      const int len = lay.row_length[r];
      for (int h = 0; h < Hq; ++h) {
        const int kvh = h / G;
        std::vector<double> s;
        std::vector<int> tok;
        for (int t = 0; t < len; ++t) {
          const ca::Pos pos{row_seq[r], h, kvh, len - 1, t};
          if (!Variant::ref_mask(pos, params_d.data())) continue;
          const int slot = lay.row_chunks[r][t / C];
          const KvT* k = &k_pool[((size_t(slot) * Hkv + kvh) * C + t % C) * D];
          const QT* qq = &q[(size_t(row_io[r]) * Hq + h) * D];
          double dot = 0;
          for (int d = 0; d < D; ++d)
            dot += double(ca::cpu::to_f32(qq[d])) * double(ca::cpu::to_f32(k[d]));
          s.push_back(Variant::ref_score(double(scale) * dot, pos, params_d.data()));
          tok.push_back(t);
        }
        if (s.empty()) continue;
        const double m = *std::max_element(s.begin(), s.end());
        double l = 0;
        for (double& x : s) l += (x = exp(x - m));
        double* o = &ref[(size_t(r) * Hq + h) * D];
        for (size_t i = 0; i < s.size(); ++i) {
          const int t = tok[i];
          const int slot = lay.row_chunks[r][t / C];
          const KvT* v = &v_pool[((size_t(slot) * Hkv + kvh) * C + t % C) * D];
          for (int d = 0; d < D; ++d) o[d] += s[i] / l * double(ca::cpu::to_f32(v[d]));
        }
      }
    }

    double worst = 0;
    for (Mode mode : {Mode::TwoPhase, Mode::ChunkFirst, Mode::SequenceFirst}) {
      Context cx = build_context(lay, mode, rng, row_io, row_seq);
      for (CaSharedRun& run : cx.runs) run.kv_begin *= C;
      std::vector<OutT> out(size_t(num_io_rows) * Hq * D, nan_value<OutT>());
      CaDecodeParams p{};
      bind_context(p, cx, num_io_rows);
      p.q = q.data();
      p.out = out.data();
      p.k_pool = k_pool.data();
      p.v_pool = v_pool.data();
      p.num_slots = num_slots;
      p.params = params.data();
      p.num_params = Variant::kNumParams;
      p.softmax_scale = scale;
      p.num_threads = num_threads;
      const uint64_t ws_bytes = ca::cpu::workspace_bytes<Cfg>(p);
      std::vector<float> ws(ws_bytes / 4 + 16, NAN);  // poisoned too
      p.workspace = ws.data();
      p.workspace_bytes = ws_bytes;
      const int status = ca::cpu::decode<Cfg, Variant>(p);

      double num = 0, den = 0;
      int non_finite = 0, untouched_bad = 0;
      for (int r = 0; r < rows; ++r)
        for (int i = 0; i < Hq * D; ++i) {
          const double x = ca::cpu::to_f32(out[size_t(row_io[r]) * Hq * D + i]);
          const double y = ref[size_t(r) * Hq * D + i];
          if (!std::isfinite(x)) ++non_finite;
          num += (x - y) * (x - y);
          den += y * y;
        }
      // io rows that no DFS row names stay as they were.
      std::vector<bool> named(num_io_rows, false);
      for (int r = 0; r < rows; ++r) named[row_io[r]] = true;
      for (int io = 0; io < num_io_rows; ++io)
        if (!named[io])
          for (int i = 0; i < Hq * D; ++i)
            untouched_bad += !is_nan_bits(out[size_t(io) * Hq * D + i]);
      const double err = den > 0 ? sqrt(num / den) : sqrt(num);
      const int cls = std::max(std::max(gate_class<QT>(), gate_class<KvT>()), gate_class<OutT>());
      const bool ok = status == CA_OK && non_finite == 0 && untouched_bad == 0 && err <= kGate[cls];
      if (status == CA_OK && non_finite == 0) g_worst[cls] = std::max(g_worst[cls], err);
      worst = std::max(worst, err);
      ++g_checks;
      if (!ok) ++g_failures;
      printf(
          "{\"case\":\"%s\",\"mode\":\"%s\",\"cfg\":\"Hq=%d Hkv=%d D=%d C=%d q=%s kv=%s "
          "out=%s\",\"variant\":\"%s\","
          "\"rows\":%d,\"runs\":%d,\"threads\":%d,\"status\":%d,\"nonFinite\":%d,"
          "\"untouchedClobbered\":%d,"
          "\"relErr\":%.3e,\"gate\":%.0e,\"ok\":%s%s%s%s}\n",
          label.c_str(), mode_name(mode), Hq, Hkv, D, C, dtype_name<QT>(), dtype_name<KvT>(),
          dtype_name<OutT>(), Variant::name(), rows, int(cx.runs.size()), num_threads, status,
          non_finite, untouched_bad, err, kGate[cls], ok ? "true" : "false",
          status ? ",\"error\":\"" : "", status ? ca::cpu::last_error() : "", status ? "\"" : "");
      fflush(stdout);
    }
    return worst;
  }
};

// Runs the standard tree set for one Cfg/Variant.
template <class Cfg, class Variant>
void run_suite(const char* name, Rng& rng, bool quick) {
  constexpr int C = Cfg::kChunk;
  using K = Case<Cfg, Variant>;
  const int threads_choice[] = {1, 2, 3};
  int t = 0;
  auto threads = [&] { return threads_choice[(t++) % 3]; };
  auto label = [&](const char* what) { return std::string(name) + "/" + what; };
  // Single rows at the edge lengths.
  for (int len : {0, 1, C - 1, C, C + 1}) {
    Node root;
    root.children.push_back(leaf(len));
    K::run(label(("single len=" + std::to_string(len)).c_str()), root, rng, threads());
  }
  {  // one row under a multi-chunk prefix (a single sharer: no two-phase run)
    Node root;
    root.chunks = 2;
    root.children.push_back(leaf(C + 1));
    K::run(label("single with prefix"), root, rng, threads());
  }
  K::run(label("all share, b=2"), tree_all(rng, 2, 3, C), rng, threads());
  K::run(label("all share, b=17"), tree_all(rng, 17, 4, C), rng, threads());
  K::run(label("none, b=17"), tree_none(rng, 17, C), rng, threads());
  K::run(label("groups, b=33"), tree_groups(rng, 33, C), rng, threads());
  K::run(label("nested, b=33"), tree_nested(rng, 33, C), rng, threads());
  if (!quick) {
    K::run(label("all share, b=129"), tree_all(rng, 129, 2, C), rng, threads());
    K::run(label("nested, b=129"), tree_nested(rng, 129, C), rng, threads());
  }
}

// ---------------------------------------------------------------------------------------------
// Checks of the vector layer and the small entry points.

void check_simd() {
  namespace s = ca::cpu::simd;
  constexpr int W = s::kWidth;
  char detail[256];
  {  // exp: relative error over the normal range, special values
    double worst_ulp = 0;
    bool special_ok = true;
    std::vector<float> xs;
    for (double x = -87.0; x <= 88.5; x += 0.000731) xs.push_back(float(x));
    for (float x : {0.f, -0.f, 1e-8f, -1e-8f, 88.7f, -87.3f}) xs.push_back(x);
    while (xs.size() % W) xs.push_back(0.f);
    for (size_t i = 0; i < xs.size(); i += W) {
      float y[W];
      s::store(y, s::exp(s::load(&xs[i])));
      for (int j = 0; j < W; ++j) {
        const double ref = exp(double(xs[i + j]));
        const double ulp = ldexp(1.0, ilogb(ref) - 23);
        worst_ulp = std::max(worst_ulp, fabs(y[j] - ref) / ulp);
      }
    }
    const float special[4] = {-INFINITY, INFINITY, NAN, -200.f};
    for (int j = 0; j < 4; ++j) {
      float buf[W], y[W];
      for (int i = 0; i < W; ++i) buf[i] = special[(j + i) % 4];
      s::store(y, s::exp(s::load(buf)));
      for (int i = 0; i < W; ++i) {
        const float x = buf[i];
        special_ok &= std::isnan(x) ? std::isnan(y[i]) : x > 0 ? std::isinf(y[i]) : y[i] == 0.f;
      }
    }
    // exp_nonpos (softmax weights): x <= 0 only.
    double worst_nonpos_ulp = 0;
    for (size_t i = 0; i < xs.size(); i += W) {
      float x[W], y[W];
      for (int j = 0; j < W; ++j) x[j] = -fminf(fabsf(xs[i + j]), 87.f);  // results stay normal
      s::store(y, s::exp_nonpos(s::load(x)));
      for (int j = 0; j < W; ++j) {
        const double ref = exp(double(x[j]));
        const double ulp = ldexp(1.0, ilogb(ref) - 23);
        worst_nonpos_ulp = std::max(worst_nonpos_ulp, fabs(y[j] - ref) / ulp);
      }
    }
    for (int j = 0; j < 4; ++j) {
      const float in[4] = {-INFINITY, NAN, -200.f, -0.f};
      float buf[W], y[W];
      for (int i = 0; i < W; ++i) buf[i] = in[(j + i) % 4];
      s::store(y, s::exp_nonpos(s::load(buf)));
      for (int i = 0; i < W; ++i)
        special_ok &= std::isnan(buf[i]) ? std::isnan(y[i])
                      : buf[i] == 0.f    ? y[i] == 1.f
                                         : y[i] == 0.f;
    }
    worst_ulp = std::max(worst_ulp, worst_nonpos_ulp);
    snprintf(
        detail, sizeof detail,
        "max %.2f ulp on [-87, 88.5] (exp_nonpos on [-87, 0]: %.2f); exp(-inf)=0, exp(inf)=inf, "
        "exp(nan)=nan: %s",
        worst_ulp, worst_nonpos_ulp, special_ok ? "yes" : "no");
    report_check("simd exp", worst_ulp <= 3.0 && special_ok, detail);
  }
  {  // transpose and reduce_transpose
    s::V r[W], acc[W];
    float buf[W * W];
    for (int i = 0; i < W * W; ++i) buf[i] = float(i);
    for (int i = 0; i < W; ++i) r[i] = acc[i] = s::load(buf + i * W);
    s::transpose(r);
    bool ok = true;
    for (int i = 0; i < W; ++i) {
      float row[W];
      s::store(row, r[i]);
      for (int j = 0; j < W; ++j) ok &= row[j] == buf[j * W + i];
    }
    float sums[W];
    s::store(sums, s::reduce_transpose(acc));
    for (int i = 0; i < W; ++i) {
      float want = 0;
      for (int j = 0; j < W; ++j) want += buf[i * W + j];
      ok &= sums[i] == want;
    }
    snprintf(detail, sizeof detail, "%s, width %d", CA_CPU_ISA, W);
    report_check("simd transpose and transpose-sum", ok, detail);
  }
  {  // conversions: f16 soft path against the hardware path for all 2^16 values and rounding
    int bad = 0;
    for (uint32_t b = 0; b < 65536; ++b) {
      const float x = ca::cpu::f16_bits_to_f32_soft(uint16_t(b));
      const float y = ca::cpu::to_f32(f16{uint16_t(b)});
      if (!(x == y || (std::isnan(x) && std::isnan(y)) || memcmp(&x, &y, 4) == 0)) ++bad;
    }
    std::mt19937 gen(7);
    for (int i = 0; i < 200000; ++i) {
      const uint32_t u = gen();
      float x;
      memcpy(&x, &u, 4);
      if (i % 2)
        x = ldexpf(float(gen() % 100000) / 1000.f, int(gen() % 40) - 30);  // in f16 range mostly
      const uint16_t soft = ca::cpu::f32_to_f16_bits_soft(x);
      const uint16_t hard = ca::cpu::from_f32<f16>(x).bits;
      if (soft != hard && !(std::isnan(x) && (soft & 0x7c00) == 0x7c00 && (soft & 0x3ff))) ++bad;
    }
    // bf16: round to nearest even.
    const float ties[] = {1.00390625f /* 1 + 2^-8: tie, rounds to even 1 */,
                          1.01171875f /* tie to 1.015625 */};
    bad += ca::cpu::from_f32<bf16>(ties[0]).bits != 0x3f80;
    bad += ca::cpu::from_f32<bf16>(ties[1]).bits != 0x3f82;
    // Vector stores agree with the scalar ones.
    float src[16];
    for (int i = 0; i < 16; ++i) src[i] = float(gen()) / 1e6f - 2000.f;
    f16 h[16];
    bf16 bb[16];
    for (int i = 0; i < 16; i += W) {
      s::store(h + i, s::load(src + i));
      s::store(bb + i, s::load(src + i));
    }
    for (int i = 0; i < 16; ++i) {
      bad += h[i].bits != ca::cpu::from_f32<f16>(src[i]).bits;
      bad += bb[i].bits != ca::cpu::from_f32<bf16>(src[i]).bits;
    }
    snprintf(detail, sizeof detail, "%d mismatches", bad);
    report_check("f16/bf16 conversions", bad == 0, detail);
  }
}

// One copy through ca::cpu::copy_chunks.
template <class Cfg>
int copy_one(void* k_pool, void* v_pool, int num_slots, int src, int dst, int tokens) {
  const int32_t copy[3] = {src, dst, tokens};
  return ca::cpu::copy_chunks<Cfg>(k_pool, v_pool, num_slots, copy, 1);
}

void check_entry_points() {
  using Cfg = CfgT<4, 2, 64, 16, f16, f16, f16>;
  constexpr int Hkv = 2, D = 64, C = 16;
  char detail[256];
  {  // write_kv from f32 and from the pool dtype; copy_chunk
    const int slots = 3;
    std::vector<f16> kp(size_t(slots) * Hkv * C * D, f16{0}), vp(kp.size(), f16{0});
    std::vector<float> k(size_t(2) * Hkv * D), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) k[i] = float(i) * 0.25f, v[i] = -float(i) * 0.5f;
    const int32_t s[2] = {2, 0}, off[2] = {5, 15};
    CaWriteKvParams w{kp.data(), vp.data(), slots, 2, s, off, k.data(), v.data(), CA_F32};
    int st = ca::cpu::write_kv<Cfg>(w);
    bool ok = st == CA_OK;
    for (int i = 0; i < 2; ++i)
      for (int h = 0; h < Hkv; ++h)
        for (int d = 0; d < D; ++d) {
          const size_t at = ((size_t(s[i]) * Hkv + h) * C + off[i]) * D + d;
          ok &= ca::cpu::to_f32(kp[at]) == k[(i * Hkv + h) * D + d];
          ok &= ca::cpu::to_f32(vp[at]) == v[(i * Hkv + h) * D + d];
        }
    std::vector<f16> k16(k.size());
    for (size_t i = 0; i < k.size(); ++i) k16[i] = f16{uint16_t(0x3c00 + i % 7)};
    CaWriteKvParams w16{kp.data(), vp.data(), slots, 1, s, off, k16.data(), k16.data(), CA_F16};
    ok &= ca::cpu::write_kv<Cfg>(w16) == CA_OK;
    ok &= kp[((size_t(2) * Hkv + 1) * C + 5) * D + 3].bits == k16[(1 * D) + 3].bits;
    ok &= copy_one<Cfg>(kp.data(), vp.data(), slots, 2, 1, 6) == CA_OK;
    for (int h = 0; h < Hkv; ++h)
      for (int t = 0; t < C; ++t)
        for (int d = 0; d < D; ++d) {
          const size_t src = ((size_t(2) * Hkv + h) * C + t) * D + d,
                       dst = ((size_t(1) * Hkv + h) * C + t) * D + d;
          ok &= t < 6 ? kp[dst].bits == kp[src].bits && vp[dst].bits == vp[src].bits
                      : kp[dst].bits == 0;
        }
    // Errors.
    const int32_t bad_slot[1] = {3}, bad_off[1] = {16}, good[1] = {0};
    CaWriteKvParams e1{kp.data(), vp.data(), slots, 1, bad_slot, good, k.data(), v.data(), CA_F32};
    CaWriteKvParams e2{kp.data(), vp.data(), slots, 1, good, bad_off, k.data(), v.data(), CA_F32};
    CaWriteKvParams e3{kp.data(), vp.data(), slots, 1, good, good, k.data(), v.data(), CA_BF16};
    ok &= ca::cpu::write_kv<Cfg>(e1) == CA_ERR_INVALID &&
          ca::cpu::write_kv<Cfg>(e2) == CA_ERR_INVALID &&
          ca::cpu::write_kv<Cfg>(e3) == CA_ERR_INVALID;
    ok &= copy_one<Cfg>(kp.data(), vp.data(), slots, 0, 3, 1) == CA_ERR_INVALID;
    ok &= copy_one<Cfg>(kp.data(), vp.data(), slots, 0, 1, C + 1) == CA_ERR_INVALID;
    snprintf(detail, sizeof detail, "last error: %s", ca::cpu::last_error());
    report_check("write_kv and copy_chunks", ok, detail);
  }
  {  // decode rejects malformed calls with CA_ERR_INVALID and a message
    std::vector<f16> q(4 * D), out(4 * D), pool(size_t(1) * Hkv * C * D);
    Context cx;
    cx.row_io = {0};
    cx.row_seq = {0};
    cx.row_length = {5};
    cx.row_chunk_offsets = {0, 1};
    cx.row_chunk_slots = {0};
    cx.row_shared_chunks = {0};
    cx.row_partial_offsets = {0, 0};
    CaDecodeParams p{};
    bind_context(p, cx, 1);
    p.q = q.data();
    p.out = out.data();
    p.k_pool = pool.data();
    p.v_pool = pool.data();
    p.num_slots = 1;
    p.softmax_scale = 0.125f;
    bool ok = ca::cpu::decode<Cfg, Plain>(p) == CA_OK;
    std::string msgs;
    auto expect_invalid = [&](CaDecodeParams bad) {
      const int st = ca::cpu::decode<Cfg, Plain>(bad);
      ok &= st == CA_ERR_INVALID;
      msgs += ca::cpu::last_error();
      msgs += "; ";
    };
    CaDecodeParams bad = p;
    bad.abi_version = 99;
    expect_invalid(bad);
    bad = p;
    bad.context_words = p.context_words - 1;  // the header no longer matches
    expect_invalid(bad);
    std::vector<int32_t> moved(cx.packed);
    moved[ca::ctx::kWordSections + 2 * ca::ctx::kRowLength] = int32_t(moved.size());
    bad = p;
    bad.context = bad.context_host = moved.data();  // a section outside the buffer
    expect_invalid(bad);
    bad = p;
    bad.softmax_scale = INFINITY;
    expect_invalid(bad);
    Context with_run = cx;
    with_run.runs = {CaSharedRun{0, 1, 0, 0, 1, 0}};
    with_run.run_slots = {0};
    with_run.num_partials = 1;
    bind_context(bad, with_run, 1);
    bad.workspace = nullptr;
    expect_invalid(bad);  // no workspace
    report_check("decode argument errors", ok, ok ? "all rejected" : msgs.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 12345;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], nullptr, 10);
    if (!strcmp(argv[i], "--quick")) quick = true;
  }
  printf("{\"seed\":%llu,\"isa\":\"%s\"}\n", (unsigned long long)seed, CA_CPU_ISA);
  Rng rng(seed);
  check_simd();
  check_entry_points();

  // d = 64 / 80 / 96 / 128, GQA groups 1 / 2 / 4 / 6 / 8, every dtype, every variant kind.
  run_suite<CfgT<8, 8, 128, 64, f16, f16, f16>, Plain>("g1 d128 c64 f16", rng, quick);
  run_suite<CfgT<32, 8, 128, 64, bf16, bf16, bf16>, Plain>("g4 d128 c64 bf16", rng, quick);
  run_suite<CfgT<16, 2, 64, 32, float, float, float>, Plain>("g8 d64 c32 f32", rng, quick);
  run_suite<CfgT<12, 2, 96, 16, f16, f16, f16>, SoftcapWindow>("g6 d96 c16 f16 softcap+window", rng,
                                                               quick);
  run_suite<CfgT<4, 2, 80, 128, float, bf16, float>, HeadBiasMask>(
      "g2 d80 c128 bf16-kv head-bias+mask", rng, quick);
#if !defined(CA_TEST_FEWER_CONFIGS)  // the fallback builds compile the first five only
  run_suite<CfgT<8, 1, 128, 64, float, float, float>, ScoreOnly>("g8 mqa d128 c64 f32 score-only",
                                                                 rng, quick);
  run_suite<CfgT<2, 2, 64, 16, float, bf16, f16>, Plain>("g1 d64 c16 f32-q bf16-kv f16-out", rng,
                                                         quick);
  run_suite<CfgT<4, 4, 64, 32, f16, f16, float>, SoftcapWindow>(
      "g1 d64 c32 f16->f32 softcap+window", rng, quick);
#endif

  printf(
      "{\"summary\":{\"checks\":%d,\"failures\":%d,\"worstRelErr\":{\"f32\":%.3e,\"f16\":%.3e,"
      "\"bf16\":%.3e}}}\n",
      g_checks, g_failures, g_worst[0], g_worst[1], g_worst[2]);
  return g_failures == 0 ? 0 : 1;
}
