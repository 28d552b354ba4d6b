// chunkattn/cpu/thread_pool.h — the module's persistent worker pool.
//
// One pool per loaded module (a function-local static), created on first use and grown when a
// call asks for more threads. `run(n, fn, ctx)` calls fn(ctx, i) for i in [0, n) on n threads —
// the caller is thread 0 — and returns when every call has returned. Jobs are serialized by a
// mutex, so concurrent ca_decode calls from different threads are safe (they take turns).
//
// Workers spin briefly after a job (back-to-back decode calls of consecutive layers find them
// awake), then sleep on a condition variable. Work inside a job is distributed by the caller's
// own atomic counters (see decode.h); the pool only starts and joins.
#ifndef CHUNKATTN_CPU_THREAD_POOL_H_
#define CHUNKATTN_CPU_THREAD_POOL_H_

#include <stdint.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CA_CPU_PAUSE() _mm_pause()
#else
#define CA_CPU_PAUSE() ((void)0)
#endif

namespace ca {
namespace cpu {

// Threads a call uses: requested > 0, else env CHUNKATTN_THREADS, else hardware_concurrency().
inline int resolve_num_threads(int requested) {
  if (requested > 0) return requested > 1024 ? 1024 : requested;
  static const int from_env = [] {
    const char* s = getenv("CHUNKATTN_THREADS");
    if (s && *s) {
      const long n = strtol(s, nullptr, 10);
      if (n > 0) return int(n > 1024 ? 1024 : n);
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : int(hw);
  }();
  return from_env;
}

class ThreadPool {
 public:
  using Fn = void (*)(void* ctx, int thread_index);

  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  // May throw std::system_error / std::bad_alloc when threads cannot be created; the caller
  // (decode) catches and reports it as a status.
  void run(int num_threads, Fn fn, void* ctx) {
    if (num_threads <= 1) {
      fn(ctx, 0);
      return;
    }
    std::lock_guard<std::mutex> job_lock(job_mutex_);
    ensure_workers(num_threads - 1);
    fn_ = fn;
    ctx_ = ctx;
    job_threads_ = num_threads;
    pending_.store(int(workers_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    fn(ctx, 0);
    // Every worker acknowledges the generation before we return (ctx lives on our caller's
    // stack), including those beyond num_threads, which do nothing.
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
      if (spins < 4096) {
        CA_CPU_PAUSE();
      } else {
        std::this_thread::yield();
      }
    }
  }

  int num_workers() const { return int(workers_.size()); }

 private:
  static constexpr int kSpinMicros = 50;

  ThreadPool() = default;

  void ensure_workers(int n) {
    while (int(workers_.size()) < n) {
      const int index = int(workers_.size()) + 1;
      const uint64_t seen = generation_.load(std::memory_order_acquire);
      workers_.emplace_back([this, index, seen] { worker_loop(index, seen); });
    }
  }

  void worker_loop(int index, uint64_t seen) {
    for (;;) {
      // Spin a little (kSpinMicros), then sleep.
      uint64_t gen = generation_.load(std::memory_order_acquire);
      if (gen == seen) {
        const auto spin_end = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
        for (int spins = 1; gen == seen; ++spins) {
          CA_CPU_PAUSE();
          gen = generation_.load(std::memory_order_acquire);
          if ((spins & 63) == 0 && std::chrono::steady_clock::now() > spin_end) break;
        }
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(wake_mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        gen = generation_.load(std::memory_order_acquire);
      }
      seen = gen;
      if (stop_) return;
      if (index < job_threads_) fn_(ctx_, index);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex job_mutex_;   // one job at a time
  std::mutex wake_mutex_;  // guards sleeping on wake_
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::vector<std::thread> workers_;
  Fn fn_ = nullptr;
  void* ctx_ = nullptr;
  int job_threads_ = 0;
  bool stop_ = false;
};

}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_THREAD_POOL_H_
