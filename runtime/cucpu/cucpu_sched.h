// cucpu_sched.h — blocks of fibers: the scheduler, __syncthreads, warp collectives, launch and
// its errors. Included by cucpu.h; not a public entry point.
//
// A block runs in passes over its threads (in CUCPU_ORDER). A thread runs until it waits (at a
// barrier or in a collective) or exits; it then switches straight to the next ready thread of the
// pass, and the last one returns to the scheduler. A pass in which no thread could run is a
// deadlock. On any failure the block is aborted: every suspended fiber is resumed once and throws
// FiberAbort, which unwinds its stack to fiber_main, so a failed launch leaves nothing behind.
#pragma once

#include "cucpu_json.h"
#include "cucpu_mem.h"

namespace cucpu {

// ---------------------------------------------------------------------------------------------
// Errors.

enum class ErrorKind : uint8_t {
  kNone,
  kInvalidLaunch,     // bad geometry, too much dynamic shared memory, bad CUCPU_* setting
  kDeadlock,          // no thread of a block can make progress
  kDivergentBarrier,  // threads of a block wait at different __syncthreads
  kMask,              // a collective's mask excludes the calling lane or the lane it reads
  kExitedLane,        // a collective names a lane that has exited (or does not exist)
  kMisaligned,        // ldmatrix / cp.async / ldg / stg address not aligned as the GPU requires
  kTrap,              // __trap()
  kException,         // a C++ exception escaped the kernel
};

inline const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kNone:
      return "none";
    case ErrorKind::kInvalidLaunch:
      return "invalid-launch";
    case ErrorKind::kDeadlock:
      return "deadlock";
    case ErrorKind::kDivergentBarrier:
      return "divergent-barrier";
    case ErrorKind::kMask:
      return "mask";
    case ErrorKind::kExitedLane:
      return "exited-lane";
    case ErrorKind::kMisaligned:
      return "misaligned";
    case ErrorKind::kTrap:
      return "trap";
    case ErrorKind::kException:
      return "exception";
  }
  return "unknown";
}

// What a launch returns. Like std::error_code, it converts to true when there IS an error:
//   if (cucpu::Error e = cucpu::launch(...)) report(e.to_string());
struct Error {
  ErrorKind kind = ErrorKind::kNone;
  std::string
      message;  // the diagnostic, e.g. "divergent __syncthreads: thread (16,0,0) waits at ..."
  std::string kernel;  // kernel name (launch_named's, else the demangled symbol, best effort)
  std::string file;    // source location of the offending barrier / collective / prim; empty if
  unsigned line = 0;   //   none (e.g. invalid launch, an exception)
  unsigned column = 0;
  uint3 block_idx{};   // the block that failed (the lowest-numbered one, if several did)
  uint3 thread_idx{};  // the thread the diagnostic is about

  bool ok() const { return kind == ErrorKind::kNone; }
  explicit operator bool() const { return !ok(); }
  const char* kind_name() const { return error_kind_name(kind); }

  // "file:line:col", or "" when there is no source location.
  std::string location() const {
    if (file.empty()) return {};
    return file + ":" + std::to_string(line) + ":" + std::to_string(column);
  }
  // "file:line:col: kernel 'name' failed: message"
  std::string to_string() const {
    if (ok()) return "ok";
    std::string s = location();
    if (!s.empty()) s += ": ";
    s += "kernel '" + (kernel.empty() ? std::string("?") : kernel) + "' failed (" + kind_name() +
         "): " + message;
    return s;
  }
  // One JSON object:
  // {"kind","kernel","file","line","column","block":[x,y,z],"thread":[x,y,z],"message"}.
  std::string to_json() const {
    auto str = json_quote;
    auto vec = [](const uint3& v) {
      return "[" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) +
             "]";
    };
    return std::string("{\"kind\":") + str(kind_name()) + ",\"kernel\":" + str(kernel) +
           ",\"file\":" + str(file) + ",\"line\":" + std::to_string(line) +
           ",\"column\":" + std::to_string(column) + ",\"block\":" + vec(block_idx) +
           ",\"thread\":" + vec(thread_idx) + ",\"message\":" + str(message) + "}";
  }
};

// Thrown inside a fiber to unwind it when its block is aborted. Never escapes fiber_main.
struct FiberAbort {};

