// addon.cc — the N-API surface of chunkattn_native (see ../README.md for the JS API).
//
// Every exported function is a plain function taking its module handle as the first argument;
// handles (modules, pool buffers) are plain objects marked with a napi type tag and checked
// before they are unwrapped, so no JS value can be mistaken for a native object.
//
// Order inside every function: (1) read every JS property the call needs (this may run user
// getters, which may do anything), (2) allocate any result objects, (3) read the values' native
// state (typed array pointers, handles) — no JS runs from here on — (4) validate, (5) call the
// module. A getter therefore cannot free, detach or resize anything between a check and its use.
#include <napi.h>

#include <cmath>
#include <functional>
#include <new>
#include <optional>
#include <string>

#include "core.h"
#include "failure.h"
#include "library.h"

namespace chunkattn {
namespace {

constexpr napi_type_tag kModuleTag = {0x6368756e6b617474ULL, 0x6e6d6f64756c6531ULL};
constexpr napi_type_tag kBufferTag = {0x6368756e6b617474ULL, 0x6e62756666657231ULL};

struct ModuleHandle {
  std::shared_ptr<ModuleCore> core;
};

struct BufferHandle {
  DeviceBuffer buffer;
};

constexpr napi_type_tag kEventTag = {0x6368756e6b617474ULL, 0x6e6576656e743031ULL};

struct EventHandle {
  DeviceEvent event;
};

// --- errors ---------------------------------------------------------------------------------

Napi::Error ToJsError(Napi::Env env, const Failure& failure) {
  Napi::Error error = Napi::Error::New(env, failure.message);
  error.Set("code", Napi::String::New(env, failure.code));
  if (failure.status != 0) error.Set("status", Napi::Number::New(env, failure.status));
  if (!failure.module_message.empty())
    error.Set("moduleMessage", Napi::String::New(env, failure.module_message));
  return error;
}

using Handler = Napi::Value (*)(const Napi::CallbackInfo&);

// Turns every C++ exception into a JS error with a `code`; nothing escapes to terminate().
template <Handler F>
Napi::Value Guarded(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    return F(info);
  } catch (const Failure& failure) {
    throw ToJsError(env, failure);
  } catch (const Napi::Error&) {
    throw;  // a JS exception from a getter: rethrown unchanged
  } catch (const std::bad_alloc&) {
    throw ToJsError(env, Failure(code::kNoMemory, "out of host memory in the chunkattn addon"));
  } catch (const std::exception& e) {
    throw ToJsError(env, Failure(code::kStatus, std::string("chunkattn addon: ") + e.what()));
  }
}

// --- reading JS values (no JS runs in these) -------------------------------------------------

const char* TypedArrayName(napi_typedarray_type type) {
  switch (type) {
    case napi_int8_array:
      return "Int8Array";
    case napi_uint8_array:
      return "Uint8Array";
    case napi_uint8_clamped_array:
      return "Uint8ClampedArray";
    case napi_int16_array:
      return "Int16Array";
    case napi_uint16_array:
      return "Uint16Array";
    case napi_int32_array:
      return "Int32Array";
    case napi_uint32_array:
      return "Uint32Array";
    case napi_float32_array:
      return "Float32Array";
    case napi_float64_array:
      return "Float64Array";
    case napi_bigint64_array:
      return "BigInt64Array";
    case napi_biguint64_array:
      return "BigUint64Array";
    default:
      return "TypedArray";
  }
}

std::string Describe(napi_env env, napi_value value) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok) return "an unknown value";
  switch (type) {
    case napi_undefined:
      return "undefined";
    case napi_null:
      return "null";
    case napi_boolean:
      return "a boolean";
    case napi_number:
      return "a number";
    case napi_string:
      return "a string";
    case napi_symbol:
      return "a symbol";
    case napi_function:
      return "a function";
    case napi_bigint:
      return "a bigint";
    case napi_external:
      return "an external";
    case napi_object:
      break;
  }
  bool flag = false;
  if (napi_is_typedarray(env, value, &flag) == napi_ok && flag) {
    napi_typedarray_type array_type;
    size_t length;
    if (napi_get_typedarray_info(env, value, &array_type, &length, nullptr, nullptr, nullptr) ==
        napi_ok)
      return std::string("a ") + TypedArrayName(array_type);
  }
  if (napi_is_array(env, value, &flag) == napi_ok && flag) return "an Array";
  if (napi_is_arraybuffer(env, value, &flag) == napi_ok && flag) return "an ArrayBuffer";
  if (napi_is_dataview(env, value, &flag) == napi_ok && flag) return "a DataView";
  return "an object";
}

