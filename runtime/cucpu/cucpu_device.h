// cucpu_device.h — the CUDA device API on the CPU: barriers, warp shuffles and votes, atomics,
// math and bit intrinsics, and the fp16/bf16 functions the host headers leave out.
// Included by cucpu.h; not a public entry point.
//
// Functions that can wait take a trailing std::source_location defaulted to the call site, so
// diagnostics name the kernel's line; kernels call them with the CUDA signatures.
#pragma once

// ---- barriers ---------------------------------------------------------------------------------
inline void __syncthreads(std::source_location site = std::source_location::current()) {
  cucpu::block_barrier(0, site);
}
inline int __syncthreads_count(int predicate,
                               std::source_location site = std::source_location::current()) {
  return cucpu::block_barrier(predicate, site).first;
}
inline int __syncthreads_or(int predicate,
                            std::source_location site = std::source_location::current()) {
  return cucpu::block_barrier(predicate, site).first != 0;
}
inline int __syncthreads_and(int predicate,
                             std::source_location site = std::source_location::current()) {
  const auto [count, arrived] = cucpu::block_barrier(predicate, site);
  return count == arrived;
}

namespace cucpu {
inline void no_compute(const LaneBytes*, LaneBytes*, uint32_t, const void*) {}

// Every lane of the mask reads lane `src` of its deposit (src < 0: its own value).
struct ShuffleIn {
  unsigned char value[16];
  int src;
};
template <unsigned N>
inline void shuffle_compute(const LaneBytes* in, LaneBytes* out, uint32_t mask, const void*) {
  for (uint32_t m = mask; m; m &= m - 1) {
    const unsigned lane = __builtin_ctz(m);
    ShuffleIn me;
    std::memcpy(&me, in[lane], sizeof me);
    const unsigned src = me.src < 0 ? lane : unsigned(me.src);
    std::memcpy(out[lane], in[src], N);
  }
}

template <class T>
inline T shuffle(const char* name, uint32_t mask, T value, int src,
                 const std::source_location& site) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>,
                "shuffles move trivially copyable values of at most 16 bytes");
  ShuffleIn me{};
  std::memcpy(me.value, &value, sizeof(T));
  me.src = src;
  if (src >= 0 && !(mask >> src & 1)) {
    Thread& t = running_thread(name);
    fail(t, ErrorKind::kMask, site,
         std::string(name) + " at " + format_location(site) + " reads lane " + std::to_string(src) +
             ", which is not in mask " + format_mask(mask) +
             " (its value is undefined on the GPU)");
  }
  T result;
  warp_collective(name, mask, &shuffle_compute<sizeof(T)>, nullptr, &me, sizeof me, &result,
                  sizeof(T), site);
  return result;
}

inline unsigned lane_id(const char* what) {
  Thread& t = running_thread(what);
  Untracked untracked;
  return t.lane;
}

inline void ballot_compute(const LaneBytes* in, LaneBytes* out, uint32_t mask, const void*) {
  uint32_t bits = 0;
  for (uint32_t m = mask; m; m &= m - 1)
    if (in[__builtin_ctz(m)][0]) bits |= 1u << __builtin_ctz(m);
  for (uint32_t m = mask; m; m &= m - 1) std::memcpy(out[__builtin_ctz(m)], &bits, 4);
}
inline uint32_t ballot(const char* name, uint32_t mask, int predicate,
                       const std::source_location& site) {
  const unsigned char p = predicate != 0;
  uint32_t bits;
  warp_collective(name, mask, &ballot_compute, nullptr, &p, 1, &bits, 4, site);
  return bits;
}
}  // namespace cucpu

// ---- warp shuffles, votes, __syncwarp -----------------------------------------------------------
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location site = std::source_location::current()) {
#if defined(CUCPU_TSAN)
  // __syncwarp orders the memory accesses of the lanes it synchronizes.
  void* sync_object;
  {
    cucpu::Thread& t = cucpu::running_thread("__syncwarp");
    cucpu::Untracked untracked;
    sync_object = &t.block->warps[t.warp];
  }
  __tsan_release(sync_object);
#endif
  cucpu::warp_collective("__syncwarp", mask, &cucpu::no_compute, nullptr, nullptr, 0, nullptr, 0,
                         site);
#if defined(CUCPU_TSAN)
  __tsan_acquire(sync_object);
#endif
}

