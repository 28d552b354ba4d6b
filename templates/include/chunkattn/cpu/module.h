// chunkattn/cpu/module.h — everything a generated cpu module includes.
//
// The generated kernel.cpp defines CA_TARGET_CPU, includes this header, defines
//   struct Cfg { kQHeads, kKvHeads, kHeadDim, kChunk; QT, KvT, OutT in {ca::cpu::f16,
//   ca::cpu::bf16, float} }; struct Variant { kHasScoreMod, kHasMask, score_mod(), mask() }   (see
//   chunkattn/variant.h)
// and exports the C ABI of chunkattn/abi.h as one-liners over ca::cpu::entry (below: argument
// checks, launch/copy counting, host "device" memory), which call:
//   int      ca::cpu::decode<Cfg, Variant>(const CaDecodeParams&)      CaStatus
//   uint64_t ca::cpu::workspace_bytes<Cfg>(const CaDecodeParams&)
//   int      ca::cpu::write_kv<Cfg>(const CaWriteKvParams&)            CaStatus
//   int      ca::cpu::copy_chunk<Cfg>(k_pool, v_pool, num_slots, src_slot, dst_slot, num_tokens)
//   const char* ca::cpu::last_error()       message of the calling thread's last failure
//   const char* ca::cpu::isa()              "avx512" | "avx2" | "scalar" (for ca_info)
//   void* ca::cpu::host_alloc(bytes) / host_free(ptr, bytes)   for ca_malloc / ca_free (2 MiB
//                                           aligned + MADV_HUGEPAGE for large pools)
// Build: g++ -O3 -march=native -fno-math-errno -std=c++17 (or later) -fPIC -shared -pthread.
// Do not use -ffast-math: the kernels rely on IEEE inf/NaN semantics.
#ifndef CHUNKATTN_CPU_MODULE_H_
#define CHUNKATTN_CPU_MODULE_H_

#ifndef CA_TARGET_CPU
#define CA_TARGET_CPU 1
#endif

#if defined(__FAST_MATH__)
#error "chunkattn cpu kernels need IEEE inf/NaN semantics: build without -ffast-math"
#endif

#include <stdlib.h>
#include <string.h>

#include "chunkattn/abi.h"
#include "chunkattn/context.h"
#include "chunkattn/counters.h"
#include "chunkattn/module_status.h"
#include "chunkattn/softmax_state.h"
#include "chunkattn/variant.h"
#include "chunkattn/cpu/types.h"
#include "chunkattn/cpu/simd.h"
#include "chunkattn/cpu/kernels.h"
#include "chunkattn/cpu/thread_pool.h"
#include "chunkattn/cpu/decode.h"
#include "chunkattn/cpu/chunk_meta.h"
#include "chunkattn/cpu/sparse_decode.h"
#include "chunkattn/cpu/kv_write.h"
#include "chunkattn/cpu/host_memory.h"

