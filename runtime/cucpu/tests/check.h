// check.h — structured output of the shim's C++ test programs, one line per check:
//   RESULT {"name":"decode/split_combine/B5_T257","ok":true,"err":1.2e-07,...}
// test/cucpu-*.test.ts run the programs and parse these lines. A program exits 1 when a check
// failed, 0 otherwise.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

#include "../cucpu_json.h"

inline int g_failed_checks = 0;

class Result {
 public:
  explicit Result(const std::string& name) { json_ = "{\"name\":" + quote(name); }
  Result& num(const char* key, double v) {
    char buf[64];
    if (std::isfinite(v))
      snprintf(buf, sizeof buf, "%.9g", v);
    else
      snprintf(buf, sizeof buf, "null");
    json_ += std::string(",") + quote(key) + ":" + buf;
    return *this;
  }
  Result& str(const char* key, const std::string& v) {
    json_ += std::string(",") + quote(key) + ":" + quote(v);
    return *this;
  }
  Result& flag(const char* key, bool v) {
    json_ += std::string(",") + quote(key) + ":" + (v ? "true" : "false");
    return *this;
  }
  // A cucpu::Error, as {"kind", "kernel", "file", "line", "column", ...} or null.
  template <class E>
  Result& error(const E& e) {
    json_ += std::string(",\"error\":") + (e.ok() ? std::string("null") : e.to_json());
    return *this;
  }
  void print(bool ok) {
    if (!ok) ++g_failed_checks;
    std::printf("RESULT %s,\"ok\":%s}\n", json_.c_str(), ok ? "true" : "false");
    std::fflush(stdout);
  }

  static std::string quote(const std::string& v) { return cucpu::json_quote(v); }

 private:
  std::string json_;
};
