// chunkattn/abi.h — the one C ABI every compiled module exports, whatever its target.
//
// A module is a shared library built from one KernelSpec for one build target:
//   cuda  nvcc, one -gencode per arch; pointers below are device pointers
//   emu   the same .cu compiled by g++ with runtime/cucpu; host pointers
//   cpu   templates/include/chunkattn/cpu/; host pointers
// The addon (runtime/native) dlopens a module, checks ca_abi_version(), allocates memory only
// through ca_malloc/ca_free/ca_memcpy (so the addon itself never links CUDA), validates every
// argument, then calls ca_decode / ca_write_kv / ca_copy_chunks. Plan once, run per layer: the
// packed kernel context is uploaded once per step; each layer's call passes only its tensors.
//
// Shapes use the spec's constants: Hq query heads, Hkv KV heads (G = Hq / Hkv), D head dim,
// C chunk size (tokens per chunk). "Rows" are live sequences in DFS order of the prefix tree;
// "io rows" are the caller's order of q/out; the context's requests say which rows a call
// computes and where their q/out rows are. Every chunk covered by a shared run is full.
//
//   q         [num_io_rows, Hq, D]      dtype.q
//   out       [num_io_rows, Hq, D]      dtype.out
//   k_pool    [num_slots, Hkv, C, D]    dtype.kv   (one layer's pool; a slot is one chunk)
//   v_pool    [num_slots, Hkv, C, D]    dtype.kv
//
// Decode semantics, for row r, query head h, kv head h / G, query position pos.q = len - 1:
//   s_t = score_mod(scale * <q, k_t>, pos)  for t in [0, len) with mask(pos) true
//   out = sum_t softmax(s)_t v_t            (a row with no visible token writes zeros)
#ifndef CHUNKATTN_ABI_H_
#define CHUNKATTN_ABI_H_

#include <stdint.h>

#define CA_ABI_VERSION 2u

