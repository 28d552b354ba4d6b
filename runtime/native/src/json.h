// json.h — a small strict JSON reader for ca_info().
//
// The module's info string decides every bound the addon checks (heads, head dim, chunk size,
// dtypes), so it is parsed here in C++, never through the JS global `JSON.parse` (which user code
// can replace). Bad input throws Failure(ERR_CA_INFO); nesting is limited to 64 levels.
#ifndef CHUNKATTN_NATIVE_JSON_H_
#define CHUNKATTN_NATIVE_JSON_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace chunkattn {

struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> items;                            // kArray
  std::vector<std::pair<std::string, Json>> members;  // kObject, in source order

  // The member named `key` of an object (the last one if repeated), or nullptr.
  const Json* Find(std::string_view key) const;
};

Json ParseJson(std::string_view text);

}  // namespace chunkattn

#endif  // CHUNKATTN_NATIVE_JSON_H_