inline std::string format_location(const std::source_location& l) {
  return std::string(l.file_name()) + ":" + std::to_string(l.line()) + ":" +
         std::to_string(l.column());
}
inline bool same_location(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}
inline std::string format_index(const uint3& v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
inline std::string format_mask(uint32_t mask) {
  char buf[16];
  snprintf(buf, sizeof buf, "0x%08x", mask);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Records.

// Bytes each lane deposits into / receives from a warp collective.
constexpr size_t kLaneBytes = 64;
using LaneBytes = unsigned char[kLaneBytes];
// Computes every lane's output of one collective from the inputs of the lanes in `mask`.
using CollectiveFn = void (*)(const LaneBytes* in, LaneBytes* out, uint32_t mask, const void* ctx);

enum class State : uint8_t { kReady, kAtBarrier, kInCollective, kDone };
enum class Order : uint8_t { kForward, kReverse, kRandom };

struct Block;
struct Launch;

// One emulated CUDA thread.
struct Thread {
  Context context;
  uint3 thread_idx{};
  uint3 block_idx{};
  dim3 block_dim;
  dim3 grid_dim;
  unsigned index = 0;  // linear thread index in the block
  unsigned lane = 0;
  unsigned warp = 0;
  State state = State::kReady;
  bool exited = false;
  Block* block = nullptr;
  const char* wait_name = "";        // what it waits in (for diagnostics)
  std::source_location wait_site{};  // where

  // cp.async: copies in issue order, each tagged with its commit group (see cucpu_ptx.h).
  struct AsyncCopy {
    void* dst;
    const void* src;
    uint32_t bytes;
    uint32_t src_bytes;
    uint64_t group;
  };
  std::vector<AsyncCopy> async_copies;
  size_t async_done = 0;         // copies [0, async_done) have been performed
  uint64_t async_committed = 0;  // commit groups so far; open copies carry this number
};

// A lane parked in a warp collective.
struct LaneWait {
  uint32_t mask = 0;
  CollectiveFn fn = nullptr;
  const void* ctx = nullptr;
  const char* name = "";
  std::source_location site{};
};

struct Warp {
  uint32_t live = 0;     // lanes that exist and have not exited
  uint32_t waiting = 0;  // lanes parked in a collective
  LaneWait wait[32];
  alignas(16) LaneBytes in[32];
  alignas(16) LaneBytes out[32];
};

struct Block {
  Launch* launch = nullptr;
  uint3 idx{};
  uint64_t linear = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  int live = 0;             // threads that have not exited
  int barrier_arrived = 0;  // threads waiting at __syncthreads
  int barrier_true = 0;     // ... of which passed a non-zero predicate
  int released_true = 0;    // predicate count / arrivals of the last released barrier
  int released_arrived = 0;
  std::vector<unsigned> order;  // run order of the threads (CUCPU_ORDER)
  size_t pos = 0;               // position in `order` of the running thread
  bool progress = false;        // some thread ran in this pass
  bool failed = false;
  bool aborting = false;
  Error error;
  Context scheduler;
  MemLog mem;  // accesses waiting to be grouped into warp-wide instructions (cucpu_mem.h)
#if defined(CUCPU_TSAN)
  char tsan_barrier = 0;             // address for the barrier's release/acquire
  void* tsan_block_start = nullptr;  // scheduler -> this block's fibers
  void* tsan_block_end = nullptr;    // this block's fibers -> scheduler (next block)
  void* tsan_launch_end = nullptr;   // fibers -> launching thread
#endif
};

struct Launch {
  dim3 grid, block;
  size_t dyn_smem = 0;
  std::function<void()> body;  // runs the kernel with the launch's arguments
  const char* kernel_name = nullptr;
  void* kernel_address = nullptr;
  Order order = Order::kForward;
  unsigned seed = 1;
  uint64_t num_blocks = 0;
  std::atomic<uint64_t> next_block{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  Error error;  // of the lowest-numbered failed block
  uint64_t error_block = ~uint64_t(0);
  bool count_mem = true;  // CUCPU_MEMSTATS
  std::mutex mem_mutex;
  MemFigures mem;  // of the finished blocks
#if defined(CUCPU_TSAN)
  char tsan_start = 0;  // launching thread -> fibers
  char tsan_end = 0;    // fibers -> launching thread
#endif

  void report(uint64_t linear_block, const Error& e) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (linear_block < error_block) {
      error_block = linear_block;
      error = e;
    }
    failed.store(true, std::memory_order_relaxed);
  }
};

// Event counters for instrumentation (chunkattn/prims.cuh counts bytes moved with them). Each
// worker has its own, so counting inside kernels is a plain add on a word no other thread writes;
// counters_read sums over all workers. Read and reset them between launches.
constexpr int kCounters = 16;

// An OS thread's equipment for running blocks; pooled across launches.
struct Worker {
  std::atomic<uint64_t> counters[kCounters] = {};
  StackPool stacks;
  Block block;
#if defined(CUCPU_TSAN)
  std::vector<void*> tsan_fibers;  // one per stack, reused across blocks (creating one costs ms)
  // A worker's consecutive blocks are ordered through its scheduler (they reuse shared memory):
  // fibers release block_end when they finish, the scheduler acquires it before the next block
  // and releases block_start, which that block's fibers acquire. Fibers of one block are never
  // ordered with each other except by barriers, warp syncs and atomics.
  char tsan_block_start = 0;
  char tsan_block_end = 0;
#endif
};

inline thread_local Worker* tl_worker = nullptr;
inline thread_local Block* tl_block = nullptr;
inline thread_local Thread* tl_thread = nullptr;

#if defined(CUCPU_TSAN)
// The running fiber's record, from the header page of its 512 KiB-aligned stack slot.
inline Thread* current_thread_record() {
  const uintptr_t sp = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  return *reinterpret_cast<Thread**>((sp & ~uintptr_t(StackPool::kSlotBytes - 1)) +
                                     StackPool::kPage);
}
#endif

// The running emulated thread. Device functions called outside a kernel are a host bug.
inline Thread& running_thread(const char* what) {
  Untracked untracked;
  Thread* t = tl_thread;
  if (!t) {
    std::fprintf(stderr, "cucpu: %s called outside a kernel launched with cucpu::launch\n", what);
    std::abort();
  }
  return *t;
}

// A lane's memory access, costed with the rest of its warp-wide instruction (cucpu_mem.h). Host
// code calling a device function outside a launch records nothing.
inline void mem_access(MemSpace space, int category, const void* addr, uint32_t bytes,
                       const std::source_location& site) {
  Untracked untracked;
  Thread* t = tl_thread;
  if (!t || !tl_mem_enabled) return;
  MemLog& log = t->block->mem;
  const SiteKey key{site.file_name(), site.line(), site.column(), space};
  auto it = log.sites.find(key);
  if (it == log.sites.end()) it = log.sites.emplace(key, uint32_t(log.sites.size())).first;
  auto& runs = log.runs[t->index];
  if (runs.size() <= it->second) runs.resize(it->second + 1, {0, 0});
  auto& r = runs[it->second];
  if (r.first != log.epoch) r = {log.epoch, 0};
  log.records.push_back(MemRecord{it->second, r.second++, uint16_t(t->warp), uint8_t(t->lane),
                                  space, uint8_t(category), bytes,
                                  reinterpret_cast<uintptr_t>(addr)});
  if (log.records.size() >= kMemRecordCap) mem_flush(log, false);
}

// ---------------------------------------------------------------------------------------------
// Failing and aborting a block.

inline void begin_abort(Block& b) {
  b.aborting = true;
  for (Thread& t : b.threads)
    if (t.state != State::kDone) t.state = State::kReady;
}

// Records the block's first failure and starts aborting it.
inline void record_failure(Block& b, ErrorKind kind, const std::source_location* site,
                           const uint3& thread_idx, const std::string& message) {
  Untracked untracked;
  if (!b.failed) {
    b.failed = true;
    b.error = Error{};
    b.error.kind = kind;
    b.error.block_idx = b.idx;
    b.error.thread_idx = thread_idx;
    if (site && site->line() != 0) {
      b.error.file = site->file_name();
      b.error.line = site->line();
      b.error.column = site->column();
    }
    b.error.message =
        "block " + format_index(b.idx) + " thread " + format_index(thread_idx) + ": " + message;
  }
  begin_abort(b);
}

// Fails the launch from inside a fiber: records the error and unwinds the calling fiber.
[[noreturn]] inline void fail(Thread& t, ErrorKind kind, const std::source_location& site,
                              const std::string& message) {
  Block* b;
  uint3 idx;
  {
    Untracked untracked;
    b = t.block;
    idx = t.thread_idx;
  }
  record_failure(*b, kind, &site, idx, message);
  throw FiberAbort{};
}

// ---------------------------------------------------------------------------------------------
// Switching between fibers.

// Called by the running fiber `t`, which stops running (it waits, or has finished): runs the next
// ready thread of this pass, or returns to the scheduler at the end of the pass.
inline void run_next(Thread& t, bool finished) {
  Context* from;
  Context* to;
  {
    Untracked untracked;
    Block& b = *t.block;
    Thread* next = nullptr;
    for (size_t j = b.pos + 1; j < b.order.size(); ++j) {
      Thread& u = b.threads[b.order[j]];
      if (u.state == State::kReady) {
        b.pos = j;
        b.progress = true;
        next = &u;
        break;
      }
    }
    if (!next) b.pos = b.order.size();
    tl_thread = next;
#if !defined(CUCPU_TSAN)
    if (next) threadIdx = next->thread_idx;
#endif
    from = &t.context;
    to = next ? &next->context : &b.scheduler;
  }
  switch_context(*from, *to, finished);
}

// The running fiber waits (its state says for what). Returns once woken; throws FiberAbort when
// it is woken to be unwound.
inline void suspend(Thread& t) {
  bool abort;
  {
    Untracked untracked;
    run_next(t, false);
    abort = t.block->aborting;
  }
  if (abort) throw FiberAbort{};
}

// ---------------------------------------------------------------------------------------------
// __syncthreads.

// Wakes every thread at the barrier, after checking they all wait at the same call site.
inline void release_barrier(Block& b) {
  const Thread* first = nullptr;
  for (const Thread& t : b.threads) {
    if (t.state != State::kAtBarrier) continue;
    if (!first) {
      first = &t;
    } else if (!same_location(t.wait_site, first->wait_site)) {
      const std::string msg = "divergent __syncthreads: thread " + format_index(t.thread_idx) +
                              " waits at " + format_location(t.wait_site) + " while thread " +
                              format_index(first->thread_idx) + " waits at " +
                              format_location(first->wait_site);
      record_failure(b, ErrorKind::kDivergentBarrier, &t.wait_site, t.thread_idx, msg);
      throw FiberAbort{};
    }
  }
  mem_flush(b.mem);  // every access before the barrier is complete
  b.released_true = b.barrier_true;
  b.released_arrived = b.barrier_arrived;
  b.barrier_true = 0;
  b.barrier_arrived = 0;
  for (Thread& t : b.threads)
    if (t.state == State::kAtBarrier) t.state = State::kReady;
}

// __syncthreads with a predicate; returns {threads with a non-zero predicate, threads arrived}.
// Threads that have exited do not take part, as on sm_70+.
inline std::pair<int, int> block_barrier(int predicate, const std::source_location& site) {
  Thread& t = running_thread("__syncthreads");
  Block* bp;
  {
    Untracked untracked;
    bp = t.block;
  }
  Block& b = *bp;
#if defined(CUCPU_TSAN)
  __tsan_release(&b.tsan_barrier);
#endif
  std::pair<int, int> result;
  {
    Untracked untracked;
    t.wait_site = site;
    t.wait_name = "__syncthreads";
    t.state = State::kAtBarrier;
    ++b.barrier_arrived;
    b.barrier_true += predicate != 0;
    if (b.barrier_arrived == b.live)
      release_barrier(b);
    else
      suspend(t);
    result = {b.released_true, b.released_arrived};
  }
#if defined(CUCPU_TSAN)
  __tsan_acquire(&b.tsan_barrier);
#endif
  return result;
}

// ---------------------------------------------------------------------------------------------
// Warp collectives. Every lane of `mask` must execute the same collective (same compute function
// and mask; the call sites may differ). The last lane to arrive computes all outputs.

inline bool collective_matches(const Warp& w, uint32_t mask, CollectiveFn fn) {
  for (uint32_t m = mask; m; m &= m - 1) {
    const LaneWait& lw = w.wait[__builtin_ctz(m)];
    if (lw.mask != mask || lw.fn != fn) return false;
  }
  return true;
}

inline void warp_collective(const char* name, uint32_t mask, CollectiveFn fn, const void* ctx,
                            const void* in, size_t in_bytes, void* out, size_t out_bytes,
                            const std::source_location& site) {
  Thread& t = running_thread(name);
  Untracked untracked;
  Block& b = *t.block;
  Warp& w = b.warps[t.warp];
  const uint32_t bit = 1u << t.lane;
  if (!(mask & bit))
    fail(t, ErrorKind::kMask, site,
         std::string(name) + " at " + format_location(site) + " with mask " + format_mask(mask) +
             " is executed by lane " + std::to_string(t.lane) + ", which is not in the mask");
  if (mask & ~w.live)
    fail(t, ErrorKind::kExitedLane, site,
         std::string(name) + " at " + format_location(site) + " with mask " + format_mask(mask) +
             " names lanes that have exited or do not exist (lanes alive: " + format_mask(w.live) +
             ")");
  if (in_bytes) std::memcpy(w.in[t.lane], in, in_bytes);
  w.wait[t.lane] = LaneWait{mask, fn, ctx, name, site};
  w.waiting |= bit;
  t.wait_site = site;
  t.wait_name = name;
  if ((w.waiting & mask) == mask && collective_matches(w, mask, fn)) {
    fn(w.in, w.out, mask, ctx);
    w.waiting &= ~mask;
    Thread* lanes = &b.threads[size_t(t.warp) * 32];
    for (uint32_t m = mask & ~bit; m; m &= m - 1) lanes[__builtin_ctz(m)].state = State::kReady;
  } else {
    t.state = State::kInCollective;
    suspend(t);
  }
  if (out_bytes) std::memcpy(out, w.out[t.lane], out_bytes);
}

// ---------------------------------------------------------------------------------------------
// Thread start and exit.

// A thread returns from the kernel: it leaves its warp and the block. Collectives still waiting
// for it can never complete; a barrier waiting only for it is released.
inline void thread_exit(Thread& t) {
  Untracked untracked;
  Block& b = *t.block;
  Warp& w = b.warps[t.warp];
  const uint32_t bit = 1u << t.lane;
  w.live &= ~bit;
  --b.live;
  t.exited = true;
  t.state = State::kDone;
  for (uint32_t m = w.waiting; m; m &= m - 1) {
    const LaneWait& lw = w.wait[__builtin_ctz(m)];
    if (lw.mask & bit)
      fail(t, ErrorKind::kExitedLane, lw.site,
           std::string("thread ") + format_index(t.thread_idx) + " (lane " +
               std::to_string(t.lane) + ") exited while " + lw.name + " at " +
               format_location(lw.site) + " with mask " + format_mask(lw.mask) + " waits for it");
  }
  if (b.barrier_arrived > 0 && b.barrier_arrived == b.live) release_barrier(b);
}

inline std::string demangle(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = (status == 0 && d) ? d : name;
  std::free(d);
  return s;
}

// Never returns: the fiber finishes and is not resumed again.
[[noreturn]] inline void finish_fiber(Thread& t) {
  run_next(t, true);
  std::abort();  // unreachable: a finished fiber is never resumed
}

inline void fiber_main(void* arg) {
  fiber_entered();
  Thread& t = *static_cast<Thread*>(arg);
  Block* b;
  bool run;
  {
    Untracked untracked;
    b = t.block;
    run = !b->aborting;
  }
#if defined(CUCPU_TSAN)
  __tsan_acquire(b->tsan_block_start);
#endif
  try {
    if (run) {
      const std::function<void()>* body;
      {
        Untracked untracked;
        body = &b->launch->body;
      }
      (*body)();
      thread_exit(t);
    }
  } catch (const FiberAbort&) {
  } catch (const std::exception& e) {
    record_failure(
        *b, ErrorKind::kException, nullptr, t.thread_idx,
        std::string("uncaught C++ exception ") + demangle(typeid(e).name()) + ": " + e.what());
  } catch (...) {
    record_failure(*b, ErrorKind::kException, nullptr, t.thread_idx,
                   "uncaught C++ exception of unknown type");
  }
#if defined(CUCPU_TSAN)
  __tsan_release(b->tsan_block_end);
  __tsan_release(b->tsan_launch_end);
#endif
  {
    Untracked untracked;
    if (!t.exited) {
      b->warps[t.warp].live &= ~(1u << t.lane);
      --b->live;
      t.exited = true;
      t.state = State::kDone;
    }
  }
  finish_fiber(t);
}

// ---------------------------------------------------------------------------------------------
// Deadlock diagnosis (scheduler side): names the collective that can never complete and the lane
// it waits for, plus where every waiting thread is.

inline void diagnose_deadlock(Block& b) {
  std::string waiting;  // "48 threads at __syncthreads (f:1:2); ..."
  {
    struct Site {
      const char* name;
      std::source_location site;
      int count;
    };
    std::vector<Site> sites;
    for (const Thread& t : b.threads) {
      if (t.state == State::kDone) continue;
      auto it = std::find_if(sites.begin(), sites.end(), [&](const Site& s) {
        return std::strcmp(s.name, t.wait_name) == 0 && same_location(s.site, t.wait_site);
      });
      if (it == sites.end())
        sites.push_back({t.wait_name, t.wait_site, 1});
      else
        ++it->count;
    }
    for (const Site& s : sites)
      waiting += (waiting.empty() ? "" : "; ") + std::to_string(s.count) + " thread(s) in " +
                 s.name + " at " + format_location(s.site);
  }
  for (size_t wi = 0; wi < b.warps.size(); ++wi) {
    const Warp& w = b.warps[wi];
    if (!w.waiting) continue;
    const unsigned first = __builtin_ctz(w.waiting);
    const LaneWait& g = w.wait[first];
    const Thread& ft = b.threads[wi * 32 + first];
    std::string blocker = "(no blocking lane found)";
    for (uint32_t m = g.mask; m; m &= m - 1) {
      const unsigned k = __builtin_ctz(m);
      if ((w.waiting >> k & 1) && w.wait[k].mask == g.mask && w.wait[k].fn == g.fn) continue;
      const Thread& o = b.threads[wi * 32 + k];
      blocker = "lane " + std::to_string(k) + " (thread " + format_index(o.thread_idx) +
                ") waits in " + o.wait_name + " at " + format_location(o.wait_site);
      if (o.state == State::kInCollective) blocker += " with mask " + format_mask(w.wait[k].mask);
      break;
    }
    record_failure(b, ErrorKind::kDeadlock, &g.site, ft.thread_idx,
                   "deadlock: " + std::string(g.name) + " at " + format_location(g.site) +
                       " with mask " + format_mask(g.mask) + " (warp " + std::to_string(wi) +
                       ") can never complete: " + blocker + ". Waiting: " + waiting);
    return;
  }
  const Thread* first = nullptr;
  for (const Thread& t : b.threads)
    if (t.state != State::kDone) {
      first = &t;
      break;
    }
  record_failure(b, ErrorKind::kDeadlock, first ? &first->wait_site : nullptr,
                 first ? first->thread_idx : uint3{},
                 "deadlock: no thread can make progress. Waiting: " + waiting);
}

// ---------------------------------------------------------------------------------------------
// Dynamic shared memory arrays (CUCPU_DYNAMIC_SHARED), so that ASan can poison the part past the
// launch's dynamic shared memory size, and so every block starts with them filled with 0xff bytes
// (NaN as float, half and bfloat16): a read before any write shows.

struct DynamicShared {
  void* (*address)();  // of the running OS thread's copy
  size_t bytes;
};
inline std::mutex& dynamic_shared_mutex() {
  static std::mutex m;
  return m;
}
inline std::vector<DynamicShared>& dynamic_shared_arrays() {
  static auto* arrays = new std::vector<DynamicShared>;
  return *arrays;
}
inline bool register_dynamic_shared(void* (*address)(), size_t bytes) {
  std::lock_guard<std::mutex> lock(dynamic_shared_mutex());
  dynamic_shared_arrays().push_back({address, bytes});
  return true;
}
inline std::vector<DynamicShared> dynamic_shared_snapshot() {
  std::lock_guard<std::mutex> lock(dynamic_shared_mutex());
  return dynamic_shared_arrays();
}

// ---------------------------------------------------------------------------------------------
// Workers.

inline std::mutex& worker_pool_mutex() {
  static std::mutex m;
  return m;
}
inline std::vector<Worker*>& worker_pool() {
  static auto* pool = new std::vector<Worker*>;  // never destroyed: workers live for the process
  return *pool;
}
inline std::vector<Worker*>& all_workers() {  // under worker_pool_mutex
  static auto* all = new std::vector<Worker*>;
  return *all;
}
inline Worker* acquire_worker() {
  std::lock_guard<std::mutex> lock(worker_pool_mutex());
  auto& pool = worker_pool();
  if (pool.empty()) {
    all_workers().push_back(new Worker);
    return all_workers().back();
  }
  Worker* w = pool.back();
  pool.pop_back();
  return w;
}

// Counts outside any launch (host code calling a counted device function).
inline std::atomic<uint64_t> host_counters[kCounters] = {};

// Adds n to counter `slot` (0 <= slot < kCounters).
inline void counter_add(int slot, uint64_t n) {
  Worker* w;
  {
    Untracked untracked;
    w = tl_worker;
  }
  if (w) {
    std::atomic<uint64_t>& c = w->counters[slot];
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  } else {
    host_counters[slot].fetch_add(n, std::memory_order_relaxed);
  }
}
// Totals over all workers.
inline void counters_read(uint64_t (&out)[kCounters]) {
  std::lock_guard<std::mutex> lock(worker_pool_mutex());
  for (int i = 0; i < kCounters; ++i) out[i] = host_counters[i].load(std::memory_order_relaxed);
  for (Worker* w : all_workers())
    for (int i = 0; i < kCounters; ++i) out[i] += w->counters[i].load(std::memory_order_relaxed);
}
inline void counters_reset() {
  std::lock_guard<std::mutex> lock(worker_pool_mutex());
  for (int i = 0; i < kCounters; ++i) host_counters[i].store(0, std::memory_order_relaxed);
  for (Worker* w : all_workers())
    for (int i = 0; i < kCounters; ++i) w->counters[i].store(0, std::memory_order_relaxed);
}
inline void release_worker(Worker* w) {
  std::lock_guard<std::mutex> lock(worker_pool_mutex());
  worker_pool().push_back(w);
}

// Runs block number `linear` of the launch to completion (or failure) on the calling OS thread.
inline void run_block(Launch& L, Worker& W, uint64_t linear,
                      const std::vector<DynamicShared>& dyn_arrays) {
  Untracked untracked;
  Block& b = W.block;
  const unsigned nt = L.block.x * L.block.y * L.block.z;
  const uint3 bid{unsigned(linear % L.grid.x), unsigned((linear / L.grid.x) % L.grid.y),
                  unsigned(linear / (uint64_t(L.grid.x) * L.grid.y))};
  if (!W.stacks.reserve(nt)) {
    Error e;
    e.kind = ErrorKind::kInvalidLaunch;
    e.block_idx = bid;
    e.message = "cannot map fiber stacks for " + std::to_string(nt) + " threads";
    L.report(linear, e);
    return;
  }
  b.launch = &L;
  b.idx = bid;
  b.linear = linear;
  b.live = int(nt);
  b.barrier_arrived = b.barrier_true = b.released_true = b.released_arrived = 0;
  b.failed = b.aborting = false;
  b.error = Error{};
  b.threads.resize(nt);
  b.warps.resize((nt + 31) / 32);
  b.mem.records.clear();
  b.mem.figures = MemFigures{};
  if (b.mem.runs.size() < nt) b.mem.runs.resize(nt);
  ++b.mem.epoch;
  tl_mem_enabled = L.count_mem;
  for (Warp& w : b.warps) w.live = w.waiting = 0;
#if !defined(CUCPU_TSAN)
  blockIdx = bid;
  blockDim = L.block;
  gridDim = L.grid;
#else
  b.tsan_block_start = &W.tsan_block_start;
  b.tsan_block_end = &W.tsan_block_end;
  b.tsan_launch_end = &L.tsan_end;
  __tsan_acquire(&L.tsan_start);      // what the host wrote before the launch
  __tsan_acquire(&W.tsan_block_end);  // the previous block on this worker
  __tsan_release(&W.tsan_block_start);
  while (W.tsan_fibers.size() < nt) W.tsan_fibers.push_back(__tsan_create_fiber(0));
#endif
  for (const DynamicShared& d : dyn_arrays)
    std::memset(d.address(), 0xff, std::min(d.bytes, L.dyn_smem));
  for (unsigned i = 0; i < nt; ++i) {
    Thread& t = b.threads[i];
    t.thread_idx = uint3{i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
    t.block_idx = bid;
    t.block_dim = L.block;
    t.grid_dim = L.grid;
    t.index = i;
    t.lane = i % 32;
    t.warp = i / 32;
    t.state = State::kReady;
    t.exited = false;
    t.block = &b;
    t.wait_name = "";
    t.wait_site = std::source_location{};
    t.async_copies.clear();
    t.async_done = 0;
    t.async_committed = 0;
    b.warps[t.warp].live |= 1u << t.lane;
#if defined(CUCPU_ASAN)
    // A reused stack still carries the shadow poison of the frames that last ran on it.
    ASAN_UNPOISON_MEMORY_REGION(W.stacks.bottom(i), W.stacks.bytes());
#endif
    make_context(t.context, W.stacks.bottom(i), W.stacks.bytes(), &fiber_main, &t, i);
#if defined(CUCPU_TSAN)
    t.context.tsan_fiber = W.tsan_fibers[i];
    *W.stacks.header(i) = &t;
#endif
  }
  init_thread_context(b.scheduler);
  b.order.resize(nt);
  for (unsigned i = 0; i < nt; ++i) b.order[i] = i;
  if (L.order == Order::kReverse) std::reverse(b.order.begin(), b.order.end());
  std::mt19937 rng(L.seed * 7919u + unsigned(linear) * 131u);
  tl_block = &b;
  while (b.live > 0) {
    if (L.order == Order::kRandom) std::shuffle(b.order.begin(), b.order.end(), rng);
    b.progress = false;
    for (b.pos = 0; b.pos < b.order.size(); ++b.pos) {
      Thread& t = b.threads[b.order[b.pos]];
      if (t.state != State::kReady) continue;
      b.progress = true;
      tl_thread = &t;
#if !defined(CUCPU_TSAN)
      threadIdx = t.thread_idx;
#endif
      switch_context(b.scheduler, t.context, false);  // back at the end of the pass
    }
    if (!b.progress) {
      if (b.aborting) break;  // cannot happen: aborted fibers always finish
      diagnose_deadlock(b);
    }
  }
  tl_thread = nullptr;
  tl_block = nullptr;
  if (b.failed) {
    L.report(linear, b.error);
  } else if (L.count_mem) {
    mem_flush(b.mem);
    std::lock_guard<std::mutex> lock(L.mem_mutex);
    L.mem.add(b.mem.figures);
  }
}

inline bool parse_env(Order* order, unsigned* seed, unsigned* workers, bool* count_mem,
                      std::string* problem) {
  if (const char* e = std::getenv("CUCPU_ORDER"); e && *e) {
    if (!std::strcmp(e, "forward"))
      *order = Order::kForward;
    else if (!std::strcmp(e, "reverse"))
      *order = Order::kReverse;
    else if (!std::strcmp(e, "random"))
      *order = Order::kRandom;
    else {
      *problem = std::string("CUCPU_ORDER must be forward, reverse or random, not '") + e + "'";
      return false;
    }
  }
  if (const char* e = std::getenv("CUCPU_MEMSTATS"); e && *e) *count_mem = std::strcmp(e, "0") != 0;
  if (const char* e = std::getenv("CUCPU_SEED"); e && *e)
    *seed = unsigned(std::strtoul(e, nullptr, 10));
  *workers = std::max(1u, std::thread::hardware_concurrency());
  if (const char* e = std::getenv("CUCPU_WORKERS"); e && *e) {
    const long n = std::strtol(e, nullptr, 10);
    if (n < 1 || n > 4096) {
      *problem = std::string("CUCPU_WORKERS must be a number from 1 to 4096, not '") + e + "'";
      return false;
    }
    *workers = unsigned(n);
  }
  return true;
}

// The kernel's name for diagnostics: the given one, else its demangled symbol without the
// parameter list (found with dladdr: needs the symbol exported, e.g. -rdynamic for executables).
inline std::string kernel_display_name(const Launch& L) {
  if (L.kernel_name) return L.kernel_name;
  Dl_info info{};
  if (L.kernel_address && dladdr(L.kernel_address, &info) && info.dli_sname &&
      info.dli_saddr == L.kernel_address) {
    std::string s = demangle(info.dli_sname);
    if (!s.empty() && s.back() == ')') {  // strip "(params)"
      int depth = 0;
      for (size_t i = s.size(); i-- > 0;) {
        if (s[i] == ')') ++depth;
        if (s[i] == '(' && --depth == 0) {
          s.resize(i);
          break;
        }
      }
    }
    return s;
  }
  char buf[32];
  snprintf(buf, sizeof buf, "kernel@%p", L.kernel_address);
  return buf;
}

inline Error invalid_launch(const Launch& L, std::string message) {
  Error e;
  e.kind = ErrorKind::kInvalidLaunch;
  e.message = std::move(message);
  e.kernel = kernel_display_name(L);
  return e;
}

inline Error run(Launch& L) {
  if (tl_block) return invalid_launch(L, "cucpu::launch called from inside a kernel");
  const uint64_t nt = uint64_t(L.block.x) * L.block.y * L.block.z;
  if (nt == 0 || nt > 1024 || L.block.z > 64)
    return invalid_launch(L, "invalid block size " +
                                 format_index(uint3{L.block.x, L.block.y, L.block.z}) +
                                 ": 1 to 1024 threads, z at most 64");
  if (L.grid.x == 0 || L.grid.y == 0 || L.grid.z == 0 || L.grid.y > 65535 || L.grid.z > 65535)
    return invalid_launch(L,
                          "invalid grid size " + format_index(uint3{L.grid.x, L.grid.y, L.grid.z}));
  if (L.dyn_smem > CUCPU_DYN_SMEM_BYTES)
    return invalid_launch(L, "dynamic shared memory of " + std::to_string(L.dyn_smem) +
                                 " bytes exceeds CUCPU_DYN_SMEM_BYTES (" +
                                 std::to_string(CUCPU_DYN_SMEM_BYTES) + ")");
  unsigned workers = 1;
  std::string problem;
  if (!parse_env(&L.order, &L.seed, &workers, &L.count_mem, &problem))
    return invalid_launch(L, problem);
  L.num_blocks = uint64_t(L.grid.x) * L.grid.y * L.grid.z;
  const std::vector<DynamicShared> dyn_arrays = dynamic_shared_snapshot();
#if defined(CUCPU_TSAN)
  __tsan_release(&L.tsan_start);
#endif
  auto work = [&L, &dyn_arrays]() {
    Worker* W = acquire_worker();
    tl_worker = W;
#if defined(CUCPU_ASAN)
    // Reads and writes past the launch's dynamic shared memory size are reported.
    for (const DynamicShared& d : dyn_arrays)
      if (d.bytes > L.dyn_smem)
        ASAN_POISON_MEMORY_REGION(static_cast<char*>(d.address()) + L.dyn_smem,
                                  d.bytes - L.dyn_smem);
#endif
    for (;;) {
      if (L.failed.load(std::memory_order_relaxed)) break;
      const uint64_t i = L.next_block.fetch_add(1, std::memory_order_relaxed);
      if (i >= L.num_blocks) break;
      run_block(L, *W, i, dyn_arrays);
    }
#if defined(CUCPU_ASAN)
    for (const DynamicShared& d : dyn_arrays) ASAN_UNPOISON_MEMORY_REGION(d.address(), d.bytes);
#endif
    tl_worker = nullptr;
    release_worker(W);
  };
  const unsigned helpers = unsigned(std::min<uint64_t>(workers, L.num_blocks)) - 1;
  std::vector<std::thread> threads;
  threads.reserve(helpers);
  for (unsigned i = 0; i < helpers; ++i) {
    try {
      threads.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // fewer OS threads: the ones we have share the blocks
    }
  }
  work();
  for (std::thread& t : threads) t.join();
#if defined(CUCPU_TSAN)
  __tsan_acquire(&L.tsan_end);
#endif
  kernel_stats_add(kernel_display_name(L), L.mem);
  if (!L.failed.load()) return Error{};
  Error e = L.error;
  e.kernel = kernel_display_name(L);
  return e;
}

template <class... P, class... A>
Error launch_impl(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem,
                  A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
  // The arguments are converted to the parameter types once; every thread gets its own copies.
  const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  Launch L;
  L.grid = grid;
  L.block = block;
  L.dyn_smem = dyn_smem;
  L.kernel_name = name;
  L.kernel_address = reinterpret_cast<void*>(kernel);
  L.body = [&params, kernel]() { std::apply(kernel, params); };
  return run(L);
}

// kernel<<<grid, block, dyn_smem>>>(args...), run to completion on the CPU. Never aborts, exits or
// hangs on a kernel diagnostic: the failed block's fibers are unwound and the error returned.
template <class... P, class... A>
Error launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem, A&&... args) {
  return launch_impl(nullptr, kernel, grid, block, dyn_smem, std::forward<A>(args)...);
}

// Same, with the kernel's name for Error::kernel (generated launchers know it).
template <class... P, class... A>
Error launch_named(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t dyn_smem,
                   A&&... args) {
  return launch_impl(name, kernel, grid, block, dyn_smem, std::forward<A>(args)...);
}

}  // namespace cucpu

// extern __shared__ T name[];  needs one of these at namespace scope, in the kernel's namespace.
// Every copy holds CUCPU_DYN_SMEM_BYTES; `inline`, so a header may hold it.
#define CUCPU_DYNAMIC_SHARED(T, name)                                               \
  alignas(128) inline thread_local T name[CUCPU_DYN_SMEM_BYTES / sizeof(T)];        \
  inline const bool cucpu_dynamic_shared_##name = ::cucpu::register_dynamic_shared( \
      []() -> void* { return static_cast<void*>(name); }, sizeof(name));
