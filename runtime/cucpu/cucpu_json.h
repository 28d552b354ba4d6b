// cucpu_json.h — JSON string quoting for the shim's error records and its test programs' output.
// Standalone (no other cucpu header), so a host program can include it alone.
#pragma once

#include <cstdio>
#include <string>

namespace cucpu {

// `v` as a JSON string literal: quotes, backslashes and control characters escaped.
inline std::string json_quote(const std::string& v) {
  std::string o = "\"";
  for (unsigned char c : v) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += char(c);
    } else if (c < 0x20) {
      char buf[8];
      snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += char(c);
    }
  }
  return o + "\"";
}

}  // namespace cucpu
