#include "core.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "failure.h"
#include "validate.h"

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

bool Overlaps(const void* a, uint64_t a_bytes, const void* b, uint64_t b_bytes) {
  if (a_bytes == 0 || b_bytes == 0) return false;
  auto a0 = reinterpret_cast<uintptr_t>(a), b0 = reinterpret_cast<uintptr_t>(b);
  return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

uint64_t PhysicalMemoryBytes() {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return UINT64_MAX;
  return uint64_t(pages) * uint64_t(page);
}

}  // namespace

ModuleCore::~ModuleCore() {
  ReleaseScratch(workspace_);
  ReleaseScratch(q_device_);
  ReleaseScratch(out_device_);
  for (Mirror* m :
       {&row_io_, &row_seq_, &row_length_, &row_chunk_offsets_, &row_chunk_slots_,
        &row_shared_chunks_, &row_partial_offsets_, &row_partials_, &runs_, &run_slots_, &params_})
    ReleaseScratch(m->device);
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

void ModuleCore::Ensure(Scratch& scratch, uint64_t bytes) {
  if (scratch.ptr && scratch.capacity >= bytes) return;
  uint64_t capacity = std::max<uint64_t>({bytes, scratch.capacity + scratch.capacity / 2, 256});
  void* ptr = nullptr;
  lib_->Check(lib_->api().malloc_(&ptr, capacity), "ca_malloc");
  if (!ptr) Fail(code::kNoMemory, "ca_malloc returned CA_OK and a null pointer");
  ReleaseScratch(scratch);
  scratch.ptr = ptr;
  scratch.capacity = capacity;
}

const void* ModuleCore::Upload(Mirror& mirror, const void* host, uint64_t bytes, bool force) {
  void* before = mirror.device.ptr;
  Ensure(mirror.device, std::max<uint64_t>(bytes, 64));
  if (mirror.device.ptr != before) mirror.valid = false;
  if (!force && mirror.valid && mirror.shadow.size() == bytes &&
      (bytes == 0 || std::memcmp(mirror.shadow.data(), host, bytes) == 0))
    return mirror.device.ptr;
  mirror.valid = false;
  if (bytes > 0)
    lib_->Check(lib_->api().memcpy_(mirror.device.ptr, host, bytes, CA_COPY_H2D), "ca_memcpy");
  const uint8_t* begin = static_cast<const uint8_t*>(host);
  mirror.shadow.assign(begin, begin + bytes);
  mirror.valid = true;
  return mirror.device.ptr;
}

ModuleCore::Pool ModuleCore::ResolvePool(const PoolArg& pool) const {
  const struct {
    const char* name;
    DeviceBuffer* buffer;
    const std::string& what;
  } halves[2] = {{"pool.k", pool.k, pool.k_what}, {"pool.v", pool.v, pool.v_what}};
  for (const auto& half : halves) {
    if (!half.buffer)
      Fail(code::kType, std::string(half.name) + " is not a pool buffer (got " + half.what +
                            "): pools come from NativeModule.allocPool");
    if (half.buffer->freed) Fail(code::kFreed, std::string(half.name) + " has been freed");
    if (half.buffer->owner.get() != this)
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
  if (!OnDevice())
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
    if (OnDevice()) lib_->Check(api.synchronize(nullptr), "ca_synchronize");
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
  int status[2];
  for (int i = 0; i < 2; ++i) {
    status[i] = lib_->api().free_(halves[i]->ptr);
    halves[i]->ptr = nullptr;
    halves[i]->freed = true;
  }
  lib_->Check(status[0], "ca_free");
  lib_->Check(status[1], "ca_free");
}

void ModuleCore::WriteKv(const PoolArg& pool_arg, const ArrayArg& slots_arg,
                         const ArrayArg& offsets_arg, const ArrayArg& k, const ArrayArg& v) {
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
  const CaDType src = CheckData(k, "k", mi.dtype_kv, num_tokens * token_elements, true,
                                "[tokens, kvHeads, headDim]");
  const CaDType src_v = CheckData(v, "v", mi.dtype_kv, num_tokens * token_elements, true,
                                  "[tokens, kvHeads, headDim]");
  if (src != src_v)
    Fail(code::kDType,
         std::string("k and v must have the same dtype, got k ") + k.what + " and v " + v.what);
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
  CaWriteKvParams p{};
  p.k_pool = pool.k;
  p.v_pool = pool.v;
  p.num_slots = pool.num_slots;
  p.num_tokens = int32_t(num_tokens);
  p.slots = slots.data;
  p.offsets = offsets.data;
  p.k = k.data;
  p.v = v.data;
  p.src_dtype = src;
  lib_->Check(lib_->api().write_kv(&p, nullptr), "ca_write_kv");
}

void ModuleCore::CopyChunk(const PoolArg& pool_arg, const NumberArg& src_arg,
                           const NumberArg& dst_arg, const NumberArg& tokens_arg) {
  const Pool pool = ResolvePool(pool_arg);
  const int32_t src = ToInt(src_arg, "srcSlot", 0, pool.num_slots - 1);
  const int32_t dst = ToInt(dst_arg, "dstSlot", 0, pool.num_slots - 1);
  const int32_t num_tokens = ToInt(tokens_arg, "numTokens", 0, info().chunk_size);
  if (src == dst) Fail(code::kRange, "srcSlot and dstSlot are both " + std::to_string(src));
  if (num_tokens == 0) return;
  lib_->Check(lib_->api().copy_chunk(pool.k, pool.v, pool.num_slots, src, dst, num_tokens, nullptr),
              "ca_copy_chunk");
}

void ModuleCore::ReadPool(const PoolArg& pool_arg, const NumberArg& slot_arg, void* k_host,
                          void* v_host) {
  const Pool pool = ResolvePool(pool_arg);
  const int32_t slot = ToInt(slot_arg, "slot", 0, pool.num_slots - 1);
  const uint64_t bytes = info().SlotBytes();
  const Api& api = lib_->api();
  if (OnDevice()) lib_->Check(api.synchronize(nullptr), "ca_synchronize");
  lib_->Check(api.memcpy_(k_host, static_cast<uint8_t*>(pool.k) + uint64_t(slot) * bytes, bytes,
                          CA_COPY_D2H),
              "ca_memcpy");
  lib_->Check(api.memcpy_(v_host, static_cast<uint8_t*>(pool.v) + uint64_t(slot) * bytes, bytes,
                          CA_COPY_D2H),
              "ca_memcpy");
}

void ModuleCore::Prepare(const PoolArg& pool_arg, const DecodeArgs& a, Prepared& pr) {
  const ModuleInfo& mi = info();
  const Pool pool = ResolvePool(pool_arg);
  const int32_t num_io_rows = ToInt(a.num_io_rows, "numIoRows", 0, INT32_MAX);
  const uint64_t io_elements = uint64_t(num_io_rows) * mi.RowElements();
  CheckData(a.q, "q", mi.dtype_q, io_elements, false, "[numIoRows, qHeads, headDim]");
  CheckData(a.out, "out", mi.dtype_out, io_elements, false, "[numIoRows, qHeads, headDim]");
  pr.q_bytes = io_elements * DTypeBytes(mi.dtype_q);
  pr.out_bytes = io_elements * DTypeBytes(mi.dtype_out);

  ContextView ctx;
  ctx.row_io = Ints(a.row_io, "rowIo", pr.copies);
  ctx.row_seq = Ints(a.row_seq, "rowSeq", pr.copies);
  ctx.row_length = Ints(a.row_length, "rowLength", pr.copies);
  ctx.row_chunk_offsets = Ints(a.row_chunk_offsets, "rowChunkOffsets", pr.copies);
  ctx.row_chunk_slots = Ints(a.row_chunk_slots, "rowChunkSlots", pr.copies);
  ctx.row_shared_chunks = Ints(a.row_shared_chunks, "rowSharedChunks", pr.copies);
  ctx.row_partial_offsets = Ints(a.row_partial_offsets, "rowPartialOffsets", pr.copies);
  ctx.row_partials = Ints(a.row_partials, "rowPartials", pr.copies);
  ctx.runs = Ints(a.runs, "runs", pr.copies);
  ctx.run_slots = Ints(a.run_slots, "runSlots", pr.copies);
  ctx.num_partials = ToInt(a.num_partials, "numPartials", 0, INT32_MAX);

  const float* params = reinterpret_cast<const float*>(kEmpty);
  if (a.params.present || mi.num_params > 0) {
    if (a.params.type != ArrayType::kFloat32)
      Fail(code::kDType, "params must be a Float32Array, got " + a.params.what);
    if (a.params.length != uint64_t(mi.num_params))
      Fail(code::kShape, "params has " + Num(a.params.length) +
                             " elements, but the module declares " + std::to_string(mi.num_params) +
                             " parameter(s)");
    if (a.params.length > 0) params = static_cast<const float*>(a.params.data);
  }
  if (!a.softmax_scale.is_number)
    Fail(code::kType, "softmaxScale must be a number, got " + a.softmax_scale.what);
  if (!std::isfinite(a.softmax_scale.value))
    Fail(code::kRange, "softmaxScale = " + NumberText(a.softmax_scale.value) + " must be finite");
  const int32_t num_threads =
      a.num_threads.present ? ToInt(a.num_threads, "numThreads", 0, kMaxThreads) : 0;
  if (a.context_version.present) {
    if (!a.context_version.is_number)
      Fail(code::kType, "contextVersion must be a number, got " + a.context_version.what);
    if (!std::isfinite(a.context_version.value))
      Fail(code::kRange,
           "contextVersion = " + NumberText(a.context_version.value) + " must be finite");
    pr.context_version = a.context_version.value;
  }

  ValidateContext(ctx, {num_io_rows, pool.num_slots, mi.chunk_size, mi.phase1});

  // out must not overlap anything the kernel reads: a kernel writing out while reading an index
  // array through the same memory could follow an index it did not validate.
  const struct {
    const char* name;
    const void* data;
    uint64_t bytes;
  } inputs[] = {
      {"q", a.q.data, pr.q_bytes},
      {"params", params, uint64_t(mi.num_params) * sizeof(float)},
      {"rowIo", ctx.row_io.data, ctx.row_io.size * 4},
      {"rowSeq", ctx.row_seq.data, ctx.row_seq.size * 4},
      {"rowLength", ctx.row_length.data, ctx.row_length.size * 4},
      {"rowChunkOffsets", ctx.row_chunk_offsets.data, ctx.row_chunk_offsets.size * 4},
      {"rowChunkSlots", ctx.row_chunk_slots.data, ctx.row_chunk_slots.size * 4},
      {"rowSharedChunks", ctx.row_shared_chunks.data, ctx.row_shared_chunks.size * 4},
      {"rowPartialOffsets", ctx.row_partial_offsets.data, ctx.row_partial_offsets.size * 4},
      {"rowPartials", ctx.row_partials.data, ctx.row_partials.size * 4},
      {"runs", ctx.runs.data, ctx.runs.size * 4},
      {"runSlots", ctx.run_slots.data, ctx.run_slots.size * 4},
  };
  for (const auto& input : inputs)
    if (Overlaps(a.out.data, pr.out_bytes, input.data, input.bytes))
      Fail(code::kRange, std::string("out shares memory with ") + input.name +
                             ": the output must not overlap any input");

  CaDecodeParams& p = pr.params;
  p.abi_version = CA_ABI_VERSION;
  p.struct_bytes = sizeof(CaDecodeParams);
  p.q = io_elements ? a.q.data : kEmpty;
  p.out = a.out.data;
  p.k_pool = pool.k;
  p.v_pool = pool.v;
  p.num_io_rows = num_io_rows;
  p.num_slots = pool.num_slots;
  p.num_rows = int32_t(ctx.row_length.size);
  p.row_io = ctx.row_io.data;
  p.row_seq = ctx.row_seq.data;
  p.row_length = ctx.row_length.data;
  p.row_chunk_offsets = ctx.row_chunk_offsets.data;
  p.row_chunk_slots = ctx.row_chunk_slots.data;
  p.row_shared_chunks = ctx.row_shared_chunks.data;
  p.row_partial_offsets = ctx.row_partial_offsets.data;
  p.row_partials = ctx.row_partials.data;
  p.num_runs = int32_t(ctx.runs.size / kRunFields);
  p.runs = reinterpret_cast<const CaSharedRun*>(ctx.runs.data);
  p.run_slots = ctx.run_slots.data;
  p.num_partials = int32_t(ctx.num_partials);
  p.params = params;
  p.num_params = mi.num_params;
  p.softmax_scale = float(a.softmax_scale.value);
  p.num_threads = num_threads;
  p.workspace = nullptr;
  p.workspace_bytes = 0;
}

uint64_t ModuleCore::WorkspaceBytes(const PoolArg& pool, const DecodeArgs& args) {
  Prepared prepared;
  Prepare(pool, args, prepared);
  return lib_->api().workspace_bytes(&prepared.params);
}

void ModuleCore::Decode(const PoolArg& pool, const DecodeArgs& args) {
  Prepared pr;
  Prepare(pool, args, pr);
  CaDecodeParams p = pr.params;
  if (p.num_rows == 0) return;  // nothing to compute; io rows not in rowIo are never written

  // ca_workspace_bytes is host code: it always sees host pointers.
  const uint64_t workspace_bytes = lib_->api().workspace_bytes(&p);
  if (!OnDevice()) CheckHostBytes(workspace_bytes, "the decode workspace");
  Ensure(workspace_, std::max<uint64_t>(workspace_bytes, 1));
  p.workspace = workspace_.ptr;
  p.workspace_bytes = workspace_bytes;

  if (OnDevice()) {
    // A new contextVersion uploads everything; otherwise each array is compared with what was
    // uploaded last (lengths move between tree rebuilds; a caller may also mutate in place).
    const bool force =
        pr.context_version && (!uploaded_version_ || *uploaded_version_ != *pr.context_version);
    uploaded_version_.reset();
    auto upload = [&](Mirror& mirror, const void* host, uint64_t count, uint64_t element_bytes) {
      return Upload(mirror, host, count * element_bytes, force);
    };
    const uint64_t num_rows = uint64_t(p.num_rows);
    const uint64_t num_chunks = uint64_t(p.row_chunk_offsets[num_rows]);
    const uint64_t num_row_partials = uint64_t(p.row_partial_offsets[num_rows]);
    const uint64_t num_run_slots = args.run_slots.length;
    CaDecodeParams d = p;
    d.row_io = static_cast<const int32_t*>(upload(row_io_, p.row_io, num_rows, 4));
    d.row_seq = static_cast<const int32_t*>(upload(row_seq_, p.row_seq, num_rows, 4));
    d.row_length = static_cast<const int32_t*>(upload(row_length_, p.row_length, num_rows, 4));
    d.row_chunk_offsets = static_cast<const int32_t*>(
        upload(row_chunk_offsets_, p.row_chunk_offsets, num_rows + 1, 4));
    d.row_chunk_slots =
        static_cast<const int32_t*>(upload(row_chunk_slots_, p.row_chunk_slots, num_chunks, 4));
    d.row_shared_chunks =
        static_cast<const int32_t*>(upload(row_shared_chunks_, p.row_shared_chunks, num_rows, 4));
    d.row_partial_offsets = static_cast<const int32_t*>(
        upload(row_partial_offsets_, p.row_partial_offsets, num_rows + 1, 4));
    d.row_partials =
        static_cast<const int32_t*>(upload(row_partials_, p.row_partials, num_row_partials, 4));
    d.runs = static_cast<const CaSharedRun*>(
        upload(runs_, p.runs, uint64_t(p.num_runs), sizeof(CaSharedRun)));
    d.run_slots = static_cast<const int32_t*>(upload(run_slots_, p.run_slots, num_run_slots, 4));
    d.params = static_cast<const float*>(upload(params_, p.params, uint64_t(p.num_params), 4));
    if (pr.context_version) uploaded_version_ = pr.context_version;

    const Api& api = lib_->api();
    Ensure(q_device_, pr.q_bytes);
    Ensure(out_device_, pr.out_bytes);
    lib_->Check(api.memcpy_(q_device_.ptr, p.q, pr.q_bytes, CA_COPY_H2D), "ca_memcpy");
    // Io rows outside rowIo keep their contents: start from the caller's out unless every row is
    // written.
    if (p.num_rows < p.num_io_rows)
      lib_->Check(api.memcpy_(out_device_.ptr, p.out, pr.out_bytes, CA_COPY_H2D), "ca_memcpy");
    d.q = q_device_.ptr;
    d.out = out_device_.ptr;
    lib_->Check(api.decode(&d, nullptr), "ca_decode");
    lib_->Check(api.synchronize(nullptr), "ca_synchronize");
    lib_->Check(api.memcpy_(p.out, out_device_.ptr, pr.out_bytes, CA_COPY_D2H), "ca_memcpy");
    return;
  }
  lib_->Check(lib_->api().decode(&p, nullptr), "ca_decode");
}

CaStats ModuleCore::Stats() const {
  CaStats stats{};
  lib_->Check(lib_->api().get_stats(&stats), "ca_get_stats");
  return stats;
}

std::string ModuleCore::KernelStatsJson() const {
  const char* json = lib_->api().kernel_stats();
  return json ? json : "{\"kernels\":{}}";
}

void ModuleCore::ResetStats() { lib_->Check(lib_->api().reset_stats(), "ca_reset_stats"); }

}  // namespace chunkattn
