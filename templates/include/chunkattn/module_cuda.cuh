// chunkattn/module_cuda.cuh — the C ABI of a module built from the CUDA source, for the `cuda`
// target (nvcc, device memory) and the `emu` target (g++ + runtime/cucpu, host memory).
// Everything here is host code; the generated module instantiates it with its Cfg/Variant.
#ifndef CHUNKATTN_MODULE_CUDA_CUH_
#define CHUNKATTN_MODULE_CUDA_CUH_

#include <stdlib.h>
#include <string.h>

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "chunkattn/abi.h"
#include "chunkattn/decode_phase2.cuh"
#include "chunkattn/decode_view.cuh"
#include "chunkattn/dtype.cuh"
#include "chunkattn/module_status.h"
#include "chunkattn/prims.cuh"

#if !defined(CA_TARGET_CUDA) && !defined(CA_TARGET_EMU)
#error "module_cuda.cuh needs CA_TARGET_CUDA or CA_TARGET_EMU"
#endif

namespace ca::cuda_module {

#if defined(CA_TARGET_CUDA)
inline int device_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return ok();
  return fail(e == cudaErrorMemoryAllocation ? CA_ERR_NO_MEMORY : CA_ERR_DEVICE,
              std::string(what) + ": " + cudaGetErrorString(e));
}
#endif

#if defined(CA_TARGET_CUDA)
// Launches per kernel name (the emu target's come from the shim, with its memory figures).
inline std::mutex launch_table_mutex;
inline std::map<std::string, uint64_t> launch_table;
inline void count_kernel_launch(const char* name) {
  std::lock_guard<std::mutex> lock(launch_table_mutex);
  ++launch_table[name];
}
#endif

// Runs `kernel` on the GPU, or on the CPU through the shim; a shim diagnostic (deadlock,
// divergent barrier, bad collective mask) becomes CA_ERR_KERNEL naming the kernel and location.
template <class... P, class... A>
int launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes,
           void* stream, A&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return ok();
#if defined(CA_TARGET_CUDA)
  if (smem_bytes > 48 * 1024) {
    cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes));
    if (e != cudaSuccess) return device_status(e, name);
  }
  count_kernel_launch(name);
  kernel<<<grid, block, smem_bytes, static_cast<cudaStream_t>(stream)>>>(std::forward<A>(args)...);
  return device_status(cudaGetLastError(), name);
#else
  (void)stream;
  traffic_count_launch();
  const cucpu::Error e =
      cucpu::launch_named(name, kernel, grid, block, smem_bytes, std::forward<A>(args)...);
  if (e.ok()) return ok();
  return fail(CA_ERR_KERNEL, e.to_string());  // "file:line:col: kernel 'name' failed (kind): ..."

#endif
}

inline int malloc_bytes(void** ptr, uint64_t bytes) {
  if (ptr == nullptr) return fail(CA_ERR_INVALID, "ca_malloc: null output pointer");
  *ptr = nullptr;
  if (bytes == 0) return ok();
#if defined(CA_TARGET_CUDA)
  return device_status(cudaMalloc(ptr, bytes), "cudaMalloc");
#else
  *ptr = aligned_alloc(256, (bytes + 255) / 256 * 256);
  return *ptr ? ok() : fail(CA_ERR_NO_MEMORY, "ca_malloc: out of host memory");
#endif
}

inline int free_bytes(void* ptr) {
#if defined(CA_TARGET_CUDA)
  return device_status(cudaFree(ptr), "cudaFree");
#else
  free(ptr);
  return ok();
#endif
}

inline int copy_bytes(void* dst, const void* src, uint64_t bytes, int32_t kind) {
  if (kind < CA_COPY_H2D || kind > CA_COPY_D2D) return fail(CA_ERR_INVALID, "ca_memcpy: bad kind");
  if (bytes == 0) return ok();
#if defined(CA_TARGET_CUDA)
  const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                  cudaMemcpyDeviceToDevice};
  return device_status(cudaMemcpy(dst, src, bytes, kinds[kind]), "cudaMemcpy");
#else
  memmove(dst, src, bytes);
  return ok();
#endif
}

inline int set_bytes(void* dst, int32_t value, uint64_t bytes) {
#if defined(CA_TARGET_CUDA)
  return device_status(cudaMemset(dst, value, bytes), "cudaMemset");
#else
  memset(dst, value, bytes);
  return ok();
#endif
}

inline int synchronize(void* stream) {
#if defined(CA_TARGET_CUDA)
  return device_status(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)),
                       "cudaStreamSynchronize");
