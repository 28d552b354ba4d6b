// core.h — one loaded module with its scratch memory, and every operation the addon offers.
//
// Pure C++: arguments arrive already read out of JS (ArrayArg / NumberArg / PoolArg), so no JS
// can run between a check and the module call it guards. Each operation validates everything
// first, then calls the module; a failure throws Failure and leaves pools unchanged.
//
// Memory: all module memory (pools, tensors, workspace, staging) comes from ca_malloc and goes
// back through ca_free. Scratch (context, workspace, params, staging) grows on demand until
// Reserve sizes every scratch buffer once (runtime/capacity.ts computes the bounds); from then on
// no call allocates (CUDA-graph safe), and one that needs more fails with ERR_CA_CAPACITY before
// it changes anything. Every target is driven alike, so the module's counters agree: the packed
// context is validated and uploaded only when its bytes differ from the last upload (once per
// step), host q/out/k/v are staged through buffers kept per module, DeviceTensors are used in
// place. Module memory is host memory on cpu/emu, device memory on cuda.
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

// A ca_malloc'ed region owned by one module: half of a KvPool, or a DeviceTensor.
struct DeviceBuffer {
  std::shared_ptr<ModuleCore> owner;
  void* ptr = nullptr;
  uint64_t bytes = 0;
  bool freed = false;
  int32_t dtype = -1;  // CaDType of a DeviceTensor; -1 for pool halves
};

// A timing event of one module (abi.h ca_event_*), with what the addon checks before each use.
struct DeviceEvent {
  std::shared_ptr<ModuleCore> owner;
  void* ptr = nullptr;
  bool recorded = false;   // recorded at least once
  bool completed = false;  // synchronized since its last record
  bool destroyed = false;
};

struct PoolArg {
  DeviceBuffer* k = nullptr;  // nullptr: pool.k is not a buffer of any module
  DeviceBuffer* v = nullptr;
  std::string k_what, v_what;
  NumberArg num_slots;
};

// A tensor argument: a host typed array, or a DeviceTensor (module memory).
struct TensorArg {
  ArrayArg host;
  DeviceBuffer* device = nullptr;
};

struct DecodeArgs {
  TensorArg q, out;
  ArrayArg context;  // the packed kernel context (chunkattn/context.h)
  ArrayArg params;
  NumberArg softmax_scale, num_threads;
};

// Upper bounds in bytes of every scratch buffer (runtime/capacity.ts).
struct Reservation {
  uint64_t context = 0;     // the packed kernel context
  uint64_t workspace = 0;   // ca_workspace_bytes of any context within the bounds
  uint64_t q = 0, out = 0;  // staging of host q / out
  uint64_t kv = 0;          // staging of one write: [slots | offsets | k | v]
  uint64_t copies = 0;      // copy-on-write lists and PSA metadata slot lists
  uint64_t psa = 0;         // cuda/emu PSA decode: lists, counts and ca_psa_decode_scratch_bytes
};

// ca_malloc calls made for scratch (growth on demand, or Reserve) and the bytes they took.
struct ScratchAllocations {
  uint64_t calls = 0;
  uint64_t bytes = 0;
};

class ModuleCore {
 public:
  explicit ModuleCore(std::shared_ptr<Library> library);
  ~ModuleCore();
  ModuleCore(const ModuleCore&) = delete;
  ModuleCore& operator=(const ModuleCore&) = delete;

  const Library& library() const { return *lib_; }
  const ModuleInfo& info() const { return lib_->info(); }

  // Two zeroed regions of numSlots · slotBytes each (K then V). Throws; allocates nothing then.
  std::pair<void*, void*> AllocPool(const NumberArg& num_slots, uint64_t* bytes_each);
  void FreePool(const PoolArg& pool);
  // A zeroed tensor of `elements` values of `dtype` in module memory.
  void* AllocTensor(CaDType dtype, const NumberArg& elements, uint64_t* bytes);
  void FreeTensor(DeviceBuffer* tensor, const std::string& what);
  // Host <-> tensor copies (the whole tensor).
  void Upload(DeviceBuffer* tensor, const std::string& what, const ArrayArg& host);
  void Download(DeviceBuffer* tensor, const std::string& what, void* host);
  // Releases a buffer from its finalizer: never throws.
  void ReleaseQuietly(void* ptr) noexcept;