inline unsigned __activemask() {
  cucpu::Thread& t = cucpu::running_thread("__activemask");
  cucpu::Untracked untracked;
  return t.block->warps[t.warp].live;
}

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize,
                     std::source_location site = std::source_location::current()) {
  const unsigned lane = cucpu::lane_id("__shfl_sync");
  const int src = int((lane & ~unsigned(width - 1)) + (unsigned(srcLane) & unsigned(width - 1)));
  return cucpu::shuffle("__shfl_sync", mask, var, src, site);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                         std::source_location site = std::source_location::current()) {
  const unsigned lane = cucpu::lane_id("__shfl_xor_sync");
  const unsigned s = lane ^ unsigned(laneMask);
  // A lane of a later segment cannot be read: the lane keeps its own value.
  const int src =
      ((s & ~unsigned(width - 1)) > (lane & ~unsigned(width - 1)) || s >= 32) ? -1 : int(s);
  return cucpu::shuffle("__shfl_xor_sync", mask, var, src, site);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          std::source_location site = std::source_location::current()) {
  const unsigned lane = cucpu::lane_id("__shfl_down_sync");
  const int src =
      ((lane & unsigned(width - 1)) + delta >= unsigned(width)) ? -1 : int(lane + delta);
  return cucpu::shuffle("__shfl_down_sync", mask, var, src, site);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        std::source_location site = std::source_location::current()) {
  const unsigned lane = cucpu::lane_id("__shfl_up_sync");
  const int src = ((lane & unsigned(width - 1)) < delta) ? -1 : int(lane - delta);
  return cucpu::shuffle("__shfl_up_sync", mask, var, src, site);
}
inline unsigned __ballot_sync(unsigned mask, int predicate,
                              std::source_location site = std::source_location::current()) {
  return cucpu::ballot("__ballot_sync", mask, predicate, site);
}
inline int __any_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  return cucpu::ballot("__any_sync", mask, predicate, site) != 0;
}
inline int __all_sync(unsigned mask, int predicate,
                      std::source_location site = std::source_location::current()) {
  return cucpu::ballot("__all_sync", mask, predicate, site) == mask;
}

// ---- __trap -------------------------------------------------------------------------------------
[[noreturn]] inline void __trap(std::source_location site = std::source_location::current()) {
  cucpu::Thread& t = cucpu::running_thread("__trap");
  cucpu::fail(t, cucpu::ErrorKind::kTrap, site, "__trap() at " + cucpu::format_location(site));
}

