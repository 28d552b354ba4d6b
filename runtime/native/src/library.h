// library.h — one dlopen'ed kernel module: its symbol table and its parsed ca_info().
//
// Open() checks, in order: the file exists, dlopen (RTLD_NOW, so unresolved imports fail here),
// ca_abi_version() == CA_ABI_VERSION, every ca_* symbol of abi.h resolves, and ca_info() is JSON
// with the fields the addon relies on. Any failure throws Failure (ERR_CA_LOAD / ERR_CA_ABI /
// ERR_CA_SYMBOL / ERR_CA_INFO) after dlclose; nothing else of a failed module is ever called.
//
// A module that loaded is never dlclose'd: its memory may still be referenced by buffers whose
// finalizers run late (even at process exit), and CUDA runtimes linked statically into a module
// do not support being unloaded. Loading the same path again reuses the mapped library.
#ifndef CHUNKATTN_NATIVE_LIBRARY_H_
#define CHUNKATTN_NATIVE_LIBRARY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chunkattn/abi.h"
#include "chunkattn/psa_abi.h"
#include "json.h"

namespace chunkattn {

enum class Target { kCpu, kEmu, kCuda };

const char* TargetName(Target target);
const char* DTypeName(CaDType dtype);
inline uint64_t DTypeBytes(CaDType dtype) { return dtype == CA_F32 ? 4 : 2; }

// Bounds on what a module may declare, so that every size the addon computes fits in 64 bits.
inline constexpr int32_t kMaxHeads = 1024;
inline constexpr int32_t kMaxHeadDim = 1024;
inline constexpr int32_t kMaxChunkSize = 4096;
inline constexpr int32_t kMaxParams = 1024;

struct ModuleInfo {
  Json json;  // the whole document, as ca_info() returned it
  std::string name;
  std::string key;  // "key" (or "specHash" from older modules); empty if neither is present
  Target target = Target::kCpu;
  std::vector<std::string> archs;
  int32_t q_heads = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int32_t chunk_size = 0;
  CaDType dtype_q = CA_F32;
  CaDType dtype_kv = CA_F32;
  CaDType dtype_out = CA_F32;
  int32_t num_params = 0;
  bool phase1 = false;

  // Bytes of one slot of one pool: [Hkv, C, D] dtype.kv.
  uint64_t SlotBytes() const {
    return uint64_t(kv_heads) * uint64_t(chunk_size) * uint64_t(head_dim) * DTypeBytes(dtype_kv);
  }
  // Elements of one io row of q / out: [Hq, D].
  uint64_t RowElements() const { return uint64_t(q_heads) * uint64_t(head_dim); }
};

// The module's entry points, as declared in abi.h.
struct Api {
  uint32_t (*abi_version)(void) = nullptr;
  const char* (*info)(void) = nullptr;
  const char* (*last_error)(void) = nullptr;
  uint64_t (*workspace_bytes)(const CaDecodeParams*) = nullptr;
  int (*decode)(const CaDecodeParams*, void*) = nullptr;
  int (*write_kv)(const CaWriteKvParams*, void*) = nullptr;
  int (*copy_chunks)(void*, void*, int32_t, const int32_t*, int32_t, void*) = nullptr;
  int (*malloc_)(void**, uint64_t) = nullptr;
  int (*free_)(void*) = nullptr;
  int (*memcpy_)(void*, const void*, uint64_t, int32_t, void*) = nullptr;
  int (*memset_)(void*, int32_t, uint64_t) = nullptr;
  int (*stream_create)(void**) = nullptr;
  int (*stream_destroy)(void*) = nullptr;
  int (*synchronize)(void*) = nullptr;
  int (*get_stats)(CaStats*) = nullptr;
  const char* (*kernel_stats)(void) = nullptr;
  int (*reset_stats)(void) = nullptr;
  // Optional (chunkattn/psa_abi.h): null when the module has no PSA kernels.
  int (*psa_meta)(const CaPsaMetaParams*, void*) = nullptr;
  int (*psa_decode)(const CaDecodeParams*, const CaPsaParams*, void*) = nullptr;
  // Optional (abi.h, timing): null when the module has no events (the cpu target); all or none.
  const char* (*event_clock)(void) = nullptr;
  int (*event_create)(void**) = nullptr;
  int (*event_destroy)(void*) = nullptr;
  int (*event_record)(void*, void*) = nullptr;
  int (*event_synchronize)(void*) = nullptr;
  int (*event_elapsed_ms)(float*, void*, void*) = nullptr;
};

class Library {
 public:
  static std::shared_ptr<Library> Open(const std::string& path);

  const Api& api() const { return api_; }
  const ModuleInfo& info() const { return info_; }
  const std::string& path() const { return path_; }

  // ca_last_error(), or "" when the module has none.
  std::string LastError() const;
  // Throws the Failure that `status` (a CaStatus from `call`) stands for; returns on CA_OK.
  void Check(int status, const char* call) const;

 private:
  Library() = default;
  void* handle_ = nullptr;
  std::string path_;
  Api api_;
  ModuleInfo info_;
};

// Parses and checks a ca_info() document (exposed for tests of the addon itself).
ModuleInfo ParseModuleInfo(const char* text);

}  // namespace chunkattn

#endif  // CHUNKATTN_NATIVE_LIBRARY_H_
