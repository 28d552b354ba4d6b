// chunkattn/module_cuda.cuh — the C ABI of a module built from the CUDA source, for the `cuda`
// target (nvcc, device memory) and the `emu` target (g++ + runtime/cucpu, host memory).
// Everything here is host code; the generated module instantiates it with its Cfg/Variant.
#ifndef CHUNKATTN_MODULE_CUDA_CUH_
#define CHUNKATTN_MODULE_CUDA_CUH_

#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "chunkattn/abi.h"
#include "chunkattn/context.h"
#include "chunkattn/counters.h"
#include "chunkattn/decode_phase1.cuh"
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

// Runs `kernel` on the GPU, or on the CPU through the shim; a shim diagnostic (deadlock,
// divergent barrier, bad collective mask) becomes CA_ERR_KERNEL naming the kernel and location.
template <class... P, class... A>
int launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem_bytes,
           void* stream, A&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return ok();
  counters::launch(name, uint64_t(grid.x) * grid.y * grid.z);
#if defined(CA_TARGET_CUDA)
  if (smem_bytes > 48 * 1024) {
    cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes));
    if (e != cudaSuccess) return device_status(e, name);
  }
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

inline int copy_bytes(void* dst, const void* src, uint64_t bytes, int32_t kind, void* stream) {
  if (kind < CA_COPY_H2D || kind > CA_COPY_CONTEXT)
    return fail(CA_ERR_INVALID, "ca_memcpy: bad kind");
  if (bytes == 0) return ok();
  counters::copy(kind, bytes);
#if defined(CA_TARGET_CUDA)
  const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                  cudaMemcpyDeviceToDevice, cudaMemcpyHostToDevice};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (int e = device_status(cudaMemcpyAsync(dst, src, bytes, kinds[kind], s), "cudaMemcpyAsync"))
    return e;
  // Stream-ordered: the caller's host buffers are pageable (node arrays, the addon's staging
  // vectors), and for those cudaMemcpyAsync H2D returns once the source is staged, so the source
  // may be reused at once without a sync. A D2H copy is read by the caller: wait for it (the
  // only copy that blocks, as the data-path counters assume). D2D copies stay queued.
  if (kind != CA_COPY_D2H) return ok();
  return device_status(cudaStreamSynchronize(s), "cudaStreamSynchronize");
#else
  (void)stream;
  memmove(dst, src, bytes);
  return ok();
#endif
}

