#include "core.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "chunkattn/context.h"
#include "failure.h"

namespace chunkattn {

namespace {

// Non-null stand-in for empty arrays (kernels may reject null pointers even for zero counts).
alignas(64) const int32_t kEmpty[16] = {};

constexpr int32_t kMaxThreads = 4096;

std::string Num(uint64_t value) { return std::to_string(value); }

std::string NumberText(double value) {
  if (std::isfinite(value) && value == std::floor(value) && std::fabs(value) < 1e18)
    return std::to_string(int64_t(value));
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  char buffer[64];
  snprintf(buffer, sizeof buffer, "%.17g", value);
  return buffer;
}

int32_t ToInt(const NumberArg& number, const char* name, int64_t lo, int64_t hi) {
  if (!number.is_number)
    Fail(code::kType, std::string(name) + " must be an integer number, got " + number.what);
  const double value = number.value;
  if (!std::isfinite(value) || value != std::floor(value) || value < double(lo) ||
      value > double(hi))
    Fail(code::kRange, std::string(name) + " = " + NumberText(value) + " must be an integer in [" +
                           std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return int32_t(value);
}

struct Int32Span {
  const int32_t* data = nullptr;
  size_t size = 0;
  int32_t operator[](size_t i) const { return data[i]; }
};

// An Int32Array argument as a span; SharedArrayBuffer-backed arrays are copied first, so that no
// other thread can change an index between its check and its use.
Int32Span Ints(const ArrayArg& array, const char* name, std::vector<std::vector<int32_t>>& copies) {
  if (array.type != ArrayType::kInt32)
    Fail(code::kDType, std::string(name) + " must be an Int32Array, got " + array.what);
  if (array.length > size_t(INT32_MAX))
    Fail(code::kShape,
         std::string(name) + " has " + Num(array.length) + " elements, more than 2^31 - 1");
  if (array.length == 0) return {kEmpty, 0};
  const int32_t* data = static_cast<const int32_t*>(array.data);
  if (array.shared) {
    copies.emplace_back(array.length);
    std::memcpy(copies.back().data(), data, array.length * sizeof(int32_t));
    data = copies.back().data();
  }
  return {data, array.length};
}

// Element dtype of a host data array: Float32Array holds f32; Uint16Array holds raw f16/bf16 bits.
// Returns the CaDType the array holds; `allow_f32` also admits Float32Array for an f16/bf16 dtype.
CaDType CheckData(const ArrayArg& array, const char* name, CaDType dtype, uint64_t expected_length,
                  bool allow_f32, const char* layout) {
  CaDType held;
  if (array.type == ArrayType::kFloat32 && (dtype == CA_F32 || allow_f32)) {
    held = CA_F32;
  } else if (array.type == ArrayType::kUint16 && dtype != CA_F32) {
    held = dtype;
  } else {
    std::string want = dtype == CA_F32 ? "a Float32Array (f32)"
                                       : std::string("a Uint16Array of ") + DTypeName(dtype) +
                                             " bits" + (allow_f32 ? " or a Float32Array" : "");
    Fail(code::kDType, std::string(name) + " must be " + want + ", got " + array.what);
  }
  if (array.length != expected_length)
    Fail(code::kShape, std::string(name) + " has " + Num(array.length) + " elements, expected " +
                           Num(expected_length) + " " + layout);
  return held;
}

uint64_t PhysicalMemoryBytes() {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return UINT64_MAX;
  return uint64_t(pages) * uint64_t(page);
}

// Aligns staging sections so every dtype's elements stay aligned.
uint64_t Align(uint64_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

ModuleCore::ModuleCore(std::shared_ptr<Library> library) : lib_(std::move(library)) {
  lib_->Check(lib_->api().stream_create(&stream_), "ca_stream_create");
}

ModuleCore::~ModuleCore() {
  for (Scratch* s : {&context_.device, &workspace_, &params_device_, &q_staging_, &out_staging_,
                     &kv_staging_, &copies_staging_, &psa_staging_})
    ReleaseScratch(*s);
  if (stream_) lib_->api().stream_destroy(stream_);
}

void ModuleCore::ReleaseQuietly(void* ptr) noexcept {
  if (ptr) lib_->api().free_(ptr);
}

void ModuleCore::ReleaseScratch(Scratch& scratch) noexcept {
  ReleaseQuietly(scratch.ptr);
  scratch = {};
}

void ModuleCore::CheckHostBytes(uint64_t bytes, const std::string& what) const {
  static const uint64_t physical = PhysicalMemoryBytes();
  if (bytes > physical)
    Fail(code::kRange, what + " needs " + Num(bytes) + " bytes, more than this machine's " +
                           Num(physical) + " bytes of memory");
}

ModuleCore::Scratch ModuleCore::Allocate(uint64_t bytes) {
  void* ptr = nullptr;
  lib_->Check(lib_->api().malloc_(&ptr, bytes), "ca_malloc");
  if (!ptr) Fail(code::kNoMemory, "ca_malloc returned CA_OK and a null pointer");
  ++allocations_.calls;
  allocations_.bytes += bytes;
  return {ptr, bytes};
}

void ModuleCore::CheckFits(const Scratch& scratch, uint64_t bytes, const char* what) const {
  if (fixed_ && bytes > scratch.capacity)
    Fail(code::kCapacity, std::string(what) + " needs " + Num(bytes) + " bytes, more than the " +
                              Num(scratch.capacity) +
                              " reserved (NativeModule.reserve; Attention.create sizes it from "
                              "options.capacity): nothing was done");
}

void ModuleCore::Ensure(Scratch& scratch, uint64_t bytes, const char* what) {
  CheckFits(scratch, bytes, what);
  if (scratch.ptr && scratch.capacity >= bytes) return;
  const Scratch grown =
      Allocate(std::max<uint64_t>({bytes, scratch.capacity + scratch.capacity / 2, 256}));
  ReleaseScratch(scratch);
  scratch = grown;
}

void ModuleCore::Reserve(const Reservation& b) {
  const ModuleInfo& mi = info();
  if (mi.target != Target::kCuda)
    CheckHostBytes(b.context + b.workspace + b.q + b.out + b.kv + b.copies + b.psa,
                   "the reserved scratch buffers");
  const struct {
    Scratch* scratch;
    uint64_t bytes;
  } plan[] = {{&context_.device, b.context},
              {&workspace_, b.workspace},
              {&params_device_, uint64_t(mi.num_params) * sizeof(float)},
              {&q_staging_, b.q},
              {&out_staging_, b.out},
              {&kv_staging_, b.kv},
              {&copies_staging_, b.copies},
              {&psa_staging_, b.psa}};
  constexpr size_t kBuffers = sizeof(plan) / sizeof(plan[0]);
  Scratch fresh[kBuffers];
  try {
    for (size_t i = 0; i < kBuffers; ++i)
      if (plan[i].bytes > 0 || plan[i].scratch != &psa_staging_)  // no PSA: no PSA staging
        fresh[i] = Allocate(std::max<uint64_t>(plan[i].bytes, 256));
  } catch (...) {
    for (Scratch& s : fresh) ReleaseScratch(s);
    throw;
  }
  lib_->Check(lib_->api().synchronize(stream_), "ca_synchronize");  // nothing queued uses the old
  for (size_t i = 0; i < kBuffers; ++i) {
    ReleaseScratch(*plan[i].scratch);
    *plan[i].scratch = fresh[i];
  }
  kv_host_staging_.resize(std::max<uint64_t>(kv_host_staging_.size(), b.kv));
  context_.host.reserve(b.context / sizeof(int32_t));
  context_.num_slots = -1;  // the device copy is gone: the next decode uploads again
  params_valid_ = false;
  fixed_ = true;
}

ModuleCore::Pool ModuleCore::ResolvePool(const PoolArg& pool, bool sibling_ok) const {
  const struct {
    const char* name;
    DeviceBuffer* buffer;
    const std::string& what;
  } halves[2] = {{"pool.k", pool.k, pool.k_what}, {"pool.v", pool.v, pool.v_what}};
  for (const auto& half : halves) {
    if (!half.buffer || half.buffer->dtype >= 0)
      Fail(code::kType, std::string(half.name) + " is not a pool buffer (got " + half.what +
                            "): pools come from NativeModule.allocPool");
    if (half.buffer->freed) Fail(code::kFreed, std::string(half.name) + " has been freed");
    if (half.buffer->owner.get() != this && !(sibling_ok && UseSibling(*half.buffer->owner)))
      Fail(code::kForeign, std::string(half.name) + " belongs to another module (" +
                               half.buffer->owner->library().path() + "), not to " + lib_->path());
  }
  if (pool.k == pool.v) Fail(code::kRange, "pool.k and pool.v are the same buffer");
  int32_t num_slots = ToInt(pool.num_slots, "pool.numSlots", 1, INT32_MAX);
  uint64_t expected;
  bool overflow = __builtin_mul_overflow(uint64_t(num_slots), info().SlotBytes(), &expected);
  for (const auto& half : halves)
    if (overflow || half.buffer->bytes != expected)
      Fail(code::kShape, std::string(half.name) + " has " + Num(half.buffer->bytes) +
                             " bytes, but pool.numSlots = " + std::to_string(num_slots) +
                             " needs " + (overflow ? "more than 2^64" : Num(expected)) +
                             " (numSlots × kvHeads × chunkSize × headDim × " +
                             Num(DTypeBytes(info().dtype_kv)) + ")");
  return {pool.k->ptr, pool.v->ptr, num_slots};
}

std::pair<void*, void*> ModuleCore::AllocPool(const NumberArg& num_slots_arg,
                                              uint64_t* bytes_each) {
  const int32_t num_slots = ToInt(num_slots_arg, "numSlots", 1, INT32_MAX);
  uint64_t bytes, both;
  if (__builtin_mul_overflow(uint64_t(num_slots), info().SlotBytes(), &bytes) ||
      __builtin_mul_overflow(bytes, uint64_t(2), &both))
    Fail(code::kRange, "numSlots = " + std::to_string(num_slots) + " needs more than 2^64 bytes");
  if (info().target != Target::kCuda)
    CheckHostBytes(both, "a pool of " + std::to_string(num_slots) + " slots (K and V)");
  const Api& api = lib_->api();
  void* k = nullptr;
  void* v = nullptr;
  lib_->Check(api.malloc_(&k, bytes), "ca_malloc");
  if (!k) Fail(code::kNoMemory, "ca_malloc returned CA_OK and a null pointer");
  try {
    lib_->Check(api.malloc_(&v, bytes), "ca_malloc");
    if (!v) Fail(code::kNoMemory, "ca_malloc returned CA_OK and a null pointer");
    lib_->Check(api.memset_(k, 0, bytes), "ca_memset");
    lib_->Check(api.memset_(v, 0, bytes), "ca_memset");
    lib_->Check(api.synchronize(stream_), "ca_synchronize");
  } catch (...) {
    ReleaseQuietly(k);
    ReleaseQuietly(v);
    throw;
  }
  *bytes_each = bytes;
  return {k, v};
}

void ModuleCore::FreePool(const PoolArg& pool_arg) {
  ResolvePool(pool_arg);
  DeviceBuffer* halves[2] = {pool_arg.k, pool_arg.v};
  lib_->Check(lib_->api().synchronize(stream_), "ca_synchronize");
  int status[2];
  for (int i = 0; i < 2; ++i) {
    status[i] = lib_->api().free_(halves[i]->ptr);
    halves[i]->ptr = nullptr;
    halves[i]->freed = true;
  }
  lib_->Check(status[0], "ca_free");
  lib_->Check(status[1], "ca_free");
}

void* ModuleCore::AllocTensor(CaDType dtype, const NumberArg& elements_arg, uint64_t* bytes) {
  const int32_t elements = ToInt(elements_arg, "elements", 1, INT32_MAX);
  *bytes = uint64_t(elements) * DTypeBytes(dtype);
  if (info().target != Target::kCuda) CheckHostBytes(*bytes, "a tensor");
  void* ptr = nullptr;
  lib_->Check(lib_->api().malloc_(&ptr, *bytes), "ca_malloc");
  if (!ptr) Fail(code::kNoMemory, "ca_malloc returned CA_OK and a null pointer");
  const int status = lib_->api().memset_(ptr, 0, *bytes);
  if (status != CA_OK) ReleaseQuietly(ptr);
  lib_->Check(status, "ca_memset");
  return ptr;
}

void ModuleCore::CheckTensor(const DeviceBuffer* tensor, const std::string& what,
                             bool sibling_ok) const {
  if (!tensor || tensor->dtype < 0)
    Fail(code::kType, what + " is not a DeviceTensor: tensors come from NativeModule.allocTensor");
  if (tensor->freed) Fail(code::kFreed, what + " has been freed");
  if (tensor->owner.get() != this && !(sibling_ok && UseSibling(*tensor->owner)))
    Fail(code::kForeign, what + " belongs to another module (" + tensor->owner->library().path() +
                             "), not to " + lib_->path());
}

void ModuleCore::ShareMemoryWith(const std::shared_ptr<ModuleCore>& owner) {
  const ModuleInfo &a = info(), &b = owner->info();
  if (a.target != b.target || a.kv_heads != b.kv_heads || a.chunk_size != b.chunk_size ||
      a.head_dim != b.head_dim || a.dtype_kv != b.dtype_kv || a.q_heads != b.q_heads)
    Fail(code::kForeign, lib_->path() + " cannot decode over the memory of " +
                             owner->library().path() + ": another target or KV layout");
  if (owner.get() != this && !UseSibling(*owner)) siblings_.push_back(owner);
}

bool ModuleCore::UseSibling(const ModuleCore& owner) const {
  for (const auto& sibling : siblings_) {
    const auto held = sibling.lock();
    if (held.get() != &owner) continue;
    // Work queued on the owner's stream comes first (a no-op on the host targets).
    lib_->Check(owner.lib_->api().synchronize(owner.stream_), "ca_synchronize");
    return true;
  }
  return false;
}

void ModuleCore::FreeTensor(DeviceBuffer* tensor, const std::string& what) {
  CheckTensor(tensor, what);
  lib_->Check(lib_->api().synchronize(stream_), "ca_synchronize");
  const int status = lib_->api().free_(tensor->ptr);
  tensor->ptr = nullptr;
  tensor->freed = true;
  lib_->Check(status, "ca_free");
}

void ModuleCore::Upload(DeviceBuffer* tensor, const std::string& what, const ArrayArg& host) {
  CheckTensor(tensor, what);
  const CaDType dtype = CaDType(tensor->dtype);
  CheckData(host, "data", dtype, tensor->bytes / DTypeBytes(dtype), false, "(the tensor's length)");
  lib_->Check(lib_->api().memcpy_(tensor->ptr, host.data, tensor->bytes, CA_COPY_H2D, stream_),
              "ca_memcpy");
}

void ModuleCore::Download(DeviceBuffer* tensor, const std::string& what, void* host) {
  CheckTensor(tensor, what);
  lib_->Check(lib_->api().memcpy_(host, tensor->ptr, tensor->bytes, CA_COPY_D2H, stream_),
              "ca_memcpy");
}

void* ModuleCore::TensorPointer(const TensorArg& tensor, const char* name, CaDType dtype,
                                uint64_t elements, bool allow_f32, const char* layout,
                                CaDType* held, bool sibling_ok) {
  if (!tensor.device) {
    *held = CheckData(tensor.host, name, dtype, elements, allow_f32, layout);
    return nullptr;  // a host array: the caller stages it
  }
  CheckTensor(tensor.device, name, sibling_ok);
  const CaDType has = CaDType(tensor.device->dtype);
  if (!(has == dtype || (allow_f32 && has == CA_F32)))
    Fail(code::kDType, std::string(name) + " is a DeviceTensor of " + DTypeName(has) +
                           ", expected " + DTypeName(dtype) + (allow_f32 ? " or f32" : ""));
  const uint64_t length = tensor.device->bytes / DTypeBytes(has);
  if (length != elements)
    Fail(code::kShape, std::string(name) + " has " + Num(length) + " elements, expected " +
                           Num(elements) + " " + layout);
  *held = has;
  return tensor.device->ptr;
}

void ModuleCore::WriteKv(const PoolArg& pool_arg, const ArrayArg& slots_arg,
                         const ArrayArg& offsets_arg, const TensorArg& k, const TensorArg& v) {
  const ModuleInfo& mi = info();
  const Pool pool = ResolvePool(pool_arg);
  std::vector<std::vector<int32_t>> copies;
  const Int32Span slots = Ints(slots_arg, "slots", copies);
  const Int32Span offsets = Ints(offsets_arg, "offsets", copies);
  const uint64_t num_tokens = slots.size;
  if (offsets.size != num_tokens)
    Fail(code::kShape, "offsets has " + Num(offsets.size) + " elements, expected " +
                           Num(num_tokens) + " (one per token, like slots)");
  const uint64_t token_elements = uint64_t(mi.kv_heads) * uint64_t(mi.head_dim);
  CaDType src, src_v;
  void* k_device = TensorPointer(k, "k", mi.dtype_kv, num_tokens * token_elements, true,
                                 "[tokens, kvHeads, headDim]", &src);
  void* v_device = TensorPointer(v, "v", mi.dtype_kv, num_tokens * token_elements, true,
                                 "[tokens, kvHeads, headDim]", &src_v);
  if (src != src_v)
    Fail(code::kDType, std::string("k and v must have the same dtype, got k ") + DTypeName(src) +
                           " and v " + DTypeName(src_v));
  if (k.device && k.device == v.device) Fail(code::kRange, "k and v are the same DeviceTensor");
  std::vector<int64_t> targets(num_tokens);
  for (uint64_t i = 0; i < num_tokens; ++i) {
    if (slots[i] < 0 || slots[i] >= pool.num_slots)
      Fail(code::kRange, "slots[" + Num(i) + "] = " + std::to_string(slots[i]) +
                             " is out of range [0, numSlots = " + std::to_string(pool.num_slots) +
                             ")");
    if (offsets[i] < 0 || offsets[i] >= mi.chunk_size)
      Fail(code::kRange, "offsets[" + Num(i) + "] = " + std::to_string(offsets[i]) +
                             " is out of range [0, chunkSize = " + std::to_string(mi.chunk_size) +
                             ")");
    targets[i] = int64_t(slots[i]) * mi.chunk_size + offsets[i];
  }
  std::sort(targets.begin(), targets.end());
  if (std::adjacent_find(targets.begin(), targets.end()) != targets.end())
    Fail(code::kRange,
         "two tokens write the same (slot, offset): each position may be written once per call");
  if (num_tokens == 0) return;

  // One staging block [slots | offsets | k | v] (k/v only when they are host arrays), one copy.
  const uint64_t index_bytes = Align(num_tokens * 4);
  const uint64_t data_bytes = Align(num_tokens * token_elements * DTypeBytes(src));
  const uint64_t k_at = 2 * index_bytes, v_at = k_at + (k_device ? 0 : data_bytes);
  const uint64_t total = v_at + (v_device ? 0 : data_bytes);
  if (info().target != Target::kCuda) CheckHostBytes(total, "the K/V staging buffer");
  CheckFits(kv_staging_, total, "the K/V staging of this write");
  kv_host_staging_.resize(std::max<uint64_t>(kv_host_staging_.size(), total));
  uint8_t* host = kv_host_staging_.data();
  std::memcpy(host, slots.data, num_tokens * 4);
  std::memcpy(host + index_bytes, offsets.data, num_tokens * 4);
  const uint64_t raw = num_tokens * token_elements * DTypeBytes(src);
  if (!k_device) std::memcpy(host + k_at, k.host.data, raw);
  if (!v_device) std::memcpy(host + v_at, v.host.data, raw);
  Ensure(kv_staging_, total, "the K/V staging of this write");
  const Api& api = lib_->api();
  lib_->Check(api.memcpy_(kv_staging_.ptr, host, total, CA_COPY_H2D, stream_), "ca_memcpy");
  uint8_t* device = static_cast<uint8_t*>(kv_staging_.ptr);
  CaWriteKvParams p{};
  p.k_pool = pool.k;
  p.v_pool = pool.v;
  p.num_slots = pool.num_slots;
  p.num_tokens = int32_t(num_tokens);
  p.slots = reinterpret_cast<const int32_t*>(device);
  p.offsets = reinterpret_cast<const int32_t*>(device + index_bytes);
  p.k = k_device ? k_device : device + k_at;
  p.v = v_device ? v_device : device + v_at;
  p.src_dtype = src;
  lib_->Check(api.write_kv(&p, stream_), "ca_write_kv");
}

void ModuleCore::CopyChunks(const PoolArg& pool_arg, const ArrayArg& copies_arg) {
  const Pool pool = ResolvePool(pool_arg);
  std::vector<std::vector<int32_t>> held;
  const Int32Span copies = Ints(copies_arg, "copies", held);
  if (copies.size % 3 != 0)
    Fail(code::kShape, "copies has " + Num(copies.size) +
                           " elements, expected a multiple of 3 (srcSlot, dstSlot, numTokens)");
  const uint64_t n = copies.size / 3;
  std::vector<uint8_t> written(size_t(pool.num_slots), 0);
  for (uint64_t i = 0; i < n; ++i) {
    const int32_t src = copies[3 * i], dst = copies[3 * i + 1], tokens = copies[3 * i + 2];
    const std::string at = "copies[" + Num(i) + "]";
    if (src < 0 || src >= pool.num_slots || dst < 0 || dst >= pool.num_slots)
      Fail(code::kRange, at + ": slots " + std::to_string(src) + " -> " + std::to_string(dst) +
                             " out of range [0, numSlots = " + std::to_string(pool.num_slots) +
                             ")");
    if (src == dst)
      Fail(code::kRange, at + ": srcSlot and dstSlot are both " + std::to_string(src));
    if (tokens < 0 || tokens > info().chunk_size)
      Fail(code::kRange, at + ": numTokens = " + std::to_string(tokens) + " is out of range [0, " +
                             std::to_string(info().chunk_size) + "]");
    // One launch copies all at once: no copy may read or write a slot another copy writes.
    if (written[size_t(dst)]++)
      Fail(code::kRange, at + ": slot " + std::to_string(dst) + " is written by two copies");
  }
  for (uint64_t i = 0; i < n; ++i)
    if (written[size_t(copies[3 * i])])
      Fail(code::kRange, "copies[" + Num(i) + "]: source slot " + std::to_string(copies[3 * i]) +
                             " is written by another copy of the same call");
  if (n == 0) return;
  Ensure(copies_staging_, copies.size * 4, "the copy-on-write list");
  const Api& api = lib_->api();
  lib_->Check(api.memcpy_(copies_staging_.ptr, copies.data, copies.size * 4, CA_COPY_H2D, stream_),
              "ca_memcpy");
  lib_->Check(
      api.copy_chunks(pool.k, pool.v, pool.num_slots,
                      static_cast<const int32_t*>(copies_staging_.ptr), int32_t(n), stream_),
      "ca_copy_chunks");
}

void ModuleCore::CopyChunk(const PoolArg& pool_arg, const NumberArg& src_arg,
                           const NumberArg& dst_arg, const NumberArg& tokens_arg) {
  const Pool pool = ResolvePool(pool_arg);
  const int32_t src = ToInt(src_arg, "srcSlot", 0, pool.num_slots - 1);
  const int32_t dst = ToInt(dst_arg, "dstSlot", 0, pool.num_slots - 1);
  const int32_t num_tokens = ToInt(tokens_arg, "numTokens", 0, info().chunk_size);
  if (src == dst) Fail(code::kRange, "srcSlot and dstSlot are both " + std::to_string(src));
  if (num_tokens == 0) return;
  int32_t copy[3] = {src, dst, num_tokens};
  ArrayArg array;
  array.type = ArrayType::kInt32;
  array.data = copy;
  array.length = 3;
  array.present = true;
  CopyChunks(pool_arg, array);
}

void ModuleCore::ReadPool(const PoolArg& pool_arg, const NumberArg& slot_arg, void* k_host,
                          void* v_host) {
  const Pool pool = ResolvePool(pool_arg);
  const int32_t slot = ToInt(slot_arg, "slot", 0, pool.num_slots - 1);
  const uint64_t bytes = info().SlotBytes();
  const Api& api = lib_->api();
  lib_->Check(api.memcpy_(k_host, static_cast<uint8_t*>(pool.k) + uint64_t(slot) * bytes, bytes,
                          CA_COPY_D2H, stream_),
              "ca_memcpy");
  lib_->Check(api.memcpy_(v_host, static_cast<uint8_t*>(pool.v) + uint64_t(slot) * bytes, bytes,
                          CA_COPY_D2H, stream_),
              "ca_memcpy");
}

// Plan: validate and upload the context unless it is the one uploaded last (same bytes, same
// pool size). Layers after the first of a step find it unchanged: no validation, no upload.
const ModuleCore::UploadedContext& ModuleCore::PlanContext(const Pool& pool,
                                                           const ArrayArg& context_arg) {
  if (context_arg.type != ArrayType::kInt32)
    Fail(code::kDType, "context must be an Int32Array (packContext), got " + context_arg.what);
  const int32_t* words = static_cast<const int32_t*>(context_arg.data);
  const uint64_t count = context_arg.length;
  UploadedContext& up = context_;
  if (up.num_slots == pool.num_slots && up.host.size() == count &&
      (count == 0 || std::memcmp(up.host.data(), words, count * 4) == 0))
    return up;
  // Copy first: a SharedArrayBuffer may change under us, the copy cannot.
  std::vector<int32_t> host(words, words + count);
  ca::ctx::Error error;
  const ca::ctx::Limits limits{pool.num_slots, info().chunk_size, info().phase1};
  if (!ca::ctx::validate(host.data(), count, limits, &error)) {
    const char* kind = code::kContext;
    switch (error.problem) {
      case ca::ctx::Problem::kShape:
        kind = code::kShape;
        break;
      case ca::ctx::Problem::kRange:
        kind = code::kRange;
        break;
      case ca::ctx::Problem::kUnsupported:
        kind = code::kUnsupported;
        break;
      default:
        break;
    }
    Fail(kind, error.message);
  }
  // The workspace is sized from the host copy (ca_workspace_bytes reads context_host only), so
  // both capacities are checked before anything changes.
  CaDecodeParams probe{};
  probe.abi_version = CA_ABI_VERSION;
  probe.struct_bytes = sizeof(CaDecodeParams);
  probe.context = host.data();
  probe.context_host = host.data();
  probe.context_words = count;
  const uint64_t workspace_bytes = lib_->api().workspace_bytes(&probe);
  if (info().target != Target::kCuda) CheckHostBytes(workspace_bytes, "the decode workspace");
  CheckFits(up.device, count * 4, "the kernel context");
  CheckFits(workspace_, std::max<uint64_t>(workspace_bytes, 1), "the decode workspace");
  up.num_slots = -1;  // invalid until the upload below succeeds
  Ensure(up.device, count * 4, "the kernel context");
  lib_->Check(lib_->api().memcpy_(up.device.ptr, host.data(), count * 4, CA_COPY_CONTEXT, stream_),
              "ca_memcpy");
  up.host = std::move(host);
  up.workspace_bytes = workspace_bytes;
  Ensure(workspace_, std::max<uint64_t>(up.workspace_bytes, 1), "the decode workspace");
  up.num_slots = pool.num_slots;
  return up;
}

const float* ModuleCore::PlanParams(const ArrayArg& params) {
  const ModuleInfo& mi = info();
  const float* data = nullptr;
  if (params.present || mi.num_params > 0) {
    if (params.type != ArrayType::kFloat32)
      Fail(code::kDType, "params must be a Float32Array, got " + params.what);
    if (params.length != uint64_t(mi.num_params))
      Fail(code::kShape, "params has " + Num(params.length) +
                             " elements, but the module declares " + std::to_string(mi.num_params) +
                             " parameter(s)");
    data = static_cast<const float*>(params.data);
  }
  const uint64_t bytes = uint64_t(mi.num_params) * sizeof(float);
  if (params_valid_ && (bytes == 0 || std::memcmp(params_host_.data(), data, bytes) == 0))
    return static_cast<const float*>(params_device_.ptr);
  params_valid_ = false;
  Ensure(params_device_, std::max<uint64_t>(bytes, 64), "the kernel parameters");
  if (bytes > 0)
    lib_->Check(lib_->api().memcpy_(params_device_.ptr, data, bytes, CA_COPY_H2D, stream_),
                "ca_memcpy");
  params_host_.assign(data, data + mi.num_params);
  params_valid_ = true;
  return static_cast<const float*>(params_device_.ptr);
}

ModuleCore::Prepared ModuleCore::Prepare(const PoolArg& pool_arg, const DecodeArgs& a) {
  const ModuleInfo& mi = info();
  Prepared pr;
  pr.pool = ResolvePool(pool_arg, true);
  // Everything from JS is checked before the first copy.
  if (!a.softmax_scale.is_number)
    Fail(code::kType, "softmaxScale must be a number, got " + a.softmax_scale.what);
  if (!std::isfinite(a.softmax_scale.value))
    Fail(code::kRange, "softmaxScale = " + NumberText(a.softmax_scale.value) + " must be finite");
  pr.num_threads = a.num_threads.present ? ToInt(a.num_threads, "numThreads", 0, kMaxThreads) : 0;
  pr.context = &PlanContext(pr.pool, a.context);
  const ca::KernelContext host_ctx{pr.context->host.data()};
  pr.io_elements = uint64_t(host_ctx.num_io_rows()) * mi.RowElements();
  CaDType held;
  pr.q_device = TensorPointer(a.q, "q", mi.dtype_q, pr.io_elements, false,
                              "[numIoRows, qHeads, headDim]", &held, true);
  pr.out_device = TensorPointer(a.out, "out", mi.dtype_out, pr.io_elements, false,
                                "[numIoRows, qHeads, headDim]", &held, true);
  if (a.q.device && a.q.device == a.out.device)
    Fail(code::kRange, "q and out are the same DeviceTensor: the output must not overlap an input");
  pr.params = PlanParams(a.params);
  return pr;
}

uint64_t ModuleCore::WorkspaceBytes(const PoolArg& pool, const DecodeArgs& args) {
  return Prepare(pool, args).context->workspace_bytes;
}

ModuleCore::DecodeRun ModuleCore::StartDecode(const PoolArg& pool_arg, const DecodeArgs& a) {
  const ModuleInfo& mi = info();
  const Prepared pr = Prepare(pool_arg, a);
  const UploadedContext& up = *pr.context;
  const ca::KernelContext host_ctx{up.host.data()};
  DecodeRun run;
  if (host_ctx.num_requests() == 0) return run;  // nothing to compute; io rows are left alone
  const uint64_t q_bytes = pr.io_elements * DTypeBytes(mi.dtype_q);
  const Api& api = lib_->api();
  const uint64_t out_bytes = pr.io_elements * DTypeBytes(mi.dtype_out);
  if (!pr.q_device) CheckFits(q_staging_, q_bytes, "the q staging");
  if (!pr.out_device) CheckFits(out_staging_, out_bytes, "the out staging");
  const void* q_device = pr.q_device;
  if (!q_device) {
    Ensure(q_staging_, q_bytes, "the q staging");
    lib_->Check(api.memcpy_(q_staging_.ptr, a.q.host.data, q_bytes, CA_COPY_H2D, stream_),
                "ca_memcpy");
    q_device = q_staging_.ptr;
  }
  void* out_device = pr.out_device;
  if (!out_device) {
    run.out_host = a.out.host.data;
    run.out_bytes = out_bytes;
    Ensure(out_staging_, run.out_bytes, "the out staging");
    out_device = out_staging_.ptr;
    // Io rows no request names keep their contents: start from the caller's out unless every
    // io row is written.
    if (host_ctx.num_requests() < host_ctx.num_io_rows())
      lib_->Check(api.memcpy_(out_device, run.out_host, run.out_bytes, CA_COPY_H2D, stream_),
                  "ca_memcpy");
  }
  CaDecodeParams& p = run.params;
  p.abi_version = CA_ABI_VERSION;
  p.struct_bytes = sizeof(CaDecodeParams);
  p.context = static_cast<const int32_t*>(up.device.ptr);
  p.context_host = up.host.data();
  p.context_words = up.host.size();
  p.q = q_device;
  p.out = out_device;
  p.k_pool = pr.pool.k;
  p.v_pool = pr.pool.v;
  p.num_slots = pr.pool.num_slots;
  p.num_params = mi.num_params;
  p.params = pr.params;
  p.softmax_scale = float(a.softmax_scale.value);
  p.num_threads = pr.num_threads;
  p.workspace = workspace_.ptr;
  p.workspace_bytes = up.workspace_bytes;
  run.launch = true;
  return run;
}

void ModuleCore::FinishDecode(const DecodeRun& run) {
  if (!run.launch) return;
  const Api& api = lib_->api();
  lib_->Check(api.decode(&run.params, stream_), "ca_decode");
  if (run.out_host)
    lib_->Check(api.memcpy_(run.out_host, run.params.out, run.out_bytes, CA_COPY_D2H, stream_),
                "ca_memcpy");
}

void ModuleCore::Decode(const PoolArg& pool, const DecodeArgs& args) {
  FinishDecode(StartDecode(pool, args));
}

void ModuleCore::CheckIdle() const {
  if (busy_)
    Fail(code::kBusy,
         "a decodeAsync of this module handle is in flight: await it before the next call");
}

// --- timing events ----------------------------------------------------------------------------

void ModuleCore::CheckEvents(const char* call) const {
  if (!HasEvents())
    Fail(code::kUnsupported, std::string(call) + ": " + TargetName(info().target) +
                                 " modules have no timing events (cuda and emu modules do)");
}

void ModuleCore::CheckEvent(const DeviceEvent* event, const char* call, const char* which) const {
  if (event == nullptr)
    Fail(code::kType, std::string(call) + ": " + which + " is not an event from eventCreate()");
  if (event->owner.get() != this)
    Fail(code::kForeign, std::string(call) + ": " + which + " belongs to another module handle");
  if (event->destroyed) Fail(code::kFreed, std::string(call) + ": " + which + " was destroyed");
}

std::string ModuleCore::EventClock() const {
  CheckEvents("eventClock");
  const char* clock = lib_->api().event_clock();
  return clock ? clock : "";
}

void* ModuleCore::CreateEvent() {
  CheckEvents("eventCreate");
  void* event = nullptr;
  lib_->Check(lib_->api().event_create(&event), "ca_event_create");
  if (event == nullptr) Fail(code::kStatus, "ca_event_create returned a null event");
  return event;
}

void ModuleCore::RecordEvent(DeviceEvent* event) {
  CheckEvents("eventRecord");
  CheckEvent(event, "eventRecord", "the event");
  lib_->Check(lib_->api().event_record(event->ptr, stream_), "ca_event_record");
  event->recorded = true;
  event->completed = false;
}

void ModuleCore::SynchronizeEvent(DeviceEvent* event) {
  CheckEvents("eventSynchronize");
  CheckEvent(event, "eventSynchronize", "the event");
  if (!event->recorded) Fail(code::kInvalid, "eventSynchronize: the event was never recorded");
  lib_->Check(lib_->api().event_synchronize(event->ptr), "ca_event_synchronize");
  event->completed = true;
}

double ModuleCore::ElapsedMs(DeviceEvent* start, DeviceEvent* stop) {
  CheckEvents("eventElapsedMs");
  CheckEvent(start, "eventElapsedMs", "start");
  CheckEvent(stop, "eventElapsedMs", "stop");
  if (!start->recorded || !stop->recorded)
    Fail(code::kInvalid, std::string("eventElapsedMs: ") + (start->recorded ? "stop" : "start") +
                             " was never recorded");
  if (!stop->completed)
    Fail(code::kInvalid, "eventElapsedMs: synchronize the stop event after recording it");
  float ms = 0;
  lib_->Check(lib_->api().event_elapsed_ms(&ms, start->ptr, stop->ptr), "ca_event_elapsed_ms");
  return ms;
}

void ModuleCore::DestroyEvent(DeviceEvent* event) {
  CheckEvents("eventDestroy");
  CheckEvent(event, "eventDestroy", "the event");
  event->destroyed = true;  // even if the module fails: the handle is not retried
  lib_->Check(lib_->api().event_destroy(event->ptr), "ca_event_destroy");
}

void ModuleCore::ReleaseEventQuietly(void* ptr) noexcept {
  if (ptr && lib_->api().event_destroy) lib_->api().event_destroy(ptr);
}

CaStats ModuleCore::Stats() const {
  CaStats stats{};
  lib_->Check(lib_->api().get_stats(&stats), "ca_get_stats");
  return stats;
}

std::string ModuleCore::KernelStats() const {
  const char* text = lib_->api().kernel_stats();
  return text ? text : "{\"kernels\":{}}";
}

void ModuleCore::ResetStats() {
  lib_->Check(lib_->api().reset_stats(), "ca_reset_stats");
  allocations_ = {};
}

}  // namespace chunkattn
