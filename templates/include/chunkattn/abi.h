// chunkattn/abi.h — the one C ABI every compiled module exports, whatever its target.
//
// A module is a shared library built from one KernelSpec for one build target:
//   cuda  nvcc, one -gencode per arch; pointers below are device pointers
//   emu   the same .cu compiled by g++ with runtime/cucpu; host pointers
//   cpu   templates/include/chunkattn/cpu/; host pointers
// The addon (runtime/native) dlopens a module, checks ca_abi_version(), allocates memory only
// through ca_malloc/ca_free/ca_memcpy (so the addon itself never links CUDA), validates every
// argument, then calls ca_decode / ca_write_kv / ca_copy_chunk.
//
// Shapes use the spec's constants: Hq query heads, Hkv KV heads (G = Hq / Hkv), D head dim,
// C chunk size (tokens per chunk). "Rows" are live sequences in DFS order of the prefix tree;
// "io rows" are the caller's order of q/out. Every chunk covered by a shared run is full.
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

#define CA_ABI_VERSION 1u

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

// The kernel context (built by runtime/kernel-context.ts) plus one layer's tensors.
typedef struct CaDecodeParams {
  uint32_t abi_version;   // CA_ABI_VERSION
  uint32_t struct_bytes;  // sizeof(CaDecodeParams)

  const void* q;
  void* out;
  const void* k_pool;
  const void* v_pool;
  int32_t num_io_rows;
  int32_t num_slots;

  // Per DFS row.
  int32_t num_rows;                    // <= num_io_rows
  const int32_t* row_io;               // [num_rows] io row of q/out
  const int32_t* row_seq;              // [num_rows] sequence handle (pos.seq)
  const int32_t* row_length;           // [num_rows] visible KV tokens, current token included
  const int32_t* row_chunk_offsets;    // [num_rows + 1] CSR into row_chunk_slots
  const int32_t* row_chunk_slots;      // every chunk of the row, in token order (shared first)
  const int32_t* row_shared_chunks;    // [num_rows] leading chunks covered by shared runs
  const int32_t* row_partial_offsets;  // [num_rows + 1] CSR into row_partials
  const int32_t* row_partials;         // partial indices phase 2 merges into the row

  // Phase-1 work list.
  int32_t num_runs;
  const CaSharedRun* runs;   // [num_runs]
  const int32_t* run_slots;  // chunk slots of all runs
  int32_t num_partials;

  // Named scalar parameters of score_mod / mask, in spec order.
  const float* params;  // [num_params]
  int32_t num_params;

  float softmax_scale;
  int32_t num_threads;  // cpu target: worker threads, 0 = all cores; ignored elsewhere

  void* workspace;  // scratch of ca_workspace_bytes(this) bytes (partials, splits)
  uint64_t workspace_bytes;
} CaDecodeParams;

// Scatter new tokens' K/V into one layer's pool: token i goes to (slots[i], offsets[i]).
typedef struct CaWriteKvParams {
  void* k_pool;  // [num_slots, Hkv, C, D] dtype.kv
  void* v_pool;
  int32_t num_slots;
  int32_t num_tokens;
  const int32_t* slots;    // [num_tokens], host memory
  const int32_t* offsets;  // [num_tokens] in [0, C), host memory
  const void* k;           // [num_tokens, Hkv, D] src_dtype, host memory
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

typedef struct CaStats {
  uint64_t bytes_read[CA_TRAFFIC_COUNT];
  uint64_t bytes_written[CA_TRAFFIC_COUNT];
  uint64_t launches;
} CaStats;

typedef enum CaCopyKind { CA_COPY_H2D = 0, CA_COPY_D2H = 1, CA_COPY_D2D = 2 } CaCopyKind;

// Exported by every module.
uint32_t ca_abi_version(void);
// JSON: {"abi":1,"name":..,"key":..,"target":..,"archs":[..],"phase1":bool,...}
const char* ca_info(void);
const char* ca_last_error(void);  // message for the calling thread's last non-OK status
uint64_t ca_workspace_bytes(const CaDecodeParams* p);
int ca_decode(const CaDecodeParams* p, void* stream);
int ca_write_kv(const CaWriteKvParams* p, void* stream);
int ca_copy_chunk(void* k_pool, void* v_pool, int32_t num_slots, int32_t src_slot, int32_t dst_slot,
                  int32_t num_tokens, void* stream);
int ca_malloc(void** ptr, uint64_t bytes);
int ca_free(void* ptr);
int ca_memcpy(void* dst, const void* src, uint64_t bytes, int32_t kind);
int ca_memset(void* dst, int32_t value, uint64_t bytes);
int ca_synchronize(void* stream);
int ca_get_stats(CaStats* out);
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

#ifdef __cplusplus
}
#endif

#endif  // CHUNKATTN_ABI_H_
