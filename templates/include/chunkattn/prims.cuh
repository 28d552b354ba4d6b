// chunkattn/prims.cuh — the only place with inline PTX. One wrapper per instruction, two back ends:
//   nvcc, device pass (__CUDA_ARCH__):  inline PTX (sm_80 or newer)
//   g++ with runtime/cucpu (emu target): the shim's emulation, plus
//                                         traffic counting and address checks
// Kernels never contain `asm`, and never read Q, K, V or partials from global memory except through
// ldg / cp_async below, so the emu target can count the bytes every launch moves (the traffic
// proxy the benchmarks report; CaStats in abi.h).
//
//   ldg<kCat>(p)                  global load of a trivially copyable T of 1..16 bytes
//   stg<kCat>(p, v)               global store
//   lds(p), sts(p, v)             shared-memory load / store of a T of 1..16 bytes
//   cp_async<kCat, kBytes>(s, g)  global -> shared async copy of 4, 8 or 16 bytes
//   cp_async_zfill<kCat, kBytes>(s, g, src_bytes)   copies src_bytes, zero-fills the rest
//   cp_async_commit(), cp_async_wait<N>(), cp_async_wait_all()
//   ldmatrix_x{1,2,4}[_trans](r, row)               shared rows -> mma fragments
//   mma_m16n8k16_{f16,bf16}(d, a, b, c)             D = A B + C, f32 accumulate
//   traffic_snapshot(&stats), traffic_reset(), traffic_count_launch()   (host)
//
// On the emu target every access through these wrappers (and ldmatrix) is also costed as part of
// its warp-wide instruction: shared-memory wavefronts and global 32-byte sectors, per kernel
// (runtime/cucpu/cucpu_mem.h; kernel_stats_json below). Kernels therefore touch shared memory
// only through lds / sts / cp_async / ldmatrix in their loops, so bank conflicts are counted.
//
// Pointers are generic; shared addresses are converted inside. On the emu target every device
// wrapper takes a trailing std::source_location defaulted to the call site (CA_LOC_PARAM), so a
// misaligned address or a misused collective is reported at the kernel's file:line:col; a helper
// that wraps a prim can forward its own caller's site with CA_LOC_PARAM / CA_LOC_ARG.
//
// On the emu target this header also defines the dynamic shared-memory arena `smem` in the global
// namespace and in namespace ca, so kernels there declare it the CUDA way:
//   extern __shared__ __align__(128) unsigned char smem[];
// (kernels in another namespace add CUCPU_DYNAMIC_SHARED(unsigned char, smem) to it).
#ifndef CHUNKATTN_PRIMS_CUH_
#define CHUNKATTN_PRIMS_CUH_

#include <stdint.h>
#include <string.h>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "chunkattn/abi.h"

#if defined(__CUDACC__)
#define CA_DEVICE __device__ __forceinline__
#define CA_LOC_PARAM
#define CA_LOC_ARG
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error \
    "chunkattn kernels use sm_80 instructions (mma.sync m16n8k16, ldmatrix, cp.async): build for sm_80 or newer"
#endif
#elif defined(CUCPU_VERSION)
#include <atomic>
#include <source_location>
#define CA_DEVICE inline
#define CA_LOC_PARAM , std::source_location ca_loc = std::source_location::current()
#define CA_LOC_ARG , ca_loc
#else
#error \
    "chunkattn/prims.cuh is compiled by nvcc, or by g++ with -include runtime/cucpu/cucpu.h (emu target)"
#endif

#if !defined(__CUDACC__)
// The dynamic shared-memory arena of kernels in the global namespace and in namespace ca.
CUCPU_DYNAMIC_SHARED(unsigned char, smem)
namespace ca {
CUCPU_DYNAMIC_SHARED(unsigned char, smem)
}  // namespace ca
// In a kernel template, g++ calls the TLS-init hook of an `extern thread_local` (`_ZTH<name>`)
// without checking that it exists; in a shared library the weak reference is null and the
// kernel crashes. The arenas need no initialization: give them no-op hooks. (Other dynamic
// shared arrays: build with -fno-extern-tls-init, which drops the hook calls altogether.)
extern "C" __attribute__((weak, visibility("hidden"))) void ca_smem_tls_init_global() __asm__(
    "_ZTH4smem");
extern "C" __attribute__((weak, visibility("hidden"))) void ca_smem_tls_init_global() {}
extern "C" __attribute__((weak, visibility("hidden"))) void ca_smem_tls_init_ca() __asm__(
    "_ZTHN2ca4smemE");
