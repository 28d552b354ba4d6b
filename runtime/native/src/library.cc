#include "library.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "failure.h"

namespace chunkattn {

const char* TargetName(Target target) {
  switch (target) {
    case Target::kCpu:
      return "cpu";
    case Target::kEmu:
      return "emu";
    case Target::kCuda:
      return "cuda";
  }
  return "?";
}

const char* DTypeName(CaDType dtype) {
  switch (dtype) {
    case CA_F16:
      return "f16";
    case CA_BF16:
      return "bf16";
    case CA_F32:
      return "f32";
  }
  return "?";
}

namespace {

[[noreturn]] void InfoError(const std::string& what) { Fail(code::kInfo, "ca_info(): " + what); }

const Json& Member(const Json& object, const char* name) {
  const Json* value = object.Find(name);
  if (!value) InfoError(std::string("missing field \"") + name + "\"");
  return *value;
}

int32_t IntMember(const Json& object, const char* name, int32_t lo, int32_t hi) {
  const Json& value = Member(object, name);
  if (value.kind != Json::Kind::kNumber || !std::isfinite(value.number) ||
      value.number != std::floor(value.number) || value.number < lo || value.number > hi)
    InfoError(std::string("\"") + name + "\" must be an integer in [" + std::to_string(lo) + ", " +
              std::to_string(hi) + "]");
  return int32_t(value.number);
}

std::string StringMember(const Json& object, const char* name) {
  const Json& value = Member(object, name);
  if (value.kind != Json::Kind::kString)
    InfoError(std::string("\"") + name + "\" must be a string");
  return value.string;
}

CaDType DTypeMember(const Json& object, const char* name) {
  const Json& value = Member(object, name);
  if (value.kind == Json::Kind::kString) {
    if (value.string == "f16") return CA_F16;
    if (value.string == "bf16") return CA_BF16;
    if (value.string == "f32") return CA_F32;
  }
  InfoError(std::string("\"dtype.") + name + "\" must be one of \"f16\", \"bf16\", \"f32\"");
}

template <class F>
void Resolve(void* handle, const char* name, F*& slot, std::vector<std::string>& missing) {
  dlerror();
  void* symbol = dlsym(handle, name);
  if (!symbol) {
    missing.push_back(name);
    return;
  }
  slot = reinterpret_cast<F*>(symbol);
}

}  // namespace

ModuleInfo ParseModuleInfo(const char* text) {
  if (!text) InfoError("returned NULL");
  ModuleInfo info;
  info.json = ParseJson(text);
  const Json& doc = info.json;
  if (doc.kind != Json::Kind::kObject) InfoError("must be a JSON object");

  const Json& abi = Member(doc, "abi");
  if (abi.kind != Json::Kind::kNumber || abi.number != double(CA_ABI_VERSION))
    Fail(code::kAbi,
         "ca_info() declares abi " +
             (abi.kind == Json::Kind::kNumber ? std::to_string(abi.number) : "(not a number)") +
             ", this addon speaks abi " + std::to_string(CA_ABI_VERSION));
  info.name = StringMember(doc, "name");
  if (const Json* key = doc.Find("key"); key && key->kind == Json::Kind::kString) {
    info.key = key->string;
  } else if (const Json* hash = doc.Find("specHash"); hash && hash->kind == Json::Kind::kString) {
    info.key = hash->string;
  }
  std::string target = StringMember(doc, "target");
  if (target == "cpu")
    info.target = Target::kCpu;
  else if (target == "emu")
    info.target = Target::kEmu;
  else if (target == "cuda")
    info.target = Target::kCuda;
  else
    InfoError("\"target\" must be \"cpu\", \"emu\" or \"cuda\", got \"" + target + "\"");
  if (const Json* archs = doc.Find("archs")) {
    if (archs->kind != Json::Kind::kArray) InfoError("\"archs\" must be an array of strings");
    for (const Json& arch : archs->items) {
      if (arch.kind != Json::Kind::kString) InfoError("\"archs\" must be an array of strings");
      info.archs.push_back(arch.string);
    }
  }
  info.q_heads = IntMember(doc, "qHeads", 1, kMaxHeads);
  info.kv_heads = IntMember(doc, "kvHeads", 1, kMaxHeads);
  if (info.q_heads % info.kv_heads != 0)
    InfoError("\"kvHeads\" (" + std::to_string(info.kv_heads) + ") must divide \"qHeads\" (" +
              std::to_string(info.q_heads) + ")");
  info.head_dim = IntMember(doc, "headDim", 1, kMaxHeadDim);
  info.chunk_size = IntMember(doc, "chunkSize", 1, kMaxChunkSize);
  const Json& dtype = Member(doc, "dtype");
  if (dtype.kind != Json::Kind::kObject) InfoError("\"dtype\" must be an object {q, kv, out}");
  info.dtype_q = DTypeMember(dtype, "q");
  info.dtype_kv = DTypeMember(dtype, "kv");
  info.dtype_out = DTypeMember(dtype, "out");
  info.num_params = IntMember(doc, "numParams", 0, kMaxParams);
  const Json& phase1 = Member(doc, "phase1");
  if (phase1.kind != Json::Kind::kBool) InfoError("\"phase1\" must be a boolean");
  info.phase1 = phase1.boolean;
  return info;
}

std::shared_ptr<Library> Library::Open(const std::string& path_in) {
  if (path_in.empty()) Fail(code::kLoad, "module path is empty");
  if (path_in.find('\0') != std::string::npos) Fail(code::kLoad, "module path contains a NUL byte");
  // A bare file name would make dlopen search the system library path; treat it as relative.
  std::string path = path_in.find('/') == std::string::npos ? "./" + path_in : path_in;

  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    Fail(code::kLoad, "cannot load module " + path_in + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    Fail(code::kLoad, "cannot load module " + path_in + ": not a regular file");

  dlerror();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    Fail(code::kLoad, "cannot load module " + path_in + ": " + (why ? why : "dlopen failed"));
  }

  std::shared_ptr<Library> lib(new Library());
  lib->handle_ = handle;
  lib->path_ = path_in;
  try {
    Api& api = lib->api_;
    std::vector<std::string> missing;
    Resolve(handle, "ca_abi_version", api.abi_version, missing);
    if (!api.abi_version)
      Fail(code::kSymbol,
           path_in + " is not a chunkattn module: it does not export ca_abi_version");
    uint32_t version = api.abi_version();
    if (version != CA_ABI_VERSION)
      Fail(code::kAbi, path_in + " speaks chunkattn ABI " + std::to_string(version) +
                           ", this addon speaks ABI " + std::to_string(CA_ABI_VERSION) +
                           ": rebuild the module with the current templates");
    Resolve(handle, "ca_info", api.info, missing);
    Resolve(handle, "ca_last_error", api.last_error, missing);
    Resolve(handle, "ca_workspace_bytes", api.workspace_bytes, missing);
    Resolve(handle, "ca_decode", api.decode, missing);
    Resolve(handle, "ca_write_kv", api.write_kv, missing);
    Resolve(handle, "ca_copy_chunks", api.copy_chunks, missing);
    Resolve(handle, "ca_malloc", api.malloc_, missing);
    Resolve(handle, "ca_free", api.free_, missing);
    Resolve(handle, "ca_memcpy", api.memcpy_, missing);
    Resolve(handle, "ca_memset", api.memset_, missing);
    Resolve(handle, "ca_stream_create", api.stream_create, missing);
    Resolve(handle, "ca_stream_destroy", api.stream_destroy, missing);
    Resolve(handle, "ca_synchronize", api.synchronize, missing);
    Resolve(handle, "ca_get_stats", api.get_stats, missing);
    Resolve(handle, "ca_kernel_stats", api.kernel_stats, missing);
    Resolve(handle, "ca_reset_stats", api.reset_stats, missing);
    api.psa_meta = reinterpret_cast<decltype(api.psa_meta)>(dlsym(handle, "ca_psa_meta"));
    api.psa_decode = reinterpret_cast<decltype(api.psa_decode)>(dlsym(handle, "ca_psa_decode"));
    // Timing entry points: all six or none (a module with some of them is malformed).
    {
      std::vector<std::string> events;
      Resolve(handle, "ca_event_clock", api.event_clock, events);
      Resolve(handle, "ca_event_create", api.event_create, events);
      Resolve(handle, "ca_event_destroy", api.event_destroy, events);
      Resolve(handle, "ca_event_record", api.event_record, events);
      Resolve(handle, "ca_event_synchronize", api.event_synchronize, events);
      Resolve(handle, "ca_event_elapsed_ms", api.event_elapsed_ms, events);
      if (!events.empty() && events.size() != 6)
        missing.insert(missing.end(), events.begin(), events.end());
    }
    if (!missing.empty()) {
      std::string names;
      for (const auto& name : missing) names += (names.empty() ? "" : ", ") + name;
      Fail(code::kSymbol, path_in + " is missing chunkattn ABI symbol(s): " + names);
    }
    try {
      lib->info_ = ParseModuleInfo(api.info());
    } catch (const Failure& failure) {
      throw Failure(failure.code, path_in + ": " + failure.message);
    }
  } catch (...) {
    dlclose(handle);
    lib->handle_ = nullptr;
    throw;
  }
  return lib;
}

std::string Library::LastError() const {
  const char* text = api_.last_error ? api_.last_error() : nullptr;
  return text ? std::string(text) : std::string();
}

void Library::Check(int status, const char* call) const {
  if (status == CA_OK) return;
  // The module's status, as the error code JS sees and the enumerator's name.
  struct Known {
    int status;
    const char* error_code;
    const char* name;
  };
  static constexpr Known kKnown[] = {
      {CA_ERR_INVALID, code::kInvalid, "CA_ERR_INVALID"},
      {CA_ERR_UNSUPPORTED, code::kUnsupported, "CA_ERR_UNSUPPORTED"},
      {CA_ERR_DEVICE, code::kDevice, "CA_ERR_DEVICE"},
      {CA_ERR_KERNEL, code::kKernel, "CA_ERR_KERNEL"},
      {CA_ERR_NO_MEMORY, code::kNoMemory, "CA_ERR_NO_MEMORY"},
  };
  const char* error_code = code::kStatus;
  const char* status_name = "unknown status";
  for (const Known& k : kKnown)
    if (k.status == status) error_code = k.error_code, status_name = k.name;
  std::string detail = LastError();
  std::string message = std::string(call) + " failed with " + status_name + " (" +
                        std::to_string(status) + ")" + (detail.empty() ? "" : ": " + detail);
  throw Failure(error_code, message, status, detail);
}

}  // namespace chunkattn
