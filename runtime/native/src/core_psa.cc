// core_psa.cc — the addon side of progressive sparse attention (chunkattn/psa_abi.h): checks
// every argument, then calls ca_psa_meta / ca_psa_decode of a module that exports them.
#include <cmath>
#include <cstring>
#include <string>

#include "chunkattn/context.h"
#include "core.h"
#include "failure.h"

namespace chunkattn {
namespace {

// Order of the config Float64Array (runtime/psa-options.ts writes the same order).
enum PsaConfigField {
  kMass = 0,
  kKMin,
  kKMax,
  kRecentChunks,
  kSafetyNet,
  kUseBox,
  kDenseBelowTokens,
  kGuard,
  kMaxChunks,
  kConfigFields,
};

int32_t IntField(const double* c, int field, const char* name, double lo, double hi) {
  const double v = c[field];
  if (!(v >= lo && v <= hi) || v != std::floor(v))
    Fail(code::kRange, std::string("psa config ") + name + " = " + std::to_string(v) +
                           " is not an integer in [" + std::to_string(int64_t(lo)) + ", " +
                           std::to_string(int64_t(hi)) + "]");
  return int32_t(v);
}

void CheckInt32Array(const ArrayArg& a, const char* name, uint64_t at_least) {
  if (a.type != ArrayType::kInt32)
    Fail(code::kDType, std::string(name) + " must be an Int32Array, got " + a.what);
  if (a.shared) Fail(code::kType, std::string(name) + " must not be backed by a SharedArrayBuffer");
  if (a.length < at_least)
    Fail(code::kShape, std::string(name) + " has " + std::to_string(a.length) + " elements; " +
                           std::to_string(at_least) + " needed");
}

// Aligns staging sections to 256 bytes.
uint64_t Align(uint64_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

void ModuleCore::PsaMeta(const PoolArg& pool_arg, DeviceBuffer* meta, const ArrayArg& slots) {
  if (!HasPsaKernels())
    Fail(code::kUnsupported,
         "this " + std::string(TargetName(info().target)) + " module has no PSA kernels");
  const Pool pool = ResolvePool(pool_arg);
  CheckTensor(meta, "meta");
  const ModuleInfo& mi = info();
  const uint64_t elems = uint64_t(pool.num_slots) * mi.kv_heads * CA_PSA_META_VECTORS * mi.head_dim;
  if (meta->dtype != mi.dtype_kv || meta->bytes < elems * DTypeBytes(mi.dtype_kv))
    Fail(code::kShape, "meta must be a " + std::string(DTypeName(mi.dtype_kv)) +
                           " DeviceTensor of " + std::to_string(elems) +
                           " elements [numSlots, kvHeads, 4, headDim]");
  CheckInt32Array(slots, "slots", 0);
  const int32_t* s = static_cast<const int32_t*>(slots.data);
  for (size_t i = 0; i < slots.length; ++i)
    if (s[i] < 0 || s[i] >= pool.num_slots)
      Fail(code::kRange, "slots[" + std::to_string(i) + "] = " + std::to_string(s[i]) +
                             " is outside [0, " + std::to_string(pool.num_slots) + ")");
  if (slots.length == 0) return;
  const uint64_t bytes = slots.length * 4;
  Ensure(copies_staging_, bytes, "the PSA metadata slot list");
  const Api& api = lib_->api();
  lib_->Check(api.memcpy_(copies_staging_.ptr, s, bytes, CA_COPY_H2D, stream_), "ca_memcpy");
  CaPsaMetaParams p{};
  p.k_pool = pool.k;
  p.num_slots = pool.num_slots;
  p.meta = meta->ptr;
  p.num_chunks = int32_t(slots.length);
  p.slots = static_cast<const int32_t*>(copies_staging_.ptr);
  lib_->Check(api.psa_meta(&p, stream_), "ca_psa_meta");
}

ModuleCore::PsaRun ModuleCore::StartPsaDecode(const PoolArg& pool, const DecodeArgs& args,
                                              DeviceBuffer* meta, const ArrayArg& config,
                                              const ArrayArg& lists, const ArrayArg& counts,
                                              const ArrayArg& guard_added, bool select_only) {
  if (!HasPsaKernels())
    Fail(code::kUnsupported,
         "this " + std::string(TargetName(info().target)) + " module has no PSA kernels");
  const bool on_host = info().target == Target::kCpu;
  const ModuleInfo& mi = info();
  CheckTensor(meta, "meta");
  if (config.type != ArrayType::kFloat64 || config.length != kConfigFields)
    Fail(code::kShape,
         "psa config must be a Float64Array of " + std::to_string(int(kConfigFields)) + " values");
  const double* c = static_cast<const double*>(config.data);
  CaPsaParams s{};
  s.struct_bytes = sizeof(CaPsaParams);
  if (!(c[kMass] > 0 && c[kMass] <= 1)) Fail(code::kRange, "psa mass must be in (0, 1]");
  if (!(c[kSafetyNet] >= 0 && c[kSafetyNet] <= 1))
    Fail(code::kRange, "psa safetyNet must be in [0, 1]");
  s.mass = float(c[kMass]);
  s.k_min = IntField(c, kKMin, "kMin", 0, 1 << 24);
  s.k_max = IntField(c, kKMax, "kMax", 1, 1 << 24);
  s.recent_chunks = IntField(c, kRecentChunks, "recentChunks", 0, 1 << 24);
  s.safety_net = float(c[kSafetyNet]);
  s.use_box = IntField(c, kUseBox, "useBox", 0, 1);
  s.dense_below_tokens = IntField(c, kDenseBelowTokens, "denseBelowTokens", 0, 2147483647.0);
  s.guard = IntField(c, kGuard, "guard", 0, 1);
  s.max_chunks = IntField(c, kMaxChunks, "maxChunks", 1, 1 << 24);
  s.select_only = select_only ? 1 : 0;

  PsaRun run;
  run.on_host = on_host;
  run.decode = StartDecode(pool, args);
  const Pool p = ResolvePool(pool);
  const uint64_t elems = uint64_t(p.num_slots) * mi.kv_heads * CA_PSA_META_VECTORS * mi.head_dim;
  if (meta->dtype != mi.dtype_kv || meta->bytes < elems * DTypeBytes(mi.dtype_kv))
    Fail(code::kShape, "meta must be a " + std::string(DTypeName(mi.dtype_kv)) +
                           " DeviceTensor of " + std::to_string(elems) + " elements");
  const ca::KernelContext ctx{context_.host.data()};
  const uint64_t rows = uint64_t(ctx.num_rows()) * mi.kv_heads;
  run.rows = rows;
  CheckInt32Array(lists, "lists", rows * uint64_t(s.max_chunks));
  CheckInt32Array(counts, "counts", rows);
  if (guard_added.present) CheckInt32Array(guard_added, "guardAdded", rows);
  for (int32_t r = 0; r < ctx.num_rows(); ++r)
    if (ctx.row_num_chunks(r) > s.max_chunks)
      Fail(code::kShape, "maxChunks " + std::to_string(s.max_chunks) + " is less than row " +
                             std::to_string(r) + "'s " + std::to_string(ctx.row_num_chunks(r)) +
                             " chunks");
  s.meta = meta->ptr;
  s.lists = static_cast<int32_t*>(lists.data);
  s.counts = static_cast<int32_t*>(counts.data);
  s.guard_added = guard_added.present ? static_cast<int32_t*>(guard_added.data) : nullptr;
  run.lists_host = lists.data;
  run.counts_host = counts.data;
  run.guard_added_host = guard_added.present ? guard_added.data : nullptr;
  if (!run.decode.launch) {
    for (uint64_t i = 0; i < rows; ++i) s.counts[i] = -1;
  } else if (!on_host) {
    // Module memory: the lists, the counts and the scratch (the select's, and the list-driven
    // decode's unless select_only), staged in one buffer; the lists and counts come back to the
    // caller's arrays (runtime/capacity.ts psaStagingBound mirrors this size).
    const uint64_t list_bytes = Align(rows * uint64_t(s.max_chunks) * 4);
    const uint64_t count_bytes = Align(rows * 4);
    const uint64_t guard_bytes = select_only ? 0 : Align(rows * 4);
    const uint64_t scratch_bytes =
        select_only
            ? ca_psa_scratch_bytes(ctx.num_requests(), mi.kv_heads, mi.q_heads, s.max_chunks)
            : ca_psa_decode_scratch_bytes(ctx.num_rows(), ctx.num_requests(), ctx.num_runs(),
                                          ctx.num_partials(), mi.kv_heads, mi.q_heads,
                                          s.max_chunks);
    Ensure(psa_staging_, list_bytes + count_bytes + guard_bytes + scratch_bytes,
           "the PSA select lists and scratch");
    unsigned char* base = static_cast<unsigned char*>(psa_staging_.ptr);
    s.lists = reinterpret_cast<int32_t*>(base);
    s.counts = reinterpret_cast<int32_t*>(base + list_bytes);
    s.guard_added =
        select_only ? nullptr : reinterpret_cast<int32_t*>(base + list_bytes + count_bytes);
    s.scratch = base + list_bytes + count_bytes + guard_bytes;
  }
  run.s = s;
  return run;
}

void ModuleCore::FinishPsaDecode(const PsaRun& run) {
  if (!run.decode.launch) return;
  const Api& api = lib_->api();
  const CaPsaParams& s = run.s;
  lib_->Check(api.psa_decode(&run.decode.params, &s, stream_), "ca_psa_decode");
  if (!run.on_host) {
    lib_->Check(api.memcpy_(run.lists_host, s.lists, run.rows * uint64_t(s.max_chunks) * 4,
                            CA_COPY_D2H, stream_),
                "ca_memcpy");
    lib_->Check(api.memcpy_(run.counts_host, s.counts, run.rows * 4, CA_COPY_D2H, stream_),
                "ca_memcpy");
    if (run.guard_added_host && s.guard_added)
      lib_->Check(
          api.memcpy_(run.guard_added_host, s.guard_added, run.rows * 4, CA_COPY_D2H, stream_),
          "ca_memcpy");
    else if (run.guard_added_host)
      std::memset(run.guard_added_host, 0, run.rows * 4);
  }
  if (s.select_only) return;
  if (run.decode.out_host)
    lib_->Check(api.memcpy_(run.decode.out_host, run.decode.params.out, run.decode.out_bytes,
                            CA_COPY_D2H, stream_),
                "ca_memcpy");
}

}  // namespace chunkattn