inline int stream_create(void** stream) {
  if (stream == nullptr) return fail(CA_ERR_INVALID, "ca_stream_create: null output");
#if defined(CA_TARGET_CUDA)
  cudaStream_t s = nullptr;
  if (int e =
          device_status(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"))
    return e;
  *stream = s;
#else
  static int host_stream;  // emu runs launches in order on the calling thread
  *stream = &host_stream;
#endif
  return ok();
}

inline int stream_destroy(void* stream) {
#if defined(CA_TARGET_CUDA)
  return stream ? device_status(cudaStreamDestroy(static_cast<cudaStream_t>(stream)),
                                "cudaStreamDestroy")
                : ok();
#else
  (void)stream;
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

// One block per token scatters its K and V rows (every KV head) into the pool, converting from
// f32 when the source is f32. Indices were validated by the addon; a bad one is skipped.
template <class Cfg>
__global__ void write_kv_kernel(const CaWriteKvParams p) {
  using KvT = typename Cfg::KvT;
  constexpr int Hkv = Cfg::kKvHeads, C = Cfg::kChunk, D = Cfg::kHeadDim;
  const int token = blockIdx.x;
  const int slot = ldg<CA_TRAFFIC_CONTEXT>(p.slots + token);
  const int offset = ldg<CA_TRAFFIC_CONTEXT>(p.offsets + token);
  if (slot < 0 || slot >= p.num_slots || offset < 0 || offset >= C) return;
  for (int e = threadIdx.x; e < 2 * Hkv * D; e += blockDim.x) {
    const int which = e / (Hkv * D), h = e / D % Hkv, d = e % D;
    const size_t src = (size_t(token) * Hkv + h) * D + d;
    KvT* pool = static_cast<KvT*>(which == 0 ? p.k_pool : p.v_pool);
    const void* from = which == 0 ? p.k : p.v;
    const KvT value =
        p.src_dtype == CA_F32
            ? from_float<KvT>(ldg<CA_TRAFFIC_KV>(static_cast<const float*>(from) + src))
            : ldg<CA_TRAFFIC_KV>(static_cast<const KvT*>(from) + src);
    stg<CA_TRAFFIC_KV>(pool + ((size_t(slot) * Hkv + h) * C + offset) * D + d, value);
  }
}

template <class Cfg>
int write_kv(const CaWriteKvParams& p, void* stream) {
  if (p.num_tokens < 0) return fail(CA_ERR_INVALID, "ca_write_kv: negative token count");
  if (p.src_dtype != CA_F32 && p.src_dtype != DTypeOf<typename Cfg::KvT>::value)
    return fail(CA_ERR_INVALID, "ca_write_kv: source dtype is neither f32 nor the pool's");
  return launch("write_kv", write_kv_kernel<Cfg>, dim3(unsigned(p.num_tokens)), dim3(128), 0,
                stream, p);
}

// One block per copy: the first num_tokens tokens of every KV head of src_slot, K and V, go to
// dst_slot (copy-on-write of a partly filled chunk).
template <class Cfg>
__global__ void copy_chunks_kernel(void* k_pool, void* v_pool, int32_t num_slots,
                                   const int32_t* copies) {
  using KvT = typename Cfg::KvT;
  constexpr int Hkv = Cfg::kKvHeads, C = Cfg::kChunk, D = Cfg::kHeadDim;
  const int32_t* copy = copies + 3 * blockIdx.x;
  const int src = ldg<CA_TRAFFIC_CONTEXT>(copy), dst = ldg<CA_TRAFFIC_CONTEXT>(copy + 1),
            tokens = ldg<CA_TRAFFIC_CONTEXT>(copy + 2);
  if (src < 0 || src >= num_slots || dst < 0 || dst >= num_slots || tokens < 0 || tokens > C)
    return;
  const int per_pool = Hkv * tokens * D;
  for (int e = threadIdx.x; e < 2 * per_pool; e += blockDim.x) {
    KvT* pool = static_cast<KvT*>(e < per_pool ? k_pool : v_pool);
    const int i = e % per_pool, h = i / (tokens * D), within = i % (tokens * D);
    stg<CA_TRAFFIC_KV>(pool + (size_t(dst) * Hkv + h) * C * D + within,
                       ldg<CA_TRAFFIC_KV>(pool + (size_t(src) * Hkv + h) * C * D + within));
  }
}

template <class Cfg>
int copy_chunks(void* k_pool, void* v_pool, int32_t num_slots, const int32_t* copies,
                int32_t num_copies, void* stream) {
  if (num_copies < 0 || (num_copies > 0 && (!copies || !k_pool || !v_pool)))
    return fail(CA_ERR_INVALID, "ca_copy_chunks: bad arguments");
  return launch("copy_chunks", copy_chunks_kernel<Cfg>, dim3(unsigned(num_copies)), dim3(128), 0,
                stream, k_pool, v_pool, num_slots, copies);
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

// ---- timing (abi.h: ca_event_*) ----------------------------------------------------------------

#if defined(CA_TARGET_CUDA)
inline const char* event_clock() { return "cuda-events"; }
#else
inline const char* event_clock() { return "emu-host-clock"; }
// An emu event: the host steady clock when recorded. Launches run to completion on the calling
// thread, so a record after a launch stamps its end (emulator wall time, not GPU time).
struct HostEvent {
  uint64_t magic = kMagic;
  bool recorded = false;
  std::chrono::steady_clock::time_point at{};
  static constexpr uint64_t kMagic = 0x63616576656e7431ULL;  // "caevent1"
};
inline HostEvent* host_event(void* event) {
  auto* e = static_cast<HostEvent*>(event);
  return e != nullptr && e->magic == HostEvent::kMagic ? e : nullptr;
}
#endif

inline int event_create(void** event) {
  if (event == nullptr) return fail(CA_ERR_INVALID, "ca_event_create: null output");
  *event = nullptr;
#if defined(CA_TARGET_CUDA)
  cudaEvent_t e = nullptr;
  if (int s = device_status(cudaEventCreateWithFlags(&e, cudaEventDefault), "cudaEventCreate"))
    return s;
  *event = e;
#else
  *event = new (std::nothrow) HostEvent;
  if (*event == nullptr) return fail(CA_ERR_NO_MEMORY, "ca_event_create: out of host memory");
#endif
  return ok();
}

inline int event_destroy(void* event) {
  if (event == nullptr) return fail(CA_ERR_INVALID, "ca_event_destroy: null event");
#if defined(CA_TARGET_CUDA)
  return device_status(cudaEventDestroy(static_cast<cudaEvent_t>(event)), "cudaEventDestroy");
#else
  HostEvent* e = host_event(event);
  if (e == nullptr) return fail(CA_ERR_INVALID, "ca_event_destroy: not an event");
  e->magic = 0;
  delete e;
  return ok();
#endif
}

inline int event_record(void* event, void* stream) {
  if (event == nullptr) return fail(CA_ERR_INVALID, "ca_event_record: null event");
#if defined(CA_TARGET_CUDA)
  return device_status(
      cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)),
      "cudaEventRecord");
#else
  (void)stream;
  HostEvent* e = host_event(event);
  if (e == nullptr) return fail(CA_ERR_INVALID, "ca_event_record: not an event");
  e->at = std::chrono::steady_clock::now();
  e->recorded = true;
  return ok();
#endif
}

inline int event_synchronize(void* event) {
  if (event == nullptr) return fail(CA_ERR_INVALID, "ca_event_synchronize: null event");
#if defined(CA_TARGET_CUDA)
  return device_status(cudaEventSynchronize(static_cast<cudaEvent_t>(event)),
                       "cudaEventSynchronize");
#else
  HostEvent* e = host_event(event);
  if (e == nullptr) return fail(CA_ERR_INVALID, "ca_event_synchronize: not an event");
  if (!e->recorded)
    return fail(CA_ERR_INVALID, "ca_event_synchronize: the event was never recorded");
  return ok();
#endif
}

inline int event_elapsed_ms(float* ms, void* start, void* stop) {
  if (ms == nullptr || start == nullptr || stop == nullptr)
    return fail(CA_ERR_INVALID, "ca_event_elapsed_ms: null argument");
#if defined(CA_TARGET_CUDA)
  const cudaError_t e =
      cudaEventElapsedTime(ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(stop));
  // Not recorded, or not complete: the caller's mistake, not a device fault.
  if (e == cudaErrorInvalidResourceHandle || e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return fail(CA_ERR_INVALID, std::string("ca_event_elapsed_ms: ") + cudaGetErrorString(e));
  }
  return device_status(e, "cudaEventElapsedTime");
#else
  const HostEvent *a = host_event(start), *b = host_event(stop);
  if (a == nullptr || b == nullptr)
    return fail(CA_ERR_INVALID, "ca_event_elapsed_ms: not an event");
  if (!a->recorded || !b->recorded)
    return fail(CA_ERR_INVALID, "ca_event_elapsed_ms: an event was never recorded");
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return ok();
#endif
}

// How a decode call uses its workspace: phase-1 partials first, then phase 2's split scratch.
struct WorkspacePlan {
  int phase1_splits = 1, phase2_splits = 1;
  uint64_t partial_bytes = 0, split_bytes = 0;
  uint64_t total() const { return partial_bytes + split_bytes; }
};

// From the host copy of a context whose layout is checked.
template <class Cfg>
WorkspacePlan workspace_plan(const KernelContext& host) {
  WorkspacePlan w;
  const int requests = host.num_requests();
  w.phase2_splits = phase2_splits<Cfg>(requests, sm_count(), phase2_max_row_tokens<Cfg>(host));
  w.split_bytes = phase2_workspace_bytes<Cfg>(requests, w.phase2_splits);
  if (host.num_runs() > 0) {
    w.phase1_splits =
        phase1_splits<Cfg>(host.runs(), host.num_runs(), host.num_partials(), sm_count());
    w.partial_bytes = phase1_workspace_bytes<Cfg>(host.num_partials(), w.phase1_splits);
  }
  return w;
}

template <class Cfg>
uint64_t workspace_bytes(const CaDecodeParams& p) {
  ctx::Error error;
  if (!ctx::check_layout(p.context_host, p.context_words, &error)) return 0;
  return workspace_plan<Cfg>(KernelContext{p.context_host}).total();
}

// Two-phase / chunk-first: phase 1 over the context's shared runs writes partials, then phase 2
// attends to each requested row's remaining tokens and merges them. Without runs: phase 2 alone
// (sequence-first). kListed: the PSA decode driven by `sel` (module_psa.cuh).
template <class Cfg, class Variant, bool kListed = false>
int decode(const CaDecodeParams& p, void* stream, const ChunkSelection& sel = {}) {
  if (p.abi_version != CA_ABI_VERSION || p.struct_bytes != sizeof(CaDecodeParams))
    return fail(CA_ERR_INVALID, "ca_decode: params from another ABI version");
  ctx::Error error;
  if (!ctx::check_layout(p.context_host, p.context_words, &error))
    return fail(CA_ERR_INVALID, std::string("ca_decode: ") + error.message);
  const KernelContext host{p.context_host};
  if (!phase1_partials_in_run_order(host.runs(), host.num_runs()))
    return fail(CA_ERR_INVALID,
                "ca_decode: the runs' partial ranges must be consecutive in run order "
                "(as packContext builds them)");
  using Plan = Phase2Plan<Cfg, kListed>;
  using Plan1 = Phase1PlanOf<Cfg, Variant, kListed>;
  const WorkspacePlan w = workspace_plan<Cfg>(host);
  if (w.total() > 0 && (p.workspace == nullptr || p.workspace_bytes < w.total()))
    return fail(CA_ERR_INVALID, "ca_decode: the workspace holds " +
                                    std::to_string(p.workspace_bytes) + " bytes, " +
                                    std::to_string(w.total()) + " needed (ca_workspace_bytes)");
  const DecodeView ctx = DecodeView::from(p);
  const DecodeTensors tensors = DecodeTensors::from(p);
  const int requests = host.num_requests();
  unsigned char* ws = static_cast<unsigned char*>(p.workspace);
  Phase2Io io{w.phase2_splits, nullptr, nullptr, nullptr, nullptr, 1, sel};
  if (host.num_runs() > 0) {
    const uint64_t n = uint64_t(host.num_partials()) * w.phase1_splits * Cfg::kQHeads;
    const Phase1Io io1{reinterpret_cast<float*>(ws),
                       reinterpret_cast<float*>(ws) + n * Cfg::kHeadDim, w.phase1_splits, sel};
    const int64_t items = phase1_items<Cfg>(host.num_runs(), host.num_partials());
    if (int s = launch("decode_phase1", decode_phase1_kernel<Cfg, Variant, kListed>,
                       dim3(unsigned(items), unsigned(Cfg::kKvHeads), unsigned(w.phase1_splits)),
                       dim3(Plan1::kThreads), Plan1::kSmemBytes, stream, ctx, tensors, io1))
      return s;
    io.part_o = io1.part_o;
    io.part_lse = io1.part_lse;
    io.part_splits = io1.splits;
  }
  if (w.phase2_splits > 1) {
    io.split_o = reinterpret_cast<float*>(ws + w.partial_bytes);
    io.split_lse = io.split_o + uint64_t(requests) * w.phase2_splits * Cfg::kQHeads * Cfg::kHeadDim;
  }
  const dim3 grid(unsigned(requests), unsigned(Cfg::kKvHeads), unsigned(w.phase2_splits));
  if (int s = launch("decode_phase2", decode_phase2_kernel<Cfg, Variant, kListed>, grid,
                     dim3(Plan::kThreads), Plan::kSmemBytes, stream, ctx, tensors, io))
    return s;
  if (w.phase2_splits == 1) return ok();
  return launch("decode_merge_splits", decode_merge_splits_kernel<Cfg, kListed>,
                dim3(unsigned(requests), unsigned(Cfg::kKvHeads)), dim3(Plan::kThreads),
                Plan::kMergeSplitsSmemBytes, stream, ctx, tensors, io);
}

inline int get_stats(CaStats* out) {
  if (out == nullptr) return fail(CA_ERR_INVALID, "ca_get_stats: null output");
  traffic_snapshot(out);
  counters::snapshot(out);
  return ok();
}

inline void reset_stats() {
  traffic_reset();  // emu: also the shim's per-kernel table
}

// ca_kernel_stats (abi.h).
inline const char* kernel_stats_json() {
  static const char* const kNames[CA_TRAFFIC_COUNT] = {"q", "kv", "partial", "out", "context"};
  struct Row {
    uint64_t launches = 0, blocks = 0, smem_instructions = 0, smem_wavefronts = 0, smem_bytes = 0,
             global_instructions = 0, sectors[CA_TRAFFIC_COUNT] = {},
             requested[CA_TRAFFIC_COUNT] = {};
  };
  std::map<std::string, Row> rows;
  {
    // Launches and blocks as issued on the host (counters.h), the same on every target.
    counters::State& s = counters::state();
    std::lock_guard<std::mutex> lock(s.mu);
    for (const auto& [name, k] : s.kernels) {
      rows[name].launches = k.launches;
      rows[name].blocks = k.blocks;
    }
  }
#if !defined(CA_TARGET_CUDA)
  for (const auto& [name, k] : cucpu::kernel_stats_snapshot()) {
    Row& r = rows[name];
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
            field("blocks", r.blocks) + "," + field("smemInstructions", r.smem_instructions) + "," +
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