bool IsUndefined(napi_env env, napi_value value) {
  napi_valuetype type;
  return napi_typeof(env, value, &type) == napi_ok && type == napi_undefined;
}

ArrayArg ReadArray(napi_env env, napi_value value) {
  ArrayArg array;
  array.what = Describe(env, value);
  array.present = !IsUndefined(env, value);
  bool is_typed = false;
  if (napi_is_typedarray(env, value, &is_typed) != napi_ok || !is_typed) return array;
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  napi_value buffer;
  size_t byte_offset = 0;
  if (napi_get_typedarray_info(env, value, &type, &length, &data, &buffer, &byte_offset) != napi_ok)
    return array;
  bool is_plain_buffer = false;
  if (napi_is_arraybuffer(env, buffer, &is_plain_buffer) != napi_ok) return array;
  if (data == nullptr && length != 0) return array;  // cannot happen for a live buffer; be safe
  array.type = static_cast<ArrayType>(type);
  array.length = length;
  array.data = data;
  array.shared = !is_plain_buffer;
  return array;
}

NumberArg ReadNumber(napi_env env, napi_value value) {
  NumberArg number;
  number.what = Describe(env, value);
  number.present = !IsUndefined(env, value);
  napi_valuetype type;
  if (napi_typeof(env, value, &type) == napi_ok && type == napi_number &&
      napi_get_value_double(env, value, &number.value) == napi_ok)
    number.is_number = true;
  return number;
}

template <class T>
T* Unwrap(napi_env env, napi_value value, const napi_type_tag& tag);

// A typed array, or a DeviceTensor's native handle.
TensorArg ReadTensor(napi_env env, napi_value value);

template <class T>
T* Unwrap(napi_env env, napi_value value, const napi_type_tag& tag) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_object) return nullptr;
  bool tagged = false;
  if (napi_check_object_type_tag(env, value, &tag, &tagged) != napi_ok || !tagged) return nullptr;
  void* native = nullptr;
  if (napi_unwrap(env, value, &native) != napi_ok) return nullptr;
  return static_cast<T*>(native);
}

TensorArg ReadTensor(napi_env env, napi_value value) {
  TensorArg tensor;
  tensor.host = ReadArray(env, value);
  if (auto* handle = Unwrap<BufferHandle>(env, value, kBufferTag)) tensor.device = &handle->buffer;
  return tensor;
}

// The module handle of info[0], in any state (for reads that do not touch module memory).
ModuleCore& AnyModule(const Napi::CallbackInfo& info) {
  ModuleHandle* handle = Unwrap<ModuleHandle>(info.Env(), info[0], kModuleTag);
  if (!handle || !handle->core)
    Fail(code::kType, "the first argument must be a module handle from load(), got " +
                          Describe(info.Env(), info[0]));
  return *handle->core;
}

// The module handle of info[0], refused (ERR_CA_BUSY) while a decodeAsync holds it.
ModuleCore& Module(const Napi::CallbackInfo& info) {
  ModuleCore& core = AnyModule(info);
  core.CheckIdle();
  return core;
}

// --- pools ----------------------------------------------------------------------------------

// Step 1: the pool's JS properties (may run getters).
struct PoolValues {
  Napi::Value k, v, num_slots;
};

PoolValues ReadPoolValues(Napi::Env env, Napi::Value pool) {
  if (!pool.IsObject())
    Fail(code::kType, "pool must be a KvPool from allocPool, got " + Describe(env, pool));
  Napi::Object object = pool.As<Napi::Object>();
  PoolValues values;
  values.k = object.Get("k");
  values.v = object.Get("v");
  values.num_slots = object.Get("numSlots");
  return values;
}

// Step 3: their native state (no JS).
PoolArg ToPoolArg(napi_env env, const PoolValues& values) {
  PoolArg pool;
  if (auto* k = Unwrap<BufferHandle>(env, values.k, kBufferTag)) pool.k = &k->buffer;
  if (auto* v = Unwrap<BufferHandle>(env, values.v, kBufferTag)) pool.v = &v->buffer;
  pool.k_what = Describe(env, values.k);
  pool.v_what = Describe(env, values.v);
  pool.num_slots = ReadNumber(env, values.num_slots);
  return pool;
}

// Pools are external memory to V8: reporting it makes GC pressure reflect them, so dropped
// Attention objects are collected (and their pools freed) before memory runs out.
void AdjustExternal(napi_env env, int64_t change) {
  int64_t total;
  if (change != 0) napi_adjust_external_memory(env, change, &total);
}

int64_t LiveBytes(const PoolArg& pool) {
  int64_t bytes = 0;
  for (const DeviceBuffer* half : {pool.k, pool.v})
    if (half && !half->freed) bytes += int64_t(half->bytes);
  return bytes;
}

