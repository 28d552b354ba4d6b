// core.h — one loaded module with its scratch memory, and every operation the addon offers.
//
// Pure C++: arguments arrive already read out of JS (ArrayArg / NumberArg / PoolArg), so no JS
// can run between a check and the module call it guards. Each operation validates everything
// first, then calls the module; a failure throws Failure and leaves pools unchanged.
//
// Memory: all module memory (pools, workspace, cuda staging) comes from ca_malloc and goes back
// through ca_free. Host arrays (q, out, k, v, context) go straight to cpu/emu modules; cuda
// modules get device copies (q, out, context and params staged through buffers kept per module,
// the context re-uploaded only when contextVersion changes or its bytes differ from the last
// upload). ca_write_kv takes host slots/offsets/k/v on every target (abi.h).
#ifndef CHUNKATTN_NATIVE_CORE_H_
#define CHUNKATTN_NATIVE_CORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "library.h"

namespace chunkattn {

// Same values as napi_typedarray_type; kNone when the JS value is not a typed array.
enum class ArrayType : int {
  kNone = -1,
  kInt8 = 0,
  kUint8,
  kUint8Clamped,
  kInt16,
  kUint16,
  kInt32,
  kUint32,
  kFloat32,
  kFloat64,
  kBigInt64,
  kBigUint64,
};

struct ArrayArg {
  ArrayType type = ArrayType::kNone;
  void* data = nullptr;
  size_t length = 0;     // elements
  bool shared = false;   // backed by a SharedArrayBuffer (another thread may write it)
  bool present = false;  // not undefined
  std::string what;      // the JS value's kind, for messages ("undefined", "Float64Array", ...)
};

struct NumberArg {
  bool is_number = false;
  bool present = false;  // not undefined
  double value = 0;
  std::string what;
};

class ModuleCore;

// A ca_malloc'ed region owned by one module (half of a KvPool).
struct DeviceBuffer {
  std::shared_ptr<ModuleCore> owner;
  void* ptr = nullptr;
  uint64_t bytes = 0;
  bool freed = false;
};

struct PoolArg {
  DeviceBuffer* k = nullptr;  // nullptr: pool.k is not a buffer of any module
  DeviceBuffer* v = nullptr;
  std::string k_what, v_what;
  NumberArg num_slots;
};

struct DecodeArgs {
  ArrayArg q, out;
  NumberArg num_io_rows;
  ArrayArg row_io, row_seq, row_length, row_chunk_offsets, row_chunk_slots, row_shared_chunks;
  ArrayArg row_partial_offsets, row_partials, runs, run_slots;
  NumberArg num_partials;
  ArrayArg params;
  NumberArg softmax_scale, num_threads, context_version;
};

class ModuleCore {
 public:
  explicit ModuleCore(std::shared_ptr<Library> library) : lib_(std::move(library)) {}
  ~ModuleCore();
  ModuleCore(const ModuleCore&) = delete;
  ModuleCore& operator=(const ModuleCore&) = delete;

  const Library& library() const { return *lib_; }
  const ModuleInfo& info() const { return lib_->info(); }

  // Two zeroed regions of numSlots · slotBytes each (K then V). Throws; allocates nothing then.
  std::pair<void*, void*> AllocPool(const NumberArg& num_slots, uint64_t* bytes_each);
  void FreePool(const PoolArg& pool);
  // Releases a buffer from its finalizer: never throws.
  void ReleaseQuietly(void* ptr) noexcept;

  void WriteKv(const PoolArg& pool, const ArrayArg& slots, const ArrayArg& offsets,
               const ArrayArg& k, const ArrayArg& v);
  void CopyChunk(const PoolArg& pool, const NumberArg& src_slot, const NumberArg& dst_slot,
                 const NumberArg& num_tokens);
  // Copies one slot of K and V into host memory of slotBytes each.
  void ReadPool(const PoolArg& pool, const NumberArg& slot, void* k_host, void* v_host);
  void Decode(const PoolArg& pool, const DecodeArgs& args);
  uint64_t WorkspaceBytes(const PoolArg& pool, const DecodeArgs& args);

  CaStats Stats() const;
  // ca_kernel_stats(): per-kernel launches, wavefronts and sectors, as the module's JSON.
  std::string KernelStatsJson() const;
  void ResetStats();

 private:
  struct Pool {
    void* k;
    void* v;
    int32_t num_slots;
  };
  struct Scratch {
    void* ptr = nullptr;
    uint64_t capacity = 0;
  };
  // A device copy of a host array and the bytes last uploaded into it.
  struct Mirror {
    Scratch device;
    std::vector<uint8_t> shadow;
    bool valid = false;
  };
  // A validated decode, ready to launch: `params` holds host pointers.
  struct Prepared {
    CaDecodeParams params{};
    uint64_t q_bytes = 0, out_bytes = 0;
    std::optional<double> context_version;
    std::vector<std::vector<int32_t>> copies;  // private copies of SharedArrayBuffer-backed arrays
  };

  Pool ResolvePool(const PoolArg& pool) const;
  void Prepare(const PoolArg& pool, const DecodeArgs& args, Prepared& prepared);
  void Ensure(Scratch& scratch, uint64_t bytes);
  void ReleaseScratch(Scratch& scratch) noexcept;
  const void* Upload(Mirror& mirror, const void* host, uint64_t bytes, bool force);
  void CheckHostBytes(uint64_t bytes, const std::string& what) const;
  bool OnDevice() const { return info().target == Target::kCuda; }

  std::shared_ptr<Library> lib_;
  Scratch workspace_;
  // cuda only: staging for q/out and mirrors of the context arrays + params.
  Scratch q_device_, out_device_;
  Mirror row_io_, row_seq_, row_length_, row_chunk_offsets_, row_chunk_slots_, row_shared_chunks_;
  Mirror row_partial_offsets_, row_partials_, runs_, run_slots_, params_;
  std::optional<double> uploaded_version_;
};

}  // namespace chunkattn

#endif  // CHUNKATTN_NATIVE_CORE_H_
