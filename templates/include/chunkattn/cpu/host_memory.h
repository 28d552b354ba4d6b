// chunkattn/cpu/host_memory.h — host allocations for the cpu target's ca_malloc / ca_free.
//
// K/V pools are large and read in 16 KiB chunks scattered over the pool, so 4 KiB pages cost a
// TLB miss every 4 KiB. host_alloc maps large blocks 2 MiB-aligned and asks for transparent huge
// pages (madvise(MADV_HUGEPAGE); a hint, harmless where THP is off). Small blocks use
// aligned_alloc. Free with host_free(ptr, bytes) — the same byte count that was allocated.
#ifndef CHUNKATTN_CPU_HOST_MEMORY_H_
#define CHUNKATTN_CPU_HOST_MEMORY_H_

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ca {
namespace cpu {

inline constexpr size_t kHugePageBytes = size_t(2) << 20;

inline void* host_alloc(size_t bytes) {
  if (bytes == 0) bytes = 1;
#if defined(__linux__)
  if (bytes >= kHugePageBytes) {
    const size_t len = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    // Over-map by one huge page, then trim so the block starts 2 MiB-aligned.
    void* raw = mmap(nullptr, len + kHugePageBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (begin + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    if (aligned > begin) munmap(raw, aligned - begin);
    const uintptr_t end = begin + len + kHugePageBytes, aligned_end = aligned + len;
    if (end > aligned_end) munmap(reinterpret_cast<void*>(aligned_end), end - aligned_end);
#if defined(MADV_HUGEPAGE)
    madvise(reinterpret_cast<void*>(aligned), len, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(aligned);
  }
#endif
  return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

inline void host_free(void* ptr, size_t bytes) {
  if (!ptr) return;
#if defined(__linux__)
  if (bytes >= kHugePageBytes) {
    munmap(ptr, (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes);
    return;
  }
#endif
  (void)bytes;
  free(ptr);
}

}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_HOST_MEMORY_H_