void FinalizeBuffer(napi_env env, void* data, void*) {
  auto* handle = static_cast<BufferHandle*>(data);
  if (!handle->buffer.freed && handle->buffer.owner) {
    handle->buffer.owner->ReleaseQuietly(handle->buffer.ptr);
    AdjustExternal(env, -int64_t(handle->buffer.bytes));
  }
  delete handle;
}

void FinalizeEvent(napi_env, void* data, void*) {
  auto* handle = static_cast<EventHandle*>(data);
  if (!handle->event.destroyed && handle->event.owner)
    handle->event.owner->ReleaseEventQuietly(handle->event.ptr);
  delete handle;
}

void FinalizeModule(napi_env, void* data, void*) { delete static_cast<ModuleHandle*>(data); }

// Wraps `native` (ownership passes to the object) in a fresh tagged object.
template <class T>
Napi::Object Wrap(Napi::Env env, T* native, const napi_type_tag& tag, napi_finalize finalize) {
  Napi::Object object;
  try {
    object = Napi::Object::New(env);
  } catch (...) {
    finalize(env, native, nullptr);
    throw;
  }
  napi_status status = napi_wrap(env, object, native, finalize, nullptr, nullptr);
  if (status != napi_ok) {
    finalize(env, native, nullptr);
    NAPI_THROW_IF_FAILED(env, status, Napi::Object());
  }
  NAPI_THROW_IF_FAILED(env, napi_type_tag_object(env, object, &tag), Napi::Object());
  return object;
}

// --- info -----------------------------------------------------------------------------------

Napi::Value JsonToJs(Napi::Env env, const Json& json) {
  switch (json.kind) {
    case Json::Kind::kNull:
      return env.Null();
    case Json::Kind::kBool:
      return Napi::Boolean::New(env, json.boolean);
    case Json::Kind::kNumber:
      return Napi::Number::New(env, json.number);
    case Json::Kind::kString:
      return Napi::String::New(env, json.string);
    case Json::Kind::kArray: {
      Napi::Array array = Napi::Array::New(env, json.items.size());
      for (size_t i = 0; i < json.items.size(); ++i)
        array.Set(uint32_t(i), JsonToJs(env, json.items[i]));
      return array;
    }
    case Json::Kind::kObject: {
      Napi::Object object = Napi::Object::New(env);
      for (const auto& [name, value] : json.members) object.Set(name, JsonToJs(env, value));
      return object;
    }
  }
  return env.Undefined();
}

// --- exported functions ---------------------------------------------------------------------

// load(path: string): ModuleHandle
Napi::Value Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString())
    Fail(code::kType, "the module path must be a string, got " + Describe(env, info[0]));
  std::string path = info[0].As<Napi::String>().Utf8Value();
  auto handle = new ModuleHandle{std::make_shared<ModuleCore>(Library::Open(path))};
  return Wrap(env, handle, kModuleTag, FinalizeModule);
}

// info(mod): the parsed ca_info() document
Napi::Value Info(const Napi::CallbackInfo& info) {
  return JsonToJs(info.Env(), AnyModule(info).info().json);
}

// path(mod): the path the module was loaded from
Napi::Value Path(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), AnyModule(info).library().path());
}

// allocPool(mod, numSlots): { k, v, bytes }
Napi::Value AllocPool(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModuleCore& core = Module(info);
  ModuleHandle* handle = Unwrap<ModuleHandle>(env, info[0], kModuleTag);
  Napi::Object result = Napi::Object::New(env);
  NumberArg num_slots = ReadNumber(env, info[1]);
  uint64_t bytes = 0;
  auto [k, v] = core.AllocPool(num_slots, &bytes);
  // From here the two regions are owned by their handles (freed by finalizers if JS drops them).
  Napi::Object k_object =
      Wrap(env, new BufferHandle{{handle->core, k, bytes, false}}, kBufferTag, FinalizeBuffer);
  Napi::Object v_object =
      Wrap(env, new BufferHandle{{handle->core, v, bytes, false}}, kBufferTag, FinalizeBuffer);
  AdjustExternal(env, 2 * int64_t(bytes));
  result.Set("k", k_object);
  result.Set("v", v_object);
  result.Set("bytes", Napi::Number::New(env, double(bytes)));
  return result;
}

// freePool(mod, pool)
Napi::Value FreePool(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolValues values = ReadPoolValues(env, info[1]);
  ModuleCore& core = Module(info);
  PoolArg pool = ToPoolArg(env, values);
  const int64_t live = LiveBytes(pool);
  try {
    core.FreePool(pool);
  } catch (...) {
    AdjustExternal(env, LiveBytes(pool) - live);
    throw;
  }
  AdjustExternal(env, LiveBytes(pool) - live);
  return env.Undefined();
}