#else
  (void)stream;
  return ok();
#endif
}

// Scatters tokens' K/V rows into the pool. Rows are converted to the pool's dtype on the host
// and copied one (token, head) row at a time; a device-side scatter kernel can replace this
// without changing the ABI.
template <class Cfg>
int write_kv(const CaWriteKvParams& p) {
  using KvT = typename Cfg::KvT;
  constexpr int Hkv = Cfg::kKvHeads, C = Cfg::kChunk, D = Cfg::kHeadDim;
  std::vector<KvT> row(D);
  for (int i = 0; i < p.num_tokens; ++i) {
    const int slot = p.slots[i], offset = p.offsets[i];
    if (slot < 0 || slot >= p.num_slots || offset < 0 || offset >= C)
      return fail(CA_ERR_INVALID, "ca_write_kv: token " + std::to_string(i) + " targets slot " +
                                      std::to_string(slot) + " offset " + std::to_string(offset));
    for (int which = 0; which < 2; ++which) {
      const void* src = which == 0 ? p.k : p.v;
      KvT* pool = static_cast<KvT*>(which == 0 ? p.k_pool : p.v_pool);
      for (int h = 0; h < Hkv; ++h) {
        const size_t src_index = (size_t(i) * Hkv + h) * D;
        if (p.src_dtype == CA_F32) {
          for (int d = 0; d < D; ++d)
            row[d] = from_float<KvT>(static_cast<const float*>(src)[src_index + d]);
        } else {
          memcpy(row.data(), static_cast<const KvT*>(src) + src_index, D * sizeof(KvT));
        }
        KvT* dst = pool + ((size_t(slot) * Hkv + h) * C + offset) * D;
        if (int s = copy_bytes(dst, row.data(), D * sizeof(KvT), CA_COPY_H2D)) return s;
      }
    }
  }
  return ok();
}

// Copy-on-write of a chunk's first num_tokens tokens, every KV head, K and V.
template <class Cfg>
int copy_chunk(void* k_pool, void* v_pool, int32_t num_slots, int32_t src, int32_t dst,
               int32_t num_tokens) {
  using KvT = typename Cfg::KvT;
  constexpr int Hkv = Cfg::kKvHeads, C = Cfg::kChunk, D = Cfg::kHeadDim;
  if (src < 0 || src >= num_slots || dst < 0 || dst >= num_slots || num_tokens < 0 ||
      num_tokens > C)
    return fail(CA_ERR_INVALID, "ca_copy_chunk: slot or token count out of range");
  for (void* pool : {k_pool, v_pool})
    for (int h = 0; h < Hkv; ++h) {
      KvT* base = static_cast<KvT*>(pool);
      const size_t row_bytes = size_t(num_tokens) * D * sizeof(KvT);
      if (int s = copy_bytes(base + (size_t(dst) * Hkv + h) * C * D,
                             base + (size_t(src) * Hkv + h) * C * D, row_bytes, CA_COPY_D2D))
        return s;
    }
  return ok();
}

// SMs the split factor plans for: the device's on cuda; an A100's (108) on emu, so that small
// batches take the split-KV path there too.
inline int sm_count() {
#if defined(CA_TARGET_CUDA)
  static const int n = [] {
    int device = 0, count = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
      return 108;
    return count;
  }();
  return n;
#else
  return 108;
#endif
}

template <class Cfg>
uint64_t workspace_bytes(const CaDecodeParams& p) {
  return phase2_workspace_bytes<Cfg>(p.num_rows, phase2_splits<Cfg>(p.num_rows, sm_count()));
}

