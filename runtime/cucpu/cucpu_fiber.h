// cucpu_fiber.h — fibers: execution contexts, their stacks, and the switch between them, with the
// annotations AddressSanitizer and ThreadSanitizer need to follow a program across switches.
// Included by cucpu.h; not a public entry point.
#pragma once

namespace cucpu {

// ---------------------------------------------------------------------------------------------
// ThreadSanitizer: the shim's own bookkeeping (block and warp records, touched by every fiber of
// a block) is not kernel memory; accesses inside an Untracked scope are not checked. Scopes nest.
#if defined(CUCPU_TSAN)
inline void untracked_begin() {
  AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
  AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
}
inline void untracked_end() {
  AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
}
#else
inline void untracked_begin() {}
inline void untracked_end() {}
#endif
struct Untracked {
  Untracked() { untracked_begin(); }
  ~Untracked() { untracked_end(); }
  Untracked(const Untracked&) = delete;
  Untracked& operator=(const Untracked&) = delete;
};

// ---------------------------------------------------------------------------------------------
// The x86-64 context switch: ~2 ns. Saves the callee-saved registers, MXCSR and the x87 control
// word on the running stack, stores rsp to *save_sp, loads load_sp and pops the other context.
// A new context starts in cucpu_fiber_start with r12 = argument, r13 = entry function.
#if !defined(CUCPU_UCONTEXT)
extern "C" void cucpu_switch_context(void** save_sp, void* load_sp);
extern "C" void cucpu_fiber_start();
asm(R"(
  .text
  .weak cucpu_switch_context
  .hidden cucpu_switch_context
  .type cucpu_switch_context,@function
cucpu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cucpu_switch_context,.-cucpu_switch_context

  .weak cucpu_fiber_start
  .hidden cucpu_fiber_start
  .type cucpu_fiber_start,@function
cucpu_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size cucpu_fiber_start,.-cucpu_fiber_start
)");
#endif

// An execution context: a fiber, or the OS thread that schedules fibers.
struct Context {
#if defined(CUCPU_UCONTEXT)
  ucontext_t uc;
#else
  void* sp = nullptr;
#endif
  void* stack_bottom = nullptr;  // lowest address of the stack it runs on (for ASan)
  size_t stack_bytes = 0;
#if defined(CUCPU_TSAN)
  void* tsan_fiber = nullptr;  // TSan's thread state for this context
#endif
};

using FiberEntry = void (*)(void*);

#if defined(CUCPU_UCONTEXT)
inline void ucontext_entry(unsigned entry_lo, unsigned entry_hi, unsigned arg_lo, unsigned arg_hi) {
  auto entry = reinterpret_cast<FiberEntry>((uintptr_t(entry_hi) << 32) | entry_lo);
  entry(reinterpret_cast<void*>((uintptr_t(arg_hi) << 32) | arg_lo));
}
#endif

// Prepares `c` to run entry(arg) on [stack_bottom, stack_bottom + bytes) when first switched to.
// `colour` staggers the stack tops of sibling fibers so their hot frames do not all map to the
// same L1 sets.
inline void make_context(Context& c, char* stack_bottom, size_t bytes, FiberEntry entry, void* arg,
                         unsigned colour) {
  c.stack_bottom = stack_bottom;
  c.stack_bytes = bytes;
#if defined(CUCPU_UCONTEXT)
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack_bottom;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  const uintptr_t e = reinterpret_cast<uintptr_t>(entry), a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&c.uc, reinterpret_cast<void (*)()>(ucontext_entry), 4, unsigned(e),
              unsigned(e >> 32), unsigned(a), unsigned(a >> 32));
  (void)colour;
#else
  const uintptr_t top =
      (reinterpret_cast<uintptr_t>(stack_bottom) + bytes - (colour * 320u) % 4096u) &
      ~uintptr_t(15);
  // The frame cucpu_switch_context pops: control words, r15, r14, r13, r12, rbx, rbp, return.
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 128);
  sp[0] = 0x037F00001F80ull;  // MXCSR default (low 32 bits) | x87 control word default
  sp[1] = 0;                  // r15
  sp[2] = 0;                  // r14
  sp[3] = reinterpret_cast<uint64_t>(entry);  // r13
  sp[4] = reinterpret_cast<uint64_t>(arg);    // r12
  sp[5] = 0;                                  // rbx
  sp[6] = 0;                                  // rbp = 0 ends frame-pointer backtraces here
  sp[7] = reinterpret_cast<uint64_t>(&cucpu_fiber_start);
  c.sp = sp;
