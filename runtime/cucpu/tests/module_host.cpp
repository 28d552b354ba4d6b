// Loads two emu modules (test_module.cu built twice) with dlopen, as the native addon does, and
// runs good and failing launches in both, interleaved. Plain C++: no shim here.
// Usage: module_host <module1.so> <module2.so>. Output: RESULT lines (check.h).
#include <dlfcn.h>

#include <cstdio>
#include <string>

#include "check.h"

struct Module {
  int (*good)(unsigned long long*);
  int (*bad)(char*, int);
};

static bool load(const char* path, Module* m) {
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    std::printf("dlopen %s: %s\n", path, dlerror());
    return false;
  }
  m->good = reinterpret_cast<int (*)(unsigned long long*)>(dlsym(h, "module_run_good"));
  m->bad = reinterpret_cast<int (*)(char*, int)>(dlsym(h, "module_run_bad"));
  return m->good && m->bad;
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  Module m[2];
  const bool loaded = load(argv[1], &m[0]) && load(argv[2], &m[1]);
  Result("module/load_two").print(loaded);
  if (!loaded) return 1;
  for (int round = 0; round < 2; ++round)
    for (int i = 0; i < 2; ++i) {
      unsigned long long kv = 0;
      const int rc = m[i].good(&kv);
      Result("module/good/" + std::to_string(i + 1) + "/" + std::to_string(round))
          .num("rc", rc)
          .num("kv_bytes", double(kv))
          .print(rc == 0 && kv == 64 * 4);
      char json[2048] = {};
      const int caught = m[i].bad(json, sizeof json);
      std::printf("ERROR %s\n", json);
      Result("module/bad/" + std::to_string(i + 1) + "/" + std::to_string(round))
          .flag("caught", caught == 1)
          .print(caught == 1);
    }
  std::printf("%d check(s) failed\n", g_failed_checks);
  return g_failed_checks != 0;
}