// ---- atomics: real atomics, since blocks run on several OS threads -----------------------------
namespace cucpu {
enum class AtomicOp { kAdd, kMax, kMin, kExch, kAnd, kOr, kXor };
template <class T>
inline T atomic_rmw(T* p, T v, AtomicOp op) {
  std::atomic_ref<T> a(*p);
  T old = a.load(std::memory_order_relaxed);
  for (;;) {
    T next;
    switch (op) {
      case AtomicOp::kAdd:
        next = T(old + v);
        break;
      case AtomicOp::kMax:
        next = old < v ? v : old;
        break;
      case AtomicOp::kMin:
        next = v < old ? v : old;
        break;
      case AtomicOp::kExch:
        next = v;
        break;
      case AtomicOp::kAnd:
        if constexpr (std::is_integral_v<T>)
          next = old & v;
        else
          next = v;
        break;
      case AtomicOp::kOr:
        if constexpr (std::is_integral_v<T>)
          next = old | v;
        else
          next = v;
        break;
      case AtomicOp::kXor:
        if constexpr (std::is_integral_v<T>)
          next = old ^ v;
        else
          next = v;
        break;
    }
    if (a.compare_exchange_weak(old, next, std::memory_order_relaxed)) return old;
  }
}
}  // namespace cucpu
template <class T>
inline T atomicAdd(T* p, T v) {
  return cucpu::atomic_rmw(p, v, cucpu::AtomicOp::kAdd);
}
template <class T>
inline T atomicSub(T* p, T v) {
  return cucpu::atomic_rmw(p, T(-v), cucpu::AtomicOp::kAdd);
}
template <class T>
inline T atomicMax(T* p, T v) {
  return cucpu::atomic_rmw(p, v, cucpu::AtomicOp::kMax);
}
template <class T>
inline T atomicMin(T* p, T v) {
  return cucpu::atomic_rmw(p, v, cucpu::AtomicOp::kMin);
}
template <class T>
inline T atomicExch(T* p, T v) {
  return cucpu::atomic_rmw(p, v, cucpu::AtomicOp::kExch);
}
template <class T>
inline T atomicAnd(T* p, T v) {
  return cucpu::atomic_rmw(p, v, cucpu::AtomicOp::kAnd);
}
template <class T>
inline T atomicOr(T* p, T v) {
  return cucpu::atomic_rmw(p, v, cucpu::AtomicOp::kOr);
}
template <class T>
inline T atomicXor(T* p, T v) {
  return cucpu::atomic_rmw(p, v, cucpu::AtomicOp::kXor);
}
template <class T>
inline T atomicCAS(T* p, T compare, T v) {
  std::atomic_ref<T>(*p).compare_exchange_strong(compare, v, std::memory_order_relaxed);
  return compare;
}
inline unsigned atomicInc(unsigned* p, unsigned limit) {
  std::atomic_ref<unsigned> a(*p);
  unsigned old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, old >= limit ? 0u : old + 1u, std::memory_order_relaxed)) {
  }
  return old;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- math and bit intrinsics --------------------------------------------------------------------
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __saturatef(float a) { return a < 0.f ? 0.f : (a > 1.f ? 1.f : a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline int __float2int_rn(float f) { return int(std::nearbyint(f)); }
inline int __float2int_rz(float f) { return int(f); }
inline unsigned __float2uint_rn(float f) { return unsigned(std::nearbyint(f)); }
inline float __int2float_rn(int i) { return float(i); }
inline float __uint2float_rn(unsigned i) { return float(i); }
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, 4);
  return i;
}
inline unsigned __float_as_uint(float f) {
  unsigned i;
  std::memcpy(&i, &f, 4);
  return i;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline float __uint_as_float(unsigned i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline long long __double_as_longlong(double d) {
  long long i;
  std::memcpy(&i, &d, 8);
  return i;
}
inline double __longlong_as_double(long long i) {
  double d;
  std::memcpy(&d, &i, 8);
  return d;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  return __builtin_bswap32(x);
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (uint64_t(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= unsigned((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline int __mulhi(int a, int b) { return int((int64_t(a) * b) >> 32); }
inline long long clock64() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Cache-hinted loads and stores are plain accesses on the CPU.
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
template <class T>
inline T __ldca(const T* p) {
  return *p;
}
template <class T>
inline T __ldcs(const T* p) {
  return *p;
}
template <class T>
inline T __ldlu(const T* p) {
  return *p;
}
template <class T>
inline void __stcg(T* p, T v) {
  *p = v;
}
template <class T>
inline void __stcs(T* p, T v) {
  *p = v;
}
template <class T>
inline void __stwb(T* p, T v) {
  *p = v;
}
inline size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<size_t>(p); }

// min / max with CUDA's mixed-type overloads (the wider / unsigned type wins, as in CUDA).
template <class A, class B,
          class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}
template <class A, class B,
          class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(b) < C(a) ? C(b) : C(a);
}

// ---- fp16 / bf16 functions that cuda_fp16.h and cuda_bf16.h declare only for the device --------
inline __half __hfma(__half a, __half b, __half c) {
  return __float2half(std::fma(__half2float(a), __half2float(b), __half2float(c)));
}
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return __halves2half2(__hfma(__low2half(a), __low2half(b), __low2half(c)),
                        __hfma(__high2half(a), __high2half(b), __high2half(c)));
}
inline __half __hfma_relu(__half a, __half b, __half c) {
  const float r = std::fma(__half2float(a), __half2float(b), __half2float(c));
  return __float2half(r < 0.f ? 0.f : r);
}
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __float2bfloat16(std::fma(__bfloat162float(a), __bfloat162float(b), __bfloat162float(c)));
}
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return __halves2bfloat162(__hfma(__low2bfloat16(a), __low2bfloat16(b), __low2bfloat16(c)),
                            __hfma(__high2bfloat16(a), __high2bfloat16(b), __high2bfloat16(c)));
}
// name: __half and __nv_bfloat16; name2: their pairs.
#define CUCPU_HALF_UNARY(name, name2, expr)                                       \
  inline __half name(__half a) {                                                  \
    const float x = __half2float(a);                                              \
    return __float2half(expr);                                                    \
  }                                                                               \
  inline __nv_bfloat16 name(__nv_bfloat16 a) {                                    \
    const float x = __bfloat162float(a);                                          \
    return __float2bfloat16(expr);                                                \
  }                                                                               \
  inline __half2 name2(__half2 a) {                                               \
    return __halves2half2(name(__low2half(a)), name(__high2half(a)));             \
  }                                                                               \
  inline __nv_bfloat162 name2(__nv_bfloat162 a) {                                 \
    return __halves2bfloat162(name(__low2bfloat16(a)), name(__high2bfloat16(a))); \
  }
CUCPU_HALF_UNARY(hexp, h2exp, std::exp(x))
CUCPU_HALF_UNARY(hexp2, h2exp2, std::exp2(x))
CUCPU_HALF_UNARY(hlog, h2log, std::log(x))
CUCPU_HALF_UNARY(hlog2, h2log2, std::log2(x))
CUCPU_HALF_UNARY(hsqrt, h2sqrt, std::sqrt(x))
CUCPU_HALF_UNARY(hrsqrt, h2rsqrt, 1.0f / std::sqrt(x))
CUCPU_HALF_UNARY(hrcp, h2rcp, 1.0f / x)
#undef CUCPU_HALF_UNARY