extern "C" __attribute__((weak, visibility("hidden"))) void ca_smem_tls_init_ca() {}
#endif

namespace ca {

// ---------------------------------------------------------------------------------------------
// Traffic counters. Emu: the shim's per-worker counters (slot k: bytes read of category k; slot
// CA_TRAFFIC_COUNT + k: bytes written), so counting costs a plain add, and a process-wide launch
// count. CUDA: absent, read as zeros.
namespace detail {
#if !defined(__CUDACC__)
static_assert(2 * CA_TRAFFIC_COUNT <= cucpu::kCounters,
              "traffic categories exceed the shim's counters");
inline std::atomic<uint64_t> launches{0};

static_assert(CA_TRAFFIC_COUNT <= cucpu::kMemCategories,
              "traffic categories exceed the shim's sector counters");

template <CaTraffic kCat>
inline void count_read(uint64_t bytes) {
  static_assert(kCat >= 0 && kCat < CA_TRAFFIC_COUNT, "unknown traffic category");
  cucpu::counter_add(kCat, bytes);
}
template <CaTraffic kCat>
inline void count_written(uint64_t bytes) {
  static_assert(kCat >= 0 && kCat < CA_TRAFFIC_COUNT, "unknown traffic category");
  cucpu::counter_add(CA_TRAFFIC_COUNT + kCat, bytes);
}

// A GPU faults on a global access that is not aligned to its size (up to 16 bytes).
inline void check_aligned(const void* p, size_t alignment, const char* what, size_t bytes,
                          const std::source_location& loc) {
  if ((reinterpret_cast<uintptr_t>(p) & (alignment - 1)) == 0) return;
  cucpu::Thread& t = cucpu::running_thread(what);
  cucpu::fail(t, cucpu::ErrorKind::kMisaligned, loc,
              std::string(what) + " of " + std::to_string(bytes) + " bytes at " +
                  cucpu::format_location(loc) + ": address " +
                  std::to_string(reinterpret_cast<uintptr_t>(p)) + " is not " +
                  std::to_string(alignment) + "-byte aligned");
}
#endif

#if defined(__CUDA_ARCH__)
// Whether an __ldg overload returns exactly T for const T*.
template <class T, class = void>
struct HasLdg : std::false_type {};
template <class T>
struct HasLdg<T, std::void_t<decltype(__ldg(static_cast<const T*>(nullptr)))>>
    : std::is_same<decltype(__ldg(static_cast<const T*>(nullptr))), T> {};

CA_DEVICE unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Global loads and stores.

// Reads a T from global memory, counted as kCat. T: a plain value of 1..16 bytes, `p` aligned
// to alignof(T). Device: __ldg (read-only path) where an overload exists, else a plain load.
template <CaTraffic kCat, class T>
CA_DEVICE T ldg(const T* p CA_LOC_PARAM) {
  // (CUDA's __half2 / __nv_bfloat162 are not trivially copyable for nvcc: only destructibility
  // is checked.)
  static_assert(std::is_trivially_destructible<T>::value && sizeof(T) >= 1 && sizeof(T) <= 16,
                "ldg reads plain values of 1 to 16 bytes");
#if defined(__CUDA_ARCH__)
  if constexpr (detail::HasLdg<T>::value)
    return __ldg(p);
  else
    return *p;
#elif defined(__CUDACC__)
  return *p;  // host pass of nvcc: never called
#else
  detail::check_aligned(p, alignof(T), "ldg", sizeof(T), ca_loc);
  detail::count_read<kCat>(sizeof(T));
  cucpu::mem_access(cucpu::MemSpace::kGlobal, kCat, p, sizeof(T), ca_loc);
  return *p;
#endif
}

// Writes v to global memory, counted as kCat.
template <CaTraffic kCat, class T>
CA_DEVICE void stg(T* p, const T& v CA_LOC_PARAM) {
  static_assert(std::is_trivially_destructible<T>::value && sizeof(T) >= 1 && sizeof(T) <= 16,
                "stg writes plain values of 1 to 16 bytes");
#if defined(__CUDACC__)
  *p = v;
#else
  detail::check_aligned(p, alignof(T), "stg", sizeof(T), ca_loc);
  detail::count_written<kCat>(sizeof(T));
  cucpu::mem_access(cucpu::MemSpace::kGlobal, kCat, p, sizeof(T), ca_loc);
  *p = v;
#endif
}

// ---------------------------------------------------------------------------------------------
// Shared-memory loads and stores (plain accesses on the GPU; costed in wavefronts on emu).

// Reads a T (1..16 bytes, aligned to alignof(T)) from shared memory.
template <class T>
CA_DEVICE T lds(const T* p CA_LOC_PARAM) {
  static_assert(std::is_trivially_destructible<T>::value && sizeof(T) >= 1 && sizeof(T) <= 16,
                "lds reads plain values of 1 to 16 bytes");
#if !defined(__CUDACC__)
  detail::check_aligned(p, alignof(T), "lds", sizeof(T), ca_loc);
  cucpu::mem_access(cucpu::MemSpace::kShared, 0, p, sizeof(T), ca_loc);
#endif
  return *p;
}

// Writes a T (1..16 bytes, aligned to alignof(T)) to shared memory.
template <class T>
CA_DEVICE void sts(T* p, const T& v CA_LOC_PARAM) {
  static_assert(std::is_trivially_destructible<T>::value && sizeof(T) >= 1 && sizeof(T) <= 16,
                "sts writes plain values of 1 to 16 bytes");
#if !defined(__CUDACC__)
  detail::check_aligned(p, alignof(T), "sts", sizeof(T), ca_loc);
  cucpu::mem_access(cucpu::MemSpace::kShared, 0, p, sizeof(T), ca_loc);
#endif
  *p = v;
}

// ---------------------------------------------------------------------------------------------
// cp.async: global -> shared without registers. Both addresses aligned to kBytes. Copies land
// once a cp_async_wait covering their commit group has run (then __syncthreads to share them).

// Copies src_bytes (0..kBytes) and zero-fills the rest of the kBytes destination.
template <CaTraffic kCat, int kBytes>
CA_DEVICE void cp_async_zfill(void* smem_dst, const void* gmem_src,
                              unsigned src_bytes CA_LOC_PARAM) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
  const unsigned dst = detail::shared_address(smem_dst);
  if constexpr (kBytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src),
                 "r"(src_bytes)
                 : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(gmem_src),
                 "n"(kBytes), "r"(src_bytes)
                 : "memory");
#elif !defined(__CUDACC__)
  const unsigned n = src_bytes < unsigned(kBytes) ? src_bytes : unsigned(kBytes);
  detail::count_read<kCat>(n);
  if (n) cucpu::mem_access(cucpu::MemSpace::kGlobal, kCat, gmem_src, n, ca_loc);
  cucpu::mem_access(cucpu::MemSpace::kShared, 0, smem_dst, kBytes, ca_loc);
  cucpu::ptx::cp_async(smem_dst, gmem_src, kBytes, n, ca_loc);
#endif
}