// bufferState(buffer): { bytes, freed } — for KvPool.freed and tests
Napi::Value BufferState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* handle = Unwrap<BufferHandle>(env, info[0], kBufferTag);
  if (!handle) Fail(code::kType, "not a pool buffer: " + Describe(env, info[0]));
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytes", Napi::Number::New(env, double(handle->buffer.bytes)));
  result.Set("freed", Napi::Boolean::New(env, handle->buffer.freed));
  result.Set("dtype", Napi::Number::New(env, handle->buffer.dtype));
  return result;
}

// writeKv(mod, pool, slots, offsets, k, v): k, v typed arrays or tensor handles
Napi::Value WriteKv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolValues values = ReadPoolValues(env, info[1]);
  ModuleCore& core = Module(info);
  PoolArg pool = ToPoolArg(env, values);
  core.WriteKv(pool, ReadArray(env, info[2]), ReadArray(env, info[3]), ReadTensor(env, info[4]),
               ReadTensor(env, info[5]));
  return env.Undefined();
}

// copyChunk(mod, pool, srcSlot, dstSlot, numTokens)
Napi::Value CopyChunk(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolValues values = ReadPoolValues(env, info[1]);
  ModuleCore& core = Module(info);
  core.CopyChunk(ToPoolArg(env, values), ReadNumber(env, info[2]), ReadNumber(env, info[3]),
                 ReadNumber(env, info[4]));
  return env.Undefined();
}

// copyChunks(mod, pool, copies: Int32Array [n * 3])
Napi::Value CopyChunks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolValues values = ReadPoolValues(env, info[1]);
  ModuleCore& core = Module(info);
  core.CopyChunks(ToPoolArg(env, values), ReadArray(env, info[2]));
  return env.Undefined();
}

// readPool(mod, pool, slot): { k, v } — one slot [Hkv, C, D], Float32Array (f32) or Uint16Array
Napi::Value ReadPool(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolValues values = ReadPoolValues(env, info[1]);
  ModuleCore& core = Module(info);
  const ModuleInfo& mi = core.info();
  const uint64_t bytes = mi.SlotBytes();
  const size_t elements = size_t(bytes / DTypeBytes(mi.dtype_kv));
  const napi_typedarray_type type = mi.dtype_kv == CA_F32 ? napi_float32_array : napi_uint16_array;
  Napi::ArrayBuffer k_buffer = Napi::ArrayBuffer::New(env, size_t(bytes));
  Napi::ArrayBuffer v_buffer = Napi::ArrayBuffer::New(env, size_t(bytes));
  napi_value k_out, v_out;
  NAPI_THROW_IF_FAILED(env, napi_create_typedarray(env, type, elements, k_buffer, 0, &k_out),
                       Napi::Value());
  NAPI_THROW_IF_FAILED(env, napi_create_typedarray(env, type, elements, v_buffer, 0, &v_out),
                       Napi::Value());
  Napi::Object result = Napi::Object::New(env);
  result.Set("k", Napi::Value(env, k_out));
  result.Set("v", Napi::Value(env, v_out));
  core.ReadPool(ToPoolArg(env, values), ReadNumber(env, info[2]), k_buffer.Data(), v_buffer.Data());
  return result;
}

struct DecodeValues {
  Napi::Value q, out, context, params, softmax_scale, num_threads;
};

DecodeValues ReadDecodeValues(Napi::Env env, Napi::Value args) {
  if (!args.IsObject())
    Fail(code::kType, "decode arguments must be an object, got " + Describe(env, args));
  Napi::Object o = args.As<Napi::Object>();
  DecodeValues d;
  d.q = o.Get("q");
  d.out = o.Get("out");
  d.context = o.Get("context");
  d.params = o.Get("params");
  d.softmax_scale = o.Get("softmaxScale");
  d.num_threads = o.Get("numThreads");
  return d;
}

DecodeArgs ToDecodeArgs(napi_env env, const DecodeValues& d) {
  DecodeArgs a;
  a.q = ReadTensor(env, d.q);
  a.out = ReadTensor(env, d.out);
  a.context = ReadArray(env, d.context);
  a.params = ReadArray(env, d.params);
  a.softmax_scale = ReadNumber(env, d.softmax_scale);
  a.num_threads = ReadNumber(env, d.num_threads);
  return a;
}

