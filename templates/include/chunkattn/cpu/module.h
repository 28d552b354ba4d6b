// chunkattn/cpu/module.h — everything a generated cpu module includes.
//
// The generated kernel.cpp defines CA_TARGET_CPU, includes this header, defines
//   struct Cfg { kQHeads, kKvHeads, kHeadDim, kChunk; QT, KvT, OutT in {ca::cpu::f16,
//   ca::cpu::bf16, float} }; struct Variant { kHasScoreMod, kHasMask, score_mod(), mask() }   (see
//   chunkattn/variant.h)
// and exports the C ABI of chunkattn/abi.h through:
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

#include "chunkattn/abi.h"
#include "chunkattn/softmax_state.h"
#include "chunkattn/variant.h"
#include "chunkattn/cpu/types.h"
#include "chunkattn/cpu/simd.h"
#include "chunkattn/cpu/kernels.h"
#include "chunkattn/cpu/thread_pool.h"
#include "chunkattn/cpu/decode.h"
#include "chunkattn/cpu/kv_write.h"
#include "chunkattn/cpu/host_memory.h"

namespace ca {
namespace cpu {
inline const char* isa() { return CA_CPU_ISA; }
}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_MODULE_H_