// Copies kBytes (4, 8 or 16). 16 bytes bypass L1 (.cg); 4 and 8 go through it (.ca).
template <CaTraffic kCat, int kBytes>
CA_DEVICE void cp_async(void* smem_dst, const void* gmem_src CA_LOC_PARAM) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
  const unsigned dst = detail::shared_address(smem_dst);
  if constexpr (kBytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src)
                 : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(gmem_src),
                 "n"(kBytes)
                 : "memory");
#elif !defined(__CUDACC__)
  detail::count_read<kCat>(kBytes);
  cucpu::mem_access(cucpu::MemSpace::kGlobal, kCat, gmem_src, kBytes, ca_loc);
  cucpu::mem_access(cucpu::MemSpace::kShared, 0, smem_dst, kBytes, ca_loc);
  cucpu::ptx::cp_async(smem_dst, gmem_src, kBytes, kBytes, ca_loc);
#endif
}

// Closes the current group of cp.async copies.
CA_DEVICE void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDACC__)
  cucpu::ptx::cp_async_commit();
#endif
}

// Waits until at most N committed groups are still in flight.
template <int N>
CA_DEVICE void cp_async_wait() {
  static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7");
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif !defined(__CUDACC__)
  cucpu::ptx::cp_async_wait(N);
#endif
}

// Commits the open group and waits for every copy.
CA_DEVICE void cp_async_wait_all() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif !defined(__CUDACC__)
  cucpu::ptx::cp_async_commit();
  cucpu::ptx::cp_async_wait(0);