// shareMemory(mod, owner): mod's decode may use owner's pools and tensors
Napi::Value ShareMemory(const Napi::CallbackInfo& info) {
  ModuleCore& core = Module(info);
  ModuleHandle* owner = Unwrap<ModuleHandle>(info.Env(), info[1], kModuleTag);
  if (!owner || !owner->core)
    Fail(code::kType,
         "the owner must be a module handle from load(), got " + Describe(info.Env(), info[1]));
  core.ShareMemoryWith(owner->core);
  return info.Env().Undefined();
}

// decode(mod, pool, args)
Napi::Value Decode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolValues pool = ReadPoolValues(env, info[1]);
  DecodeValues values = ReadDecodeValues(env, info[2]);
  ModuleCore& core = Module(info);
  core.Decode(ToPoolArg(env, pool), ToDecodeArgs(env, values));
  return env.Undefined();
}

// The second half of an async decode (the launch and the copies back: FinishDecode or
// FinishPsaDecode), on a libuv worker thread. The JS values it uses (module, pool, args with
// q/out, and whatever else the call passed) stay referenced until the promise settles.
class DecodeWorker : public Napi::AsyncWorker {
 public:
  DecodeWorker(Napi::Env env, const char* name, std::shared_ptr<ModuleCore> core,
               std::function<void(ModuleCore&)> finish, Napi::Value keep)
      : Napi::AsyncWorker(env, name),
        deferred_(Napi::Promise::Deferred::New(env)),
        core_(std::move(core)),
        finish_(std::move(finish)),
        keep_(Napi::Persistent(keep)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      finish_(*core_);
    } catch (const Failure& failure) {
      failure_ = failure;
      SetError(failure.message);
    } catch (const std::exception& e) {
      failure_ = Failure(code::kStatus, std::string("chunkattn addon: ") + e.what());
      SetError(failure_->message);
    }
  }

  void OnOK() override {
    core_->SetBusy(false);
    deferred_.Resolve(Env().Undefined());
  }

  void OnError(const Napi::Error&) override {
    core_->SetBusy(false);
    deferred_.Reject(ToJsError(Env(), *failure_).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<ModuleCore> core_;
  std::function<void(ModuleCore&)> finish_;
  Napi::Reference<Napi::Value> keep_;
  std::optional<Failure> failure_;
};

// Queues the second half of an async decode (info[0] the module handle; the call's first
// `keep` arguments stay referenced until it settles) and marks the module busy meanwhile.
Napi::Value QueueDecode(const Napi::CallbackInfo& info, const char* name, uint32_t keep,
                        std::function<void(ModuleCore&)> finish) {
  Napi::Env env = info.Env();
  ModuleHandle* handle = Unwrap<ModuleHandle>(env, info[0], kModuleTag);
  Napi::Array values = Napi::Array::New(env, keep);
  for (uint32_t i = 0; i < keep; ++i) values.Set(i, info[i]);
  auto* worker = new DecodeWorker(env, name, handle->core, std::move(finish), values);
  handle->core->SetBusy(true);
  worker->Queue();
  return worker->Promise();
}

// decodeAsync(mod, pool, args): Promise<void>. Checks, plans and uploads q on the calling thread
// (errors throw synchronously); launches and copies out back on a worker thread.
Napi::Value DecodeAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolValues pool = ReadPoolValues(env, info[1]);
  DecodeValues values = ReadDecodeValues(env, info[2]);
  ModuleCore& core = Module(info);
  ModuleCore::DecodeRun run = core.StartDecode(ToPoolArg(env, pool), ToDecodeArgs(env, values));
  return QueueDecode(info, "chunkattn.decodeAsync", 3,
                     [run](ModuleCore& c) { c.FinishDecode(run); });
}

// workspaceBytes(mod, pool, args): number
Napi::Value WorkspaceBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolValues pool = ReadPoolValues(env, info[1]);
  DecodeValues values = ReadDecodeValues(env, info[2]);
  ModuleCore& core = Module(info);
  uint64_t bytes = core.WorkspaceBytes(ToPoolArg(env, pool), ToDecodeArgs(env, values));
  return Napi::Number::New(env, double(bytes));
}

// hasPsa(mod): whether the module decodes sparse (chunkattn/psa_abi.h; the cpu target).
Napi::Value HasPsa(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), AnyModule(info).HasPsa());
}

// hasPsaKernels(mod): whether the module exports the PSA meta and select kernels (every target).
Napi::Value HasPsaKernels(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), AnyModule(info).HasPsaKernels());
}

// psaMeta(mod, pool, meta: DeviceTensor handle, slots: Int32Array)
Napi::Value PsaMeta(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PoolValues pool = ReadPoolValues(env, info[1]);
  ModuleCore& core = Module(info);
  const TensorArg meta = ReadTensor(env, info[2]);
  core.PsaMeta(ToPoolArg(env, pool), meta.device, ReadArray(env, info[3]));
  return env.Undefined();
}