template <class Cfg, class Variant>
int decode(const CaDecodeParams& p, void* stream) {
  if (p.abi_version != CA_ABI_VERSION || p.struct_bytes != sizeof(CaDecodeParams))
    return fail(CA_ERR_INVALID, "ca_decode: params from another ABI version");
  if (p.num_runs != 0)
    return fail(
        CA_ERR_UNSUPPORTED,
        "ca_decode: this module has no phase-1 kernel yet; build the context with no shared runs");
  using Plan = Phase2Plan<Cfg>;
  const int splits = phase2_splits<Cfg>(p.num_rows, sm_count());
  const uint64_t need = phase2_workspace_bytes<Cfg>(p.num_rows, splits);
  if (need > 0 && (p.workspace == nullptr || p.workspace_bytes < need))
    return fail(CA_ERR_INVALID, "ca_decode: the workspace holds " +
                                    std::to_string(p.workspace_bytes) + " bytes, " +
                                    std::to_string(need) + " needed (ca_workspace_bytes)");
  const DecodeView ctx = DecodeView::from(p);
  const DecodeTensors tensors = DecodeTensors::from(p);
  Phase2Io io{splits, nullptr, nullptr, nullptr, nullptr, 1};
  if (splits > 1) {
    io.split_o = static_cast<float*>(p.workspace);
    io.split_lse = io.split_o + uint64_t(p.num_rows) * splits * Cfg::kQHeads * Cfg::kHeadDim;
  }
  const dim3 grid(unsigned(p.num_rows), unsigned(Cfg::kKvHeads), unsigned(splits));
  if (int s = launch("decode_phase2", decode_phase2_kernel<Cfg, Variant>, grid,
                     dim3(Plan::kThreads), Plan::kSmemBytes, stream, ctx, tensors, io))
    return s;
  if (splits == 1) return ok();
  return launch("decode_merge_splits", decode_merge_splits_kernel<Cfg>,
                dim3(unsigned(p.num_rows), unsigned(Cfg::kKvHeads)), dim3(Plan::kThreads),
                Plan::kMergeSplitsSmemBytes, stream, ctx, tensors, io);
}

inline int get_stats(CaStats* out) {
  if (out == nullptr) return fail(CA_ERR_INVALID, "ca_get_stats: null output");
  traffic_snapshot(out);
  return ok();
}

inline void reset_stats() {
  traffic_reset();  // emu: also the shim's per-kernel table
#if defined(CA_TARGET_CUDA)
  std::lock_guard<std::mutex> lock(launch_table_mutex);
  launch_table.clear();
#endif
}

// ca_kernel_stats (abi.h).
inline const char* kernel_stats_json() {
  static const char* const kNames[CA_TRAFFIC_COUNT] = {"q", "kv", "partial", "out", "context"};
  struct Row {
    uint64_t launches = 0, smem_instructions = 0, smem_wavefronts = 0, smem_bytes = 0,
             global_instructions = 0, sectors[CA_TRAFFIC_COUNT] = {},
             requested[CA_TRAFFIC_COUNT] = {};
  };
  std::map<std::string, Row> rows;
#if defined(CA_TARGET_CUDA)
  {
    std::lock_guard<std::mutex> lock(launch_table_mutex);
    for (const auto& [name, n] : launch_table) rows[name].launches = n;
  }
#else
  for (const auto& [name, k] : cucpu::kernel_stats_snapshot()) {
    Row& r = rows[name];
    r.launches = k.launches;
    r.smem_instructions = k.mem.smem_instructions;
    r.smem_wavefronts = k.mem.smem_wavefronts;
    r.smem_bytes = k.mem.smem_bytes;
    r.global_instructions = k.mem.global_instructions;
    for (int c = 0; c < CA_TRAFFIC_COUNT; ++c) {
      r.sectors[c] = k.mem.sectors[c];
      r.requested[c] = k.mem.requested[c];
    }
  }
#endif
  auto field = [](const char* key, uint64_t v) {
    return std::string("\"") + key + "\":" + std::to_string(v);
  };
  auto by_category = [&](const uint64_t(&v)[CA_TRAFFIC_COUNT]) {
    std::string s = "{";
    for (int c = 0; c < CA_TRAFFIC_COUNT; ++c) s += (c ? "," : "") + field(kNames[c], v[c]);
    return s + "}";
  };
  std::string json = "{\"kernels\":{";
  bool first = true;
  for (const auto& [name, r] : rows) {
    // Kernel names are C identifiers or demangled C++ names: no characters JSON must escape
    // other than these two.
    std::string quoted;
    for (char ch : name) {
      if (ch == '"' || ch == '\\') quoted += '\\';
      quoted += ch;
    }
    json += (first ? "\"" : ",\"") + quoted + "\":{" + field("launches", r.launches) + "," +
            field("smemInstructions", r.smem_instructions) + "," +
            field("smemWavefronts", r.smem_wavefronts) + "," + field("smemBytes", r.smem_bytes) +
            "," + field("globalInstructions", r.global_instructions) +
            ",\"sectors\":" + by_category(r.sectors) +
            ",\"requestedBytes\":" + by_category(r.requested) + "}";
    first = false;
  }
  json += "}}";
  static thread_local std::string result;
  result = std::move(json);
  return result.c_str();
}

}  // namespace ca::cuda_module

#endif  // CHUNKATTN_MODULE_CUDA_CUH_
