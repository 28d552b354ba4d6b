// chunkattn/module_status.h — the thread-local "last error" behind ca_last_error(), shared by
// every target's module code.
#ifndef CHUNKATTN_MODULE_STATUS_H_
#define CHUNKATTN_MODULE_STATUS_H_

#include <string>

#include "chunkattn/abi.h"

namespace ca {

inline std::string& last_error() {
  static thread_local std::string message;
  return message;
}

// Records `message` for ca_last_error() and returns `status`, so callers write
// `return fail(CA_ERR_INVALID, "...")`.
inline int fail(int status, std::string message) {
  last_error() = std::move(message);
  return status;
}

inline int ok() {
  last_error().clear();
  return CA_OK;
}

}  // namespace ca

#endif  // CHUNKATTN_MODULE_STATUS_H_