#endif
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.xN[.trans].shared.b16 — warp collective (all 32 lanes). Lanes
// 8m..8m+7 pass the addresses of the 8 rows of matrix m (16 bytes each, 16-byte aligned, in
// shared memory); register m of every lane receives its fragment of matrix m.

namespace detail {
template <int kNum, bool kTrans>
CA_DEVICE void ldmatrix(uint32_t (&r)[kNum], const void* smem_row CA_LOC_PARAM) {
  static_assert(kNum == 1 || kNum == 2 || kNum == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(__CUDA_ARCH__)
  const unsigned addr = shared_address(smem_row);
  if constexpr (kNum == 1 && !kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(addr)
                 : "memory");
  else if constexpr (kNum == 1 && kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(addr)
                 : "memory");
  else if constexpr (kNum == 2 && !kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr)
                 : "memory");
  else if constexpr (kNum == 2 && kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr)
                 : "memory");
  else if constexpr (kNum == 4 && !kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
#elif defined(__CUDACC__)
  (void)r, (void)smem_row;
#else
  cucpu::ptx::ldmatrix<kNum, kTrans>(r, smem_row, ca_loc);
#endif
}
}  // namespace detail

CA_DEVICE void ldmatrix_x1(uint32_t (&r)[1], const void* smem_row CA_LOC_PARAM) {
  detail::ldmatrix<1, false>(r, smem_row CA_LOC_ARG);
}
CA_DEVICE void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row CA_LOC_PARAM) {
  detail::ldmatrix<2, false>(r, smem_row CA_LOC_ARG);
}
CA_DEVICE void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row CA_LOC_PARAM) {
  detail::ldmatrix<4, false>(r, smem_row CA_LOC_ARG);
}
CA_DEVICE void ldmatrix_x1_trans(uint32_t (&r)[1], const void* smem_row CA_LOC_PARAM) {
  detail::ldmatrix<1, true>(r, smem_row CA_LOC_ARG);
}
CA_DEVICE void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row CA_LOC_PARAM) {
  detail::ldmatrix<2, true>(r, smem_row CA_LOC_ARG);
}
CA_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row CA_LOC_PARAM) {
  detail::ldmatrix<4, true>(r, smem_row CA_LOC_ARG);
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 — warp collective (all 32
// lanes). D = A (16x16, row-major) * B (16x8, column-major) + C, accumulated in f32. d may alias c.
// Fragments (g = lane / 4, t = lane % 4): a[r] holds A(g + 8*(r&1), 2t + 8*(r>>1) + {0,1});
// b[r] holds B(2t + 8r + {0,1}, g); c[i], d[i] hold C(g + 8*(i>>1), 2t + (i&1)).

CA_DEVICE void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                const float (&c)[4] CA_LOC_PARAM) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(__CUDACC__)
  (void)d, (void)a, (void)b, (void)c;
#else
  cucpu::ptx::mma_m16n8k16<false>(d, a, b, c, ca_loc);
#endif
}

CA_DEVICE void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                 const float (&c)[4] CA_LOC_PARAM) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(__CUDACC__)
  (void)d, (void)a, (void)b, (void)c;
#else
  cucpu::ptx::mma_m16n8k16<true>(d, a, b, c, ca_loc);
#endif
}

// ---------------------------------------------------------------------------------------------
// Host side: the traffic counters behind ca_get_stats / ca_reset_stats. Emu: bytes moved by all
// launches in this process since the last reset; read and reset them between launches. CUDA: zeros.

inline void traffic_snapshot(CaStats* out) {
  memset(out, 0, sizeof *out);
#if !defined(__CUDACC__)
  uint64_t counters[cucpu::kCounters];
  cucpu::counters_read(counters);
  for (int k = 0; k < CA_TRAFFIC_COUNT; ++k) {
    out->bytes_read[k] = counters[k];
    out->bytes_written[k] = counters[CA_TRAFFIC_COUNT + k];
  }
  out->launches = detail::launches.load(std::memory_order_relaxed);
#endif
}

inline void traffic_reset() {
#if !defined(__CUDACC__)
  cucpu::counters_reset();
  cucpu::kernel_stats_reset();
  detail::launches.store(0, std::memory_order_relaxed);
#endif
}

// Called by the launcher once per kernel launch.
inline void traffic_count_launch() {
#if !defined(__CUDACC__)
  detail::launches.fetch_add(1, std::memory_order_relaxed);
#endif
}

}  // namespace ca

#endif  // CHUNKATTN_PRIMS_CUH_