  // One H2D copy of the tokens' indices (and of k/v when they are host arrays), one launch.
  void WriteKv(const PoolArg& pool, const ArrayArg& slots, const ArrayArg& offsets,
               const TensorArg& k, const TensorArg& v);
  // copies: [n * 3] {srcSlot, dstSlot, numTokens}; one H2D copy, one launch.
  void CopyChunks(const PoolArg& pool, const ArrayArg& copies);
  void CopyChunk(const PoolArg& pool, const NumberArg& src_slot, const NumberArg& dst_slot,
                 const NumberArg& num_tokens);
  // Copies one slot of K and V into host memory of slotBytes each.
  void ReadPool(const PoolArg& pool, const NumberArg& slot, void* k_host, void* v_host);
  // Validates and uploads the context when it differs from the last upload; one H2D copy of q
  // and one D2H copy of out when they are host arrays.
  void Decode(const PoolArg& pool, const DecodeArgs& args);

  // Decode in two halves for decodeAsync: StartDecode (JS thread: every check, the plan, the q
  // upload) and FinishDecode (any thread: the launch and the copy of out back). `out_host` must
  // stay alive in between.
  struct DecodeRun {
    CaDecodeParams params{};
    bool launch = false;       // false: nothing to compute
    void* out_host = nullptr;  // host out to copy back into, or null (a DeviceTensor)
    uint64_t out_bytes = 0;
  };
  DecodeRun StartDecode(const PoolArg& pool, const DecodeArgs& args);
  void FinishDecode(const DecodeRun& run);
  // An async decode holds the module handle from StartDecode until it settles; every other
  // operation fails with ERR_CA_BUSY meanwhile.
  void SetBusy(bool busy) { busy_ = busy; }
  void CheckIdle() const;
  uint64_t WorkspaceBytes(const PoolArg& pool, const DecodeArgs& args);

  // Lets this module's decode run over `owner`'s pools and tensors (runtime dispatch: another
  // tuned instance of the same kernel over one Attention's memory). Both must have the same
  // target and q/kv layout; Fail(kForeign) otherwise. Allocation, writes and frees stay with the
  // owner. On cuda each use waits for the owner's stream (streams are per module handle).
  void ShareMemoryWith(const std::shared_ptr<ModuleCore>& owner);
  // Progressive sparse attention (chunkattn/psa_abi.h). `meta` is a DeviceTensor of the KV
  // dtype holding [numSlots, Hkv, 4, D]; `slots` the full chunks to summarize. The PSA decode
  // (StartPsaDecode + FinishPsaDecode) is Decode through ca_psa_decode; `config` a Float64Array
  // of PsaConfigField values; lists/counts/guardAdded host Int32Arrays the module fills. With
  // select_only it runs the select alone (out untouched): what cuda/emu modules run, through
  // module-memory staging.
  // HasPsaKernels: the module exports ca_psa_meta and ca_psa_decode (every target).
  // HasPsa: it also decodes sparse (every target with the kernels).
  bool HasPsaKernels() const { return lib_->api().psa_meta && lib_->api().psa_decode; }
  bool HasPsa() const { return HasPsaKernels(); }
  void PsaMeta(const PoolArg& pool, DeviceBuffer* meta, const ArrayArg& slots);
  // PSA decode in two halves, like StartDecode / FinishDecode (psaDecode runs both at once,
  // psaDecodeAsync the second on a worker): every check, the plan and the q upload on the JS
  // thread; the select, the decode and the copies back on any thread. The host arrays (out,
  // lists, counts, guardAdded) must stay alive in between.
  struct PsaRun {
    DecodeRun decode;
    CaPsaParams s{};
    uint64_t rows = 0;  // DFS rows x KV heads
    bool on_host = true;
    void* lists_host = nullptr;
    void* counts_host = nullptr;
    void* guard_added_host = nullptr;
  };
  PsaRun StartPsaDecode(const PoolArg& pool, const DecodeArgs& args, DeviceBuffer* meta,
                        const ArrayArg& config, const ArrayArg& lists, const ArrayArg& counts,
                        const ArrayArg& guard_added, bool select_only = false);
  void FinishPsaDecode(const PsaRun& run);

  // Allocates every scratch buffer at its bound (replacing what is there), then fixes them: no
  // later call allocates scratch. On failure nothing changes.
  void Reserve(const Reservation& bounds);
  bool Fixed() const { return fixed_; }

