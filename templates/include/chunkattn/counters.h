// chunkattn/counters.h — what a module issued, counted on the host where it is issued: kernel
// launches by kernel name, memcpy calls and bytes by direction, context uploads. Behind
// ca_get_stats / ca_kernel_stats / ca_reset_stats on every target, so the emu and cpu targets
// count exactly what the cuda target issues for the same calls.
#ifndef CHUNKATTN_COUNTERS_H_
#define CHUNKATTN_COUNTERS_H_

#include <stdint.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "chunkattn/abi.h"

namespace ca::counters {

struct State {
  struct Kernel {
    uint64_t launches = 0;
    uint64_t blocks = 0;  // CTAs (cuda/emu) or tasks (cpu): the work items launched
  };
  std::mutex mu;  // guards kernels
  std::map<std::string, Kernel> kernels;
  std::atomic<uint64_t> launches{0};
  std::atomic<uint64_t> memcpy_calls[CA_COPY_DIRECTIONS] = {};
  std::atomic<uint64_t> memcpy_bytes[CA_COPY_DIRECTIONS] = {};
  std::atomic<uint64_t> context_uploads{0};
};

inline State& state() {
  static State s;
  return s;
}

// One launch of the kernel `name` with `blocks` work items.
inline void launch(const char* name, uint64_t blocks) {
  State& s = state();
  s.launches.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(s.mu);
  State::Kernel& kernel = s.kernels[name];
  ++kernel.launches;
  kernel.blocks += blocks;
}

// One ca_memcpy of `kind` (CaCopyKind); CA_COPY_CONTEXT counts as H2D and as a context upload.
inline void copy(int32_t kind, uint64_t bytes) {
  State& s = state();
  if (kind == CA_COPY_CONTEXT) {
    s.context_uploads.fetch_add(1, std::memory_order_relaxed);
    kind = CA_COPY_H2D;
  }
  if (kind < 0 || kind >= CA_COPY_DIRECTIONS) return;
  s.memcpy_calls[kind].fetch_add(1, std::memory_order_relaxed);
  s.memcpy_bytes[kind].fetch_add(bytes, std::memory_order_relaxed);
}

// Fills the launch and copy fields of `out` (the traffic fields are the caller's).
inline void snapshot(CaStats* out) {
  State& s = state();
  out->launches = s.launches.load(std::memory_order_relaxed);
  for (int k = 0; k < CA_COPY_DIRECTIONS; ++k) {
    out->memcpy_calls[k] = s.memcpy_calls[k].load(std::memory_order_relaxed);
    out->memcpy_bytes[k] = s.memcpy_bytes[k].load(std::memory_order_relaxed);
  }
  out->context_uploads = s.context_uploads.load(std::memory_order_relaxed);
}

// {"kernels":{"<name>":{"launches":N,"blocks":B},...}}; the text lives until the calling thread's
// next call.
inline const char* kernels_json() {
  thread_local std::string text;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  text = "{\"kernels\":{";
  bool first = true;
  for (const auto& [name, kernel] : s.kernels) {
    text += (first ? "\"" : ",\"") + name + "\":{\"launches\":" + std::to_string(kernel.launches) +
            ",\"blocks\":" + std::to_string(kernel.blocks) + "}";
    first = false;
  }
  text += "}}";
  return text.c_str();
}

inline void reset() {
  State& s = state();
  s.launches.store(0, std::memory_order_relaxed);
  for (int k = 0; k < CA_COPY_DIRECTIONS; ++k) {
    s.memcpy_calls[k].store(0, std::memory_order_relaxed);
    s.memcpy_bytes[k].store(0, std::memory_order_relaxed);
  }
  s.context_uploads.store(0, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(s.mu);
  s.kernels.clear();
}

}  // namespace ca::counters

#endif  // CHUNKATTN_COUNTERS_H_
