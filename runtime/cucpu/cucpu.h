// cucpu.h — run CUDA C++ kernels on the CPU.
//
// The same .cu file that nvcc compiles builds with g++ as plain C++:
//
//   g++ -std=c++20 -pthread -include runtime/cucpu/cucpu.h -I/usr/local/cuda/include -x c++ k.cu
//
// and `cucpu::launch(kernel, grid, block, dyn_smem_bytes, args...)` replaces
// `kernel<<<grid, block, dyn_smem_bytes>>>(args...)`. Header-only; g++ >= 12, x86-64 Linux (other
// architectures use the slower ucontext switch). Exceptions must be enabled: a failed launch
// unwinds its fibers with one.
//
// Execution model
//   * Every CUDA thread of a block is a stackful fiber. All fibers of a block run cooperatively on
//     one OS thread and interleave only where a GPU thread could wait on another: __syncthreads,
//     warp collectives (shuffles, votes, __syncwarp, mma, ldmatrix). Blocks are spread over
//     CUCPU_WORKERS OS threads.
//   * threadIdx / blockIdx / blockDim / gridDim are thread_local variables rewritten on every
//     fiber switch (under ThreadSanitizer they are read from the running fiber's record).
//   * `__shared__` is `thread_local`: a block-scope thread_local is implicitly static, so there is
//     one copy per OS thread, i.e. one per running block.
//   * Dynamic shared memory (`extern __shared__ T name[]`) names a thread_local array defined once
//     at namespace scope with CUCPU_DYNAMIC_SHARED(T, name), in the kernel's namespace.
//     chunkattn/prims.cuh defines the project's arena `smem` in the global namespace and in `ca`.
//   * Warp collectives: each lane deposits its input and waits; the last lane of the mask to
//     arrive computes every lane's result.
//   * Misuse is reported, never hung on or crashed over: deadlocks, divergent __syncthreads, bad
//     masks, collectives naming exited lanes, misaligned ldmatrix/cp.async/ldg and __trap() end the
//     launch with a cucpu::Error naming the kind, the block/thread and file:line:col.
//
// Knobs (environment, read at every launch)
//   CUCPU_WORKERS=n                      OS threads running blocks (default: all cores)
//   CUCPU_ORDER=forward|reverse|random   order in which the fibers of a block are run (default
//   forward) CUCPU_SEED=n                         seed for CUCPU_ORDER=random (default 1)
// Compile-time knobs
//   CUCPU_STACK_BYTES      fiber stack size (default 256 KiB; at most 504 KiB under TSan)
//   CUCPU_DYN_SMEM_BYTES   capacity of every dynamic shared array (default 227 KiB, sm_90's
//   maximum) CUCPU_USE_UCONTEXT     use swapcontext instead of the hand-written x86-64 switch
//   (~100x slower)
//
// Parts: cucpu_fiber.h (context switch, stacks, sanitizer hooks), cucpu_sched.h (blocks, barriers,
// collectives, launch, errors), cucpu_device.h (the CUDA device API), cucpu_ptx.h (mma.sync,
// ldmatrix, cp.async emulation).
#pragma once
#if defined(__CUDACC__)
#error "cucpu.h is for the host-compiler (emulation) build; nvcc builds use the real CUDA path"
#endif

#define CUCPU_VERSION 1

#include <vector_types.h>      // dim3, uint3, float4, ... (CUDA toolkit headers, usable from g++)
#include <vector_functions.h>  // make_float4, ...
#include <cuda_fp16.h>         // host-side __half / __half2
#include <cuda_bf16.h>         // host-side __nv_bfloat16 / __nv_bfloat162

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <random>
#include <source_location>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <cxxabi.h>
#include <dlfcn.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__) || defined(CUCPU_USE_UCONTEXT)
#include <ucontext.h>
#define CUCPU_UCONTEXT 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CUCPU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__)
#define CUCPU_TSAN 1
#include <sanitizer/tsan_interface.h>
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
#endif

#ifndef CUCPU_STACK_BYTES
#define CUCPU_STACK_BYTES (256 * 1024)
#endif
#ifndef CUCPU_DYN_SMEM_BYTES
#define CUCPU_DYN_SMEM_BYTES 232448
#endif

// ---------------------------------------------------------------------------------------------
// CUDA keywords. host_defines.h (included by vector_types.h) maps __global__, __device__,
// __host__, __forceinline__ and __align__ for GCC; it maps __shared__ to nothing, which would make
// shared arrays per-thread, so it is redefined here.
#undef __shared__
#define __shared__ thread_local
#undef __constant__
#define __constant__
#undef __managed__
#define __managed__
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif

// ---------------------------------------------------------------------------------------------
// Built-in variables. Real variables (not macros), so `threadIdx.x` behaves as in CUDA.
#if !defined(CUCPU_TSAN)
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
#else
// Under ThreadSanitizer every CUDA thread is a TSan fiber, and a thread_local rewritten at every
// switch would itself look racy: read the built-ins from the running fiber's record instead.
#define threadIdx (::cucpu::current_thread_record()->thread_idx)
#define blockIdx (::cucpu::current_thread_record()->block_idx)
#define blockDim (::cucpu::current_thread_record()->block_dim)
#define gridDim (::cucpu::current_thread_record()->grid_dim)
#endif
inline constexpr int warpSize = 32;

#include "cucpu_fiber.h"
#include "cucpu_sched.h"
#include "cucpu_device.h"
#include "cucpu_ptx.h"
