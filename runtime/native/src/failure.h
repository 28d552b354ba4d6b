// failure.h — the one exception type of the addon's pure C++ layers.
//
// Validation and library code throw `Failure`; the N-API layer (addon.cc) turns it into a JS
// Error whose `code` is one of the stable strings below. runtime/native-module.ts maps each code
// to a typed error of runtime/errors.ts:
//
//   ERR_CA_SHAPE, ERR_CA_DTYPE                       → ShapeError    (a length, dtype or layout)
//   ERR_CA_TYPE, ERR_CA_RANGE, ERR_CA_CONTEXT,
//   ERR_CA_FREED, ERR_CA_FOREIGN, ERR_CA_UNSUPPORTED,
//   ERR_CA_INVALID                                   → ArgumentError (a value, range or handle)
//   ERR_CA_LOAD, ERR_CA_ABI, ERR_CA_SYMBOL, ERR_CA_INFO → ModuleError (the library itself)
//   ERR_CA_KERNEL, ERR_CA_DEVICE, ERR_CA_NO_MEMORY,
//   ERR_CA_STATUS                                    → KernelError   (the module failed at run
//   time)
//   ERR_CA_BUSY                                      → BusyError     (a decodeAsync is in flight)
//   ERR_CA_CAPACITY                                  → ReservedCapacityError (a call needs more
//                                                      scratch than NativeModule.reserve set)
#ifndef CHUNKATTN_NATIVE_FAILURE_H_
#define CHUNKATTN_NATIVE_FAILURE_H_

#include <exception>
#include <string>
#include <utility>

namespace chunkattn {

namespace code {
inline constexpr const char* kShape = "ERR_CA_SHAPE";
inline constexpr const char* kDType = "ERR_CA_DTYPE";
inline constexpr const char* kType = "ERR_CA_TYPE";
inline constexpr const char* kRange = "ERR_CA_RANGE";
inline constexpr const char* kContext = "ERR_CA_CONTEXT";
inline constexpr const char* kFreed = "ERR_CA_FREED";
inline constexpr const char* kForeign = "ERR_CA_FOREIGN";
inline constexpr const char* kUnsupported = "ERR_CA_UNSUPPORTED";
inline constexpr const char* kInvalid = "ERR_CA_INVALID";
inline constexpr const char* kLoad = "ERR_CA_LOAD";
inline constexpr const char* kAbi = "ERR_CA_ABI";
inline constexpr const char* kSymbol = "ERR_CA_SYMBOL";
inline constexpr const char* kInfo = "ERR_CA_INFO";
inline constexpr const char* kKernel = "ERR_CA_KERNEL";
inline constexpr const char* kDevice = "ERR_CA_DEVICE";
inline constexpr const char* kNoMemory = "ERR_CA_NO_MEMORY";
inline constexpr const char* kStatus = "ERR_CA_STATUS";
inline constexpr const char* kBusy = "ERR_CA_BUSY";
inline constexpr const char* kCapacity = "ERR_CA_CAPACITY";
}  // namespace code

struct Failure : std::exception {
  Failure(const char* code, std::string message, int status = 0, std::string module_message = {})
      : code(code),
        message(std::move(message)),
        status(status),
        module_message(std::move(module_message)) {}
  const char* what() const noexcept override { return message.c_str(); }

  const char* code;            // one of code::k*
  std::string message;         // says what was wrong and what is allowed
  int status;                  // the module's CaStatus when the module reported the failure
  std::string module_message;  // ca_last_error() text when the module reported the failure
};

[[noreturn]] inline void Fail(const char* code, std::string message) {
  throw Failure(code, std::move(message));
}

}  // namespace chunkattn

#endif  // CHUNKATTN_NATIVE_FAILURE_H_