// The first half of psaDecode / psaDecodeAsync (mod, pool, args, meta, config, lists, counts,
// guardAdded?): every check, the plan and the q upload.
ModuleCore::PsaRun StartPsa(const Napi::CallbackInfo& info, bool select_only) {
  Napi::Env env = info.Env();
  PoolValues pool = ReadPoolValues(env, info[1]);
  DecodeValues values = ReadDecodeValues(env, info[2]);
  ModuleCore& core = Module(info);
  const TensorArg meta = ReadTensor(env, info[3]);
  return core.StartPsaDecode(ToPoolArg(env, pool), ToDecodeArgs(env, values), meta.device,
                             ReadArray(env, info[4]), ReadArray(env, info[5]),
                             ReadArray(env, info[6]), ReadArray(env, info[7]), select_only);
}

// psaDecode(mod, pool, args, meta, config: Float64Array, lists, counts, guardAdded?: Int32Array,
//   selectOnly?: boolean): selectOnly runs the select alone (out untouched; cuda/emu need it)
Napi::Value PsaDecode(const Napi::CallbackInfo& info) {
  const bool select_only = info[8].IsBoolean() && info[8].As<Napi::Boolean>().Value();
  AnyModule(info).FinishPsaDecode(StartPsa(info, select_only));
  return info.Env().Undefined();
}

// psaDecodeAsync(mod, pool, args, meta, config, lists, counts, guardAdded?): Promise<void>.
// psaDecode (without selectOnly) the way decodeAsync is decode: checks, plan and q upload now;
// the select, the decode and the copies back on a worker thread.
Napi::Value PsaDecodeAsync(const Napi::CallbackInfo& info) {
  ModuleCore::PsaRun run = StartPsa(info, false);
  return QueueDecode(info, "chunkattn.psaDecodeAsync", 8,
                     [run](ModuleCore& c) { c.FinishPsaDecode(run); });
}

// stats(mod): { bytesRead: {q, kv, partial, out, context}, bytesWritten: {...}, launches,
//   memcpy: {h2d: {calls, bytes}, d2h: {...}, d2d: {...}}, contextUploads,
//   scratchAllocations: {calls, bytes} (this handle's), kernels: {name: {...}} }
Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModuleCore& core = AnyModule(info);
  CaStats stats = core.Stats();
  const Json kernels = ParseJson(core.KernelStats().c_str());
  static const char* kNames[CA_TRAFFIC_COUNT] = {"q", "kv", "partial", "out", "context"};
  Napi::Object read = Napi::Object::New(env), written = Napi::Object::New(env);
  for (int i = 0; i < CA_TRAFFIC_COUNT; ++i) {
    read.Set(kNames[i], Napi::Number::New(env, double(stats.bytes_read[i])));
    written.Set(kNames[i], Napi::Number::New(env, double(stats.bytes_written[i])));
  }
  static const char* kDirections[CA_COPY_DIRECTIONS] = {"h2d", "d2h", "d2d"};
  Napi::Object memcpy = Napi::Object::New(env);
  for (int i = 0; i < CA_COPY_DIRECTIONS; ++i) {
    Napi::Object direction = Napi::Object::New(env);
    direction.Set("calls", Napi::Number::New(env, double(stats.memcpy_calls[i])));
    direction.Set("bytes", Napi::Number::New(env, double(stats.memcpy_bytes[i])));
    memcpy.Set(kDirections[i], direction);
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytesRead", read);
  result.Set("bytesWritten", written);
  result.Set("launches", Napi::Number::New(env, double(stats.launches)));
  result.Set("memcpy", memcpy);
  result.Set("contextUploads", Napi::Number::New(env, double(stats.context_uploads)));
  const ScratchAllocations allocations = core.Allocations();
  Napi::Object scratch = Napi::Object::New(env);
  scratch.Set("calls", Napi::Number::New(env, double(allocations.calls)));
  scratch.Set("bytes", Napi::Number::New(env, double(allocations.bytes)));
  result.Set("scratchAllocations", scratch);
  const Json* by_name = kernels.kind == Json::Kind::kObject ? kernels.Find("kernels") : nullptr;
  result.Set("kernels", by_name ? JsonToJs(env, *by_name) : Napi::Object::New(env));
  return result;
}