namespace ca {
namespace cpu {
inline const char* isa() { return CA_CPU_ISA; }

// The generated configuration with its rendered tunables attached (decode.h reads
// Cfg::Tunables): `using Cfg = ca::cpu::Tuned<ca_gen::Cfg, ca_gen::Tunables>;`.
template <class Base, class TunablesT>
struct Tuned : Base {
  using Tunables = TunablesT;
};

// The C ABI's bodies on the cpu target. Work runs on the calling thread, in order, so streams
// are tokens and "device" memory is host memory; launches and copies are counted as the cuda
// target issues them (chunkattn/counters.h).
namespace entry {

template <class Cfg, class Variant>
inline int decode(const CaDecodeParams* p) {
  if (!p) return ca::fail(CA_ERR_INVALID, "ca_decode: null params");
  const int status = ca::cpu::decode<Cfg, Variant>(*p);
  if (status == CA_OK && ca::ctx::check_layout(p->context, p->context_words, nullptr)) {
    const ca::KernelContext c{p->context};
    if (c.num_runs() > 0)
      ca::counters::launch("cpu_phase1", uint64_t(c.num_runs()) * Cfg::kKvHeads);
    ca::counters::launch("cpu_phase2", uint64_t(c.num_requests()) * Cfg::kKvHeads);
  }
  return status;
}

// Progressive sparse attention (chunkattn/psa_abi.h): per-chunk key summaries, and decode driven
// by the selection lists (select runs inside, counted as one launch per request and KV head).
template <class Cfg>
inline int psa_meta(const CaPsaMetaParams* p) {
  if (!p) return ca::fail(CA_ERR_INVALID, "ca_psa_meta: null params");
  ca::counters::launch("psa_meta", uint64_t(p->num_chunks > 0 ? p->num_chunks : 0));
  return ca::cpu::chunk_meta<Cfg>(*p);
}

template <class Cfg, class Variant>
inline int psa_decode(const CaDecodeParams* p, const CaPsaParams* s) {
  if (!p || !s) return ca::fail(CA_ERR_INVALID, "ca_psa_decode: null params");
  const int status = ca::cpu::psa::sparse_decode<Cfg, Variant>(*p, *s);
  if (status == CA_OK && ca::ctx::check_layout(p->context, p->context_words, nullptr))
    ca::counters::launch("psa_select",
                         uint64_t(ca::KernelContext{p->context}.num_requests()) * Cfg::kKvHeads);
  return status;
}

template <class Cfg>
inline uint64_t workspace_bytes(const CaDecodeParams* p) {
  return p ? ca::cpu::workspace_bytes<Cfg>(*p) : 0;
}

template <class Cfg>
inline int write_kv(const CaWriteKvParams* p) {
  if (!p) return ca::fail(CA_ERR_INVALID, "ca_write_kv: null params");
  ca::counters::launch("write_kv", uint64_t(p->num_tokens > 0 ? p->num_tokens : 0));
  return ca::cpu::write_kv<Cfg>(*p);
}

template <class Cfg>
inline int copy_chunks(void* k_pool, void* v_pool, int32_t num_slots, const int32_t* copies,
                       int32_t num_copies) {
  ca::counters::launch("copy_chunks", uint64_t(num_copies > 0 ? num_copies : 0));
  return ca::cpu::copy_chunks<Cfg>(k_pool, v_pool, num_slots, copies, num_copies);
}

inline int malloc_(void** ptr, uint64_t bytes) {
  if (ptr == nullptr) return ca::fail(CA_ERR_INVALID, "ca_malloc: null output pointer");
  *ptr = bytes == 0 ? nullptr : aligned_alloc(64, (bytes + 63) / 64 * 64);
  return bytes == 0 || *ptr ? CA_OK : ca::fail(CA_ERR_NO_MEMORY, "ca_malloc: out of host memory");
}

inline int free_(void* ptr) {
  free(ptr);
  return CA_OK;
}

inline int memcpy_(void* dst, const void* src, uint64_t bytes, int32_t kind) {
  if (kind < CA_COPY_H2D || kind > CA_COPY_CONTEXT)
    return ca::fail(CA_ERR_INVALID, "ca_memcpy: bad kind");
  if (bytes == 0) return CA_OK;
  ca::counters::copy(kind, bytes);
  memmove(dst, src, bytes);
  return CA_OK;
}

inline int memset_(void* dst, int32_t value, uint64_t bytes) {
  if (bytes) memset(dst, value, bytes);
  return CA_OK;
}

inline int stream_create(void** stream) {
  static int host_stream;  // work runs on the calling thread, in order
  if (stream == nullptr) return ca::fail(CA_ERR_INVALID, "ca_stream_create: null output");
  *stream = &host_stream;
  return CA_OK;
}

inline int get_stats(CaStats* out) {
  if (out == nullptr) return ca::fail(CA_ERR_INVALID, "ca_get_stats: null output");
  *out = CaStats{};  // the cpu target does not count kernel traffic bytes
  ca::counters::snapshot(out);
  return CA_OK;
}

inline int reset_stats() {
  ca::counters::reset();
  return CA_OK;
}

}  // namespace entry
}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_MODULE_H_