#endif
}

// Describes the running OS thread as a context (the scheduler's), so fibers can switch back.
inline void init_thread_context(Context& c) {
#if defined(CUCPU_ASAN)
  pthread_attr_t attr;
  pthread_getattr_np(pthread_self(), &attr);
  pthread_attr_getstack(&attr, &c.stack_bottom, &c.stack_bytes);
  pthread_attr_destroy(&attr);
#endif
#if defined(CUCPU_TSAN)
  c.tsan_fiber = __tsan_get_current_fiber();
#endif
  (void)c;
}

// Switches from the running context `from` to `to`; returns when something switches back to
// `from`. `from_finished`: `from` is never resumed (ASan then drops its fake stack).
inline void switch_context(Context& from, Context& to, bool from_finished) {
  // Read everything needed before telling TSan that the other fiber runs: accesses after that
  // point are attributed to it.
#if defined(CUCPU_UCONTEXT)
  ucontext_t* from_uc = &from.uc;
  ucontext_t* to_uc = &to.uc;
#else
  void** from_sp = &from.sp;
  void* to_sp = to.sp;
#endif
#if defined(CUCPU_ASAN)
  void* to_bottom = to.stack_bottom;
  size_t to_bytes = to.stack_bytes;
#endif
#if defined(CUCPU_TSAN)
  __tsan_switch_to_fiber(to.tsan_fiber, 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
#if defined(CUCPU_ASAN)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_finished ? nullptr : &fake_stack, to_bottom, to_bytes);
#endif
#if defined(CUCPU_UCONTEXT)
  swapcontext(from_uc, to_uc);
#else
  cucpu_switch_context(from_sp, to_sp);
#endif
#if defined(CUCPU_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  (void)from_finished;
}

// First thing a new fiber runs (completes the switch that started it).
inline void fiber_entered() {
#if defined(CUCPU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

// ---------------------------------------------------------------------------------------------
// Fiber stacks, kept by a worker across blocks and launches (mmap + guard pages are slow).
// Layout of slot i: [guard page][header page][stack of kStackBytes]. Under TSan the slots are
// 512 KiB-aligned and the header page holds a pointer to the fiber's thread record, so the
// running fiber is found from the stack pointer alone.
class StackPool {
 public:
  static constexpr size_t kPage = 4096;
  static constexpr size_t kStackBytes = CUCPU_STACK_BYTES;
#if defined(CUCPU_TSAN)
  static constexpr size_t kSlotBytes = 512 * 1024;
  static_assert(kStackBytes + 2 * kPage <= kSlotBytes, "CUCPU_STACK_BYTES too large under TSan");
#else
  static constexpr size_t kSlotBytes = kStackBytes + 2 * kPage;
#endif

  StackPool() = default;
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;
  ~StackPool() { release(); }

  // Makes stacks 0..n-1 available. Only call while no fiber runs on them. Returns false when the
  // memory cannot be mapped.
  bool reserve(size_t n) {
    if (n <= count_) return true;
    release();
    size_t want = 32;
    while (want < n) want *= 2;
    const size_t bytes = want * kSlotBytes + (kAligned ? kSlotBytes : 0);
    void* raw = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) return false;
    map_ = static_cast<char*>(raw);
    map_bytes_ = bytes;
    base_ = kAligned ? reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(raw) + kSlotBytes - 1) &
                                               ~uintptr_t(kSlotBytes - 1))
                     : map_;
    for (size_t i = 0; i < want; ++i) mprotect(base_ + i * kSlotBytes, kPage, PROT_NONE);
    count_ = want;
    return true;
  }

  // Lowest usable address of stack i; the stack has kStackBytes (more under TSan).
  char* bottom(size_t i) const { return base_ + i * kSlotBytes + 2 * kPage; }
  size_t bytes() const { return kSlotBytes - 2 * kPage; }
  // The header word of stack i (TSan: the fiber's thread record).
  void** header(size_t i) const { return reinterpret_cast<void**>(base_ + i * kSlotBytes + kPage); }

 private:
#if defined(CUCPU_TSAN)
  static constexpr bool kAligned = true;
#else
  static constexpr bool kAligned = false;
#endif
  void release() {
    if (map_) munmap(map_, map_bytes_);
    map_ = base_ = nullptr;
    map_bytes_ = count_ = 0;
  }
  char* map_ = nullptr;
  char* base_ = nullptr;
  size_t map_bytes_ = 0;
  size_t count_ = 0;
};

}  // namespace cucpu