  // Timing (abi.h ca_event_*): HasEvents is false for modules without them (cpu), and every
  // event call then fails with ERR_CA_UNSUPPORTED. EventClock: "cuda-events" (GPU time) or
  // "emu-host-clock" (emulator wall time). Events are recorded on this handle's stream; each
  // call checks the event is this module's (ERR_CA_FOREIGN) and not destroyed (ERR_CA_FREED);
  // ElapsedMs needs both recorded and `stop` synchronized since (ERR_CA_INVALID).
  bool HasEvents() const { return lib_->api().event_create != nullptr; }
  std::string EventClock() const;
  void* CreateEvent();
  void RecordEvent(DeviceEvent* event);
  void SynchronizeEvent(DeviceEvent* event);
  double ElapsedMs(DeviceEvent* start, DeviceEvent* stop);
  void DestroyEvent(DeviceEvent* event);
  // From a finalizer: never throws.
  void ReleaseEventQuietly(void* ptr) noexcept;

  CaStats Stats() const;
  ScratchAllocations Allocations() const { return allocations_; }
  std::string KernelStats() const;
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
  // The last context uploaded: its validated host copy and its module-memory copy.
  struct UploadedContext {
    Scratch device;
    std::vector<int32_t> host;
    int32_t num_slots = -1;  // the pool size it was validated against
    uint64_t workspace_bytes = 0;
  };

  // A decode whose every argument is checked (and context/params planned), ready to run.
  struct Prepared {
    Pool pool{};
    const UploadedContext* context = nullptr;
    uint64_t io_elements = 0;
    const void* q_device = nullptr;  // null: a host array, staged by Decode
    void* out_device = nullptr;
    const float* params = nullptr;
    int32_t num_threads = 0;
  };

  // sibling_ok: a decode may also use the pools and tensors of a module linked by ShareMemoryWith.
  Pool ResolvePool(const PoolArg& pool, bool sibling_ok = false) const;
  Prepared Prepare(const PoolArg& pool, const DecodeArgs& args);
  void CheckTensor(const DeviceBuffer* tensor, const std::string& what,
                   bool sibling_ok = false) const;
  // Whether `owner` was linked by ShareMemoryWith; then waits for its stream (cuda) first.
  bool UseSibling(const ModuleCore& owner) const;
  // A tensor argument's module-memory pointer, staging a host array through `staging` (H2D when
  // `upload`); `held` returns the CaDType its data holds.
  void* TensorPointer(const TensorArg& tensor, const char* name, CaDType dtype, uint64_t elements,
                      bool allow_f32, const char* layout, CaDType* held, bool sibling_ok = false);
  const UploadedContext& PlanContext(const Pool& pool, const ArrayArg& context);
  const float* PlanParams(const ArrayArg& params);
  // Grows `scratch` to `bytes` unless Reserve fixed it; then CheckFits.
  void Ensure(Scratch& scratch, uint64_t bytes, const char* what);
  // After Reserve: Fail(kCapacity) when `bytes` exceed the reservation (a no-op before).
  void CheckFits(const Scratch& scratch, uint64_t bytes, const char* what) const;
  Scratch Allocate(uint64_t bytes);
  void ReleaseScratch(Scratch& scratch) noexcept;
  void CheckHostBytes(uint64_t bytes, const std::string& what) const;
  void CheckEvents(const char* call) const;
  void CheckEvent(const DeviceEvent* event, const char* call, const char* which) const;

  std::shared_ptr<Library> lib_;
  void* stream_ = nullptr;  // this module handle's stream (one per Attention)
  UploadedContext context_;
  Scratch workspace_;
  Scratch params_device_;
  std::vector<float> params_host_;
  bool params_valid_ = false;
  // Staging for host tensors and index lists (grown, never shrunk: no allocation per layer).
  Scratch q_staging_, out_staging_, kv_staging_, copies_staging_, psa_staging_;
  std::vector<uint8_t> kv_host_staging_;
  bool busy_ = false;
  bool fixed_ = false;  // Reserve ran: scratch never grows
  ScratchAllocations allocations_;
  std::vector<std::weak_ptr<ModuleCore>> siblings_;
};

}  // namespace chunkattn

#endif  // CHUNKATTN_NATIVE_CORE_H_