#ifdef __cplusplus
extern "C" {
#endif

typedef enum CaDType { CA_F16 = 0, CA_BF16 = 1, CA_F32 = 2 } CaDType;

typedef enum CaStatus {
  CA_OK = 0,
  CA_ERR_INVALID = 1,      // an argument the module rejects (the addon should have caught it)
  CA_ERR_UNSUPPORTED = 2,  // e.g. a shared run given to a module without a phase-1 kernel
  CA_ERR_DEVICE = 3,       // CUDA runtime error (message from ca_last_error)
  // emu: a shim diagnostic (deadlock, divergent barrier, ...) with file:line:col
  CA_ERR_KERNEL = 4,
  CA_ERR_NO_MEMORY = 5
} CaStatus;

// A run of consecutive shared chunks and the contiguous DFS row range that shares all of them.
// Phase 1 computes, for each row r in [row_begin, row_end) and each query head, the softmax
// state over the run's tokens and stores it as partial number partial_begin + (r - row_begin).
typedef struct CaSharedRun {
  int32_t chunk_begin;  // index into run_slots of the run's first chunk
  int32_t num_chunks;   // >= 1
  int32_t kv_begin;     // token position of the first chunk in every sharer (depth * C)
  int32_t row_begin;    // half-open DFS row range of the sharers
  int32_t row_end;
  int32_t partial_begin;  // partial index of row_begin
} CaSharedRun;

// One layer's decode: the packed kernel context (chunkattn/context.h, built once per step by
// runtime/kernel-context.ts and uploaded once) plus this call's tensors. Every pointer is module
// memory (device memory on cuda); the context, params and workspace stay put across layers.
typedef struct CaDecodeParams {
  uint32_t abi_version;   // CA_ABI_VERSION
  uint32_t struct_bytes;  // sizeof(CaDecodeParams)

  const int32_t* context;       // packed kernel context (chunkattn/context.h), module memory
  const int32_t* context_host;  // the same words in host memory (launch geometry, workspace)
  uint64_t context_words;

  const void* q;  // [num_io_rows, Hq, D], num_io_rows from the context
  void* out;      // [num_io_rows, Hq, D]; io rows no request names are left untouched
  const void* k_pool;
  const void* v_pool;
  int32_t num_slots;

  // Named scalar parameters of score_mod / mask, in spec order.
  int32_t num_params;
  const float* params;  // [num_params]

  float softmax_scale;
  int32_t num_threads;  // cpu target: worker threads, 0 = all cores; ignored elsewhere

  void* workspace;  // scratch of ca_workspace_bytes(this) bytes (partials, splits)
  uint64_t workspace_bytes;
} CaDecodeParams;

// Scatter new tokens' K/V into one layer's pool: token i goes to (slots[i], offsets[i]). One
// launch for all tokens; every pointer is module memory (the addon stages them in one copy).
typedef struct CaWriteKvParams {
  void* k_pool;  // [num_slots, Hkv, C, D] dtype.kv
  void* v_pool;
  int32_t num_slots;
  int32_t num_tokens;
  const int32_t* slots;    // [num_tokens]
  const int32_t* offsets;  // [num_tokens] in [0, C)
  const void* k;           // [num_tokens, Hkv, D] src_dtype
  const void* v;
  int32_t src_dtype;  // CaDType: CA_F32, or the pool's own dtype
} CaWriteKvParams;

// Bytes moved through global memory by kernels (counted by the prims wrappers on the emu
// target; zero elsewhere), by category.
typedef enum CaTraffic {
  CA_TRAFFIC_Q = 0,
  CA_TRAFFIC_KV = 1,
  CA_TRAFFIC_PARTIAL = 2,
  CA_TRAFFIC_OUT = 3,
  CA_TRAFFIC_CONTEXT = 4,
  CA_TRAFFIC_COUNT = 5
} CaTraffic;

// ca_memcpy kinds. CA_COPY_CONTEXT is a host-to-device copy of a packed kernel context: counted as
// an H2D copy and as a context upload.
typedef enum CaCopyKind {
  CA_COPY_H2D = 0,
  CA_COPY_D2H = 1,
  CA_COPY_D2D = 2,
  CA_COPY_CONTEXT = 3
} CaCopyKind;
#define CA_COPY_DIRECTIONS 3

// What the module issued since the last reset (every target counts copies and launches the way
// the cuda target issues them; only emu counts kernel traffic bytes).
typedef struct CaStats {
  uint64_t bytes_read[CA_TRAFFIC_COUNT];
  uint64_t bytes_written[CA_TRAFFIC_COUNT];
  uint64_t launches;                          // kernel launches, all kernels
  uint64_t memcpy_calls[CA_COPY_DIRECTIONS];  // by direction: H2D, D2H, D2D
  uint64_t memcpy_bytes[CA_COPY_DIRECTIONS];
  uint64_t context_uploads;  // CA_COPY_CONTEXT copies
} CaStats;

// Exported by every module.
uint32_t ca_abi_version(void);
// JSON: {"abi":2,"name":..,"key":..,"target":..,"archs":[..],"phase1":bool,...}
const char* ca_info(void);
const char* ca_last_error(void);  // message for the calling thread's last non-OK status
uint64_t ca_workspace_bytes(const CaDecodeParams* p);  // reads p->context_host only
int ca_decode(const CaDecodeParams* p, void* stream);
int ca_write_kv(const CaWriteKvParams* p, void* stream);
// Copy-on-write of chunks, one launch for all: copies [num_copies][3] {src_slot, dst_slot,
// num_tokens} in module memory; the first num_tokens tokens of every KV head, K and V.
int ca_copy_chunks(void* k_pool, void* v_pool, int32_t num_slots, const int32_t* copies,
                   int32_t num_copies, void* stream);
int ca_malloc(void** ptr, uint64_t bytes);
int ca_free(void* ptr);
// Asynchronous on `stream` where the target allows; D2H into host memory completes on return.
int ca_memcpy(void* dst, const void* src, uint64_t bytes, int32_t kind, void* stream);
int ca_memset(void* dst, int32_t value, uint64_t bytes);
int ca_stream_create(void** stream);  // a non-null handle on every target
int ca_stream_destroy(void* stream);
int ca_synchronize(void* stream);
int ca_get_stats(CaStats* out);
// JSON: {"kernels":{"<kernel name>":{"launches":N,"blocks":B},...}} since the last reset (blocks:
// CTAs on cuda/emu, tasks on cpu).
const char* ca_kernel_stats(void);
int ca_reset_stats(void);
// JSON, per kernel launched since the last ca_reset_stats:
//   {"kernels":{"<name>":{"launches":N,"smemInstructions":..,"smemWavefronts":..,"smemBytes":..,
//    "globalInstructions":..,"sectors":{"q":..,"kv":..,"partial":..,"out":..,"context":..},
//    "requestedBytes":{...same keys}}}}
// Wavefronts and sectors are counted on the emu target only (zeros elsewhere): shared-memory
// wavefronts of every warp-wide shared access, 32-byte sectors touched by every warp-wide global
// access against the bytes requested (sector efficiency = requested / (32 sectors)). The string
// stays valid until the calling thread's next call.
const char* ca_kernel_stats(void);

// Timing around launches on a stream (optional exports: cuda and emu modules have them, cpu
// modules do not; the addon checks with dlsym). An event is an opaque non-null handle.
//   cuda  cudaEvent_t (cudaEventDefault): record enqueues it on `stream`, elapsed is
//         cudaEventElapsedTime, i.e. GPU time between the two records;
//   emu   a host steady-clock stamp taken at record (the shim runs each launch to completion on
//         the calling thread): emulator wall time, never a GPU time.
// ca_event_clock() names which: "cuda-events" or "emu-host-clock".
const char* ca_event_clock(void);
int ca_event_create(void** event);
int ca_event_destroy(void* event);
int ca_event_record(void* event, void* stream);
int ca_event_synchronize(void* event);  // returns once the event's work is done
// Milliseconds from `start` to `stop`, both recorded and `stop` complete; CA_ERR_INVALID otherwise.
int ca_event_elapsed_ms(float* ms, void* start, void* stop);

#ifdef __cplusplus
}
#endif

#endif  // CHUNKATTN_ABI_H_
