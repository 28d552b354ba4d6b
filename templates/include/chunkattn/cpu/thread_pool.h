// chunkattn/cpu/thread_pool.h — the module's persistent worker pool.
//
// One pool per loaded module (a function-local static), created on first use and grown when a
// call asks for more threads. `run(n, fn, ctx)` calls fn(ctx, i) on the caller (i = 0) and on up
// to n - 1 workers, and returns when every call that started has returned. Work inside a job is
// shared through the job's own atomic counters (see decode.h), so fn must be written to let any
// subset of threads finish the job: a worker that wakes late, or not at all (busy machine), never
// delays the caller — it joins only while the job is open, and the caller closes the job when
// its own fn returns, then waits only for workers that joined. Jobs are serialized by a mutex, so
// concurrent ca_decode calls from different threads take turns.
//
// Workers spin briefly after a job (back-to-back decode calls of consecutive layers find them
// awake), then sleep on a condition variable.
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
      stop_.store(true, std::memory_order_release);
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
    max_joiners_ = uint64_t(num_threads - 1);
    uint32_t gen;
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      gen = uint32_t(generation_.load(std::memory_order_relaxed) + 1);
      job_.store(uint64_t(gen) << 32, std::memory_order_release);  // open, nobody joined
      generation_.store(gen, std::memory_order_release);
    }
    wake_.notify_all();
    fn(ctx, 0);
    // Close the job, then wait for the workers that joined it (ctx lives on our caller's stack).
    job_.fetch_or(kClosed, std::memory_order_acq_rel);
    for (int spins = 0; (job_.load(std::memory_order_acquire) & kJoinedMask) != 0; ++spins) {
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
  // job_ = [generation:32][closed:1][joined workers:31]
  static constexpr uint64_t kClosed = uint64_t(1) << 31;
  static constexpr uint64_t kJoinedMask = kClosed - 1;

  ThreadPool() = default;

  void ensure_workers(int n) {
    while (int(workers_.size()) < n) {
      const uint32_t seen = generation_.load(std::memory_order_acquire);
      workers_.emplace_back([this, seen] { worker_loop(seen); });
    }
  }

  // Joins job `gen` if it is still open and has room; returns the thread index, or 0.
  int try_join(uint32_t gen) {
    uint64_t s = job_.load(std::memory_order_acquire);
    for (;;) {
      if (uint32_t(s >> 32) != gen || (s & kClosed) || (s & kJoinedMask) >= max_joiners_) return 0;
      if (job_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                     std::memory_order_acquire))
        return int(s & kJoinedMask) + 1;
    }
  }

  void worker_loop(uint32_t seen) {
    for (;;) {
      // Spin a little (kSpinMicros), then sleep.
      uint32_t gen = generation_.load(std::memory_order_acquire);
      if (gen == seen) {
        const auto spin_end =
            std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
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
      if (stop_.load(std::memory_order_acquire)) return;
      const int index = try_join(gen);
      if (index == 0) continue;
      fn_(ctx_, index);
      job_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex job_mutex_;   // one job at a time
  std::mutex wake_mutex_;  // guards sleeping on wake_
  std::condition_variable wake_;
  std::atomic<uint32_t> generation_{0};
  std::atomic<uint64_t> job_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> workers_;
  Fn fn_ = nullptr;
  void* ctx_ = nullptr;
  uint64_t max_joiners_ = 0;
};

}  // namespace cpu
}  // namespace ca

#endif  // CHUNKATTN_CPU_THREAD_POOL_H_