// allocTensor(mod, dtype: 0 | 1 | 2, elements): a tensor handle
Napi::Value AllocTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModuleCore& core = Module(info);
  ModuleHandle* handle = Unwrap<ModuleHandle>(env, info[0], kModuleTag);
  NumberArg dtype = ReadNumber(env, info[1]);
  NumberArg elements = ReadNumber(env, info[2]);
  if (!dtype.is_number || (dtype.value != 0 && dtype.value != 1 && dtype.value != 2))
    Fail(code::kType, "dtype must be 0 (f16), 1 (bf16) or 2 (f32), got " + dtype.what);
  uint64_t bytes = 0;
  void* ptr = core.AllocTensor(CaDType(int(dtype.value)), elements, &bytes);
  return Wrap(env, new BufferHandle{{handle->core, ptr, bytes, false, int32_t(dtype.value)}},
              kBufferTag, FinalizeBuffer);
}

DeviceBuffer* TensorHandle(napi_env env, napi_value value) {
  auto* handle = Unwrap<BufferHandle>(env, value, kBufferTag);
  return handle ? &handle->buffer : nullptr;
}

// freeTensor(mod, tensor)
Napi::Value FreeTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Module(info).FreeTensor(TensorHandle(env, info[1]), "tensor");
  return env.Undefined();
}

// uploadTensor(mod, tensor, data)
Napi::Value UploadTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Module(info).Upload(TensorHandle(env, info[1]), "tensor", ReadArray(env, info[2]));
  return env.Undefined();
}

// downloadTensor(mod, tensor): Float32Array (f32) or Uint16Array (f16/bf16 bits)
Napi::Value DownloadTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModuleCore& core = Module(info);
  DeviceBuffer* tensor = TensorHandle(env, info[1]);
  if (!tensor || tensor->dtype < 0) Fail(code::kType, "tensor is not a DeviceTensor");
  const uint64_t bytes = tensor->bytes;
  const bool f32 = tensor->dtype == CA_F32;
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, size_t(bytes));
  napi_value out;
  NAPI_THROW_IF_FAILED(env,
                       napi_create_typedarray(env, f32 ? napi_float32_array : napi_uint16_array,
                                              size_t(bytes / (f32 ? 4 : 2)), buffer, 0, &out),
                       Napi::Value());
  core.Download(tensor, "tensor", buffer.Data());
  return Napi::Value(env, out);
}

// reserve(mod, { context, workspace, q, out, kv, copies, psa? }): bytes of each scratch buffer
// (runtime/capacity.ts); allocates them all, after which no call allocates scratch.
Napi::Value Reserve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[1].IsObject()) Fail(code::kType, "reserve: bounds must be an object of byte counts");
  Napi::Object bounds = info[1].As<Napi::Object>();
  auto field = [&](const char* name) {
    const NumberArg value = ReadNumber(env, bounds.Get(name));
    if (!value.is_number || !(value.value >= 0) || value.value > 9007199254740991.0 ||
        value.value != std::floor(value.value))
      Fail(code::kRange, std::string("reserve: ") + name +
                             " must be a whole number of bytes (a safe integer >= 0), got " +
                             value.what);
    return uint64_t(value.value);
  };
  Reservation r;
  r.context = field("context");
  r.workspace = field("workspace");
  r.q = field("q");
  r.out = field("out");
  r.kv = field("kv");
  r.copies = field("copies");
  r.psa = bounds.Get("psa").IsUndefined() ? 0 : field("psa");
  Module(info).Reserve(r);  // after the reads: no JS getter runs between check and use
  return env.Undefined();
}

// --- timing events (abi.h ca_event_*) -------------------------------------------------------

DeviceEvent* EventArg(napi_env env, napi_value value) {
  auto* handle = Unwrap<EventHandle>(env, value, kEventTag);
  return handle ? &handle->event : nullptr;
}

// hasEvents(mod): whether the module exports the timing entry points (cuda and emu do)
Napi::Value HasEvents(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), AnyModule(info).HasEvents());
}

// eventClock(mod): "cuda-events" (GPU time) or "emu-host-clock" (emulator wall time)
Napi::Value EventClock(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), AnyModule(info).EventClock());
}

// eventCreate(mod): an event handle (destroyed by eventDestroy, or by its finalizer)
Napi::Value EventCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModuleCore& core = Module(info);
  ModuleHandle* handle = Unwrap<ModuleHandle>(env, info[0], kModuleTag);
  void* event = core.CreateEvent();
  return Wrap(env, new EventHandle{{handle->core, event}}, kEventTag, FinalizeEvent);
}

// eventRecord(mod, event): records the event on the module handle's stream
Napi::Value EventRecord(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Module(info).RecordEvent(EventArg(env, info[1]));
  return env.Undefined();
}

// eventSynchronize(mod, event): waits until the recorded event's work is done
Napi::Value EventSynchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Module(info).SynchronizeEvent(EventArg(env, info[1]));
  return env.Undefined();
}

// eventElapsedMs(mod, start, stop): milliseconds between two recorded events
Napi::Value EventElapsedMs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Napi::Number::New(env,
                           Module(info).ElapsedMs(EventArg(env, info[1]), EventArg(env, info[2])));
}

// eventDestroy(mod, event)
Napi::Value EventDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Module(info).DestroyEvent(EventArg(env, info[1]));
  return env.Undefined();
}

// resetStats(mod)
Napi::Value ResetStats(const Napi::CallbackInfo& info) {
  Module(info).ResetStats();
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, CA_ABI_VERSION));
  exports.Set("load", Napi::Function::New<Guarded<Load>>(env, "load"));
  exports.Set("info", Napi::Function::New<Guarded<Info>>(env, "info"));
  exports.Set("path", Napi::Function::New<Guarded<Path>>(env, "path"));
  exports.Set("allocPool", Napi::Function::New<Guarded<AllocPool>>(env, "allocPool"));
  exports.Set("freePool", Napi::Function::New<Guarded<FreePool>>(env, "freePool"));
  exports.Set("bufferState", Napi::Function::New<Guarded<BufferState>>(env, "bufferState"));
  exports.Set("writeKv", Napi::Function::New<Guarded<WriteKv>>(env, "writeKv"));
  exports.Set("copyChunk", Napi::Function::New<Guarded<CopyChunk>>(env, "copyChunk"));
  exports.Set("copyChunks", Napi::Function::New<Guarded<CopyChunks>>(env, "copyChunks"));
  exports.Set("readPool", Napi::Function::New<Guarded<ReadPool>>(env, "readPool"));
  exports.Set("allocTensor", Napi::Function::New<Guarded<AllocTensor>>(env, "allocTensor"));
  exports.Set("freeTensor", Napi::Function::New<Guarded<FreeTensor>>(env, "freeTensor"));
  exports.Set("uploadTensor", Napi::Function::New<Guarded<UploadTensor>>(env, "uploadTensor"));
  exports.Set("downloadTensor",
              Napi::Function::New<Guarded<DownloadTensor>>(env, "downloadTensor"));
  exports.Set("shareMemory", Napi::Function::New<Guarded<ShareMemory>>(env, "shareMemory"));
  exports.Set("decode", Napi::Function::New<Guarded<Decode>>(env, "decode"));
  exports.Set("decodeAsync", Napi::Function::New<Guarded<DecodeAsync>>(env, "decodeAsync"));
  exports.Set("workspaceBytes",
              Napi::Function::New<Guarded<WorkspaceBytes>>(env, "workspaceBytes"));
  exports.Set("hasPsa", Napi::Function::New<Guarded<HasPsa>>(env, "hasPsa"));
  exports.Set("psaMeta", Napi::Function::New<Guarded<PsaMeta>>(env, "psaMeta"));
  exports.Set("psaDecode", Napi::Function::New<Guarded<PsaDecode>>(env, "psaDecode"));
  exports.Set("psaDecodeAsync",
              Napi::Function::New<Guarded<PsaDecodeAsync>>(env, "psaDecodeAsync"));
  exports.Set("hasPsaKernels", Napi::Function::New<Guarded<HasPsaKernels>>(env, "hasPsaKernels"));
  exports.Set("stats", Napi::Function::New<Guarded<Stats>>(env, "stats"));
  exports.Set("resetStats", Napi::Function::New<Guarded<ResetStats>>(env, "resetStats"));
  exports.Set("reserve", Napi::Function::New<Guarded<Reserve>>(env, "reserve"));
  exports.Set("hasEvents", Napi::Function::New<Guarded<HasEvents>>(env, "hasEvents"));
  exports.Set("eventClock", Napi::Function::New<Guarded<EventClock>>(env, "eventClock"));
  exports.Set("eventCreate", Napi::Function::New<Guarded<EventCreate>>(env, "eventCreate"));
  exports.Set("eventRecord", Napi::Function::New<Guarded<EventRecord>>(env, "eventRecord"));
  exports.Set("eventSynchronize",
              Napi::Function::New<Guarded<EventSynchronize>>(env, "eventSynchronize"));
  exports.Set("eventElapsedMs",
              Napi::Function::New<Guarded<EventElapsedMs>>(env, "eventElapsedMs"));
  exports.Set("eventDestroy", Napi::Function::New<Guarded<EventDestroy>>(env, "eventDestroy"));
  return exports;
}

}  // namespace
}  // namespace chunkattn

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  return chunkattn::Init(env, exports);
}

NODE_API_MODULE(chunkattn_native, InitAddon)
