#include "core/threading.h"

#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() {}
#endif

namespace ox {
namespace {

// True on a thread that is running pool work (a worker, or a caller inside its own call):
// a parallel_for there runs inline. Asking the pool again would mean try_lock on a mutex
// this thread may already hold, which std::mutex leaves undefined.
thread_local bool t_in_pool_call = false;

struct InPoolCall {
  bool outer = t_in_pool_call;
  InPoolCall() { t_in_pool_call = true; }
  ~InPoolCall() { t_in_pool_call = outer; }
};

// The first exception any chunk of one call threw (std::bad_alloc from a kernel's scratch, say).
// Chunks run on threads that must not unwind (a pool worker, an OpenMP team thread): each
// catches, the call still waits for every chunk, and then the caller rethrows.
class FirstError {
 public:
  template <class F> void run(F&& chunk) {
    try {
      chunk();
    } catch (...) {
      if (!failed_.exchange(true, std::memory_order_acq_rel)) error_ = std::current_exception();
    }
  }
  void rethrow() {
    if (!failed_.load(std::memory_order_acquire)) return;
    std::exception_ptr error = error_;
    error_ = nullptr;
    failed_.store(false, std::memory_order_release);
    std::rethrow_exception(error);
  }

 private:
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
};

int default_threads() {
  if (const char* env = std::getenv("OXKERNELS_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

// Workers wait for a new generation number, spinning briefly (a kernel launch
// often follows another within microseconds) and then sleeping.
//
// The chunks of a call are claimed, not assigned: the caller and the workers
// take chunk numbers from one atomic word that also holds the call's
// generation, and the caller only waits for chunks someone has claimed. On a
// loaded machine a worker that is not scheduled in time costs nothing: the
// caller runs its chunk too (a call never waits for a thread that has not started).
class Pool {
 public:
  explicit Pool(int threads) { resize(threads); }
  ~Pool() { stop(); }

  int threads() const { return threads_; }

  void resize(int threads) {
    std::lock_guard<std::mutex> busy(busy_);
    stop();
    threads_ = std::min(std::max(1, threads), 4096);
    quit_ = false;
    // New workers start from the current generation: an older one would make
    // them run the previous call's (long gone) range function.
    const uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, gen] { work(gen); });
  }

  // Returns false when the pool is busy with another caller (nested calls never get here).
  bool try_run(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    InPoolCall inside;
    int64_t chunks = std::min<int64_t>(threads_, (n + grain - 1) / grain);
    if (chunks <= 1) {
      fn(ctx, 0, n);
      return true;
    }
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lock(m_);
      fn_ = fn;
      ctx_ = ctx;
      n_ = n;
      done_.store(0, std::memory_order_relaxed);
      gen = generation_.load(std::memory_order_relaxed) + 1;
      claims_.store(claim_word(gen, chunks, 0), std::memory_order_release);
      generation_.store(gen, std::memory_order_release);
    }
    cv_.notify_all();
    run_claimed(gen);
    while (done_.load(std::memory_order_acquire) < chunks) cpu_relax();
    error_.rethrow();
    return true;
  }

 private:
  // (generation mod 2^32, chunk count, next unclaimed chunk) in one word.
  static uint64_t claim_word(uint64_t gen, int64_t chunks, int64_t next) {
    return (gen << 32) | (static_cast<uint64_t>(chunks) << 16) | static_cast<uint64_t>(next);
  }

  // Claims and runs chunks of call `gen` until none is left (or another call began).
  void run_claimed(uint64_t gen) {
    uint64_t word = claims_.load(std::memory_order_acquire);
    for (;;) {
      if ((word >> 32) != (gen & 0xffffffffu)) return;
      const int64_t chunks = static_cast<int64_t>((word >> 16) & 0xffff), next = static_cast<int64_t>(word & 0xffff);
      if (next >= chunks) return;
      if (!claims_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        continue;
      const int64_t begin = n_ * next / chunks, end = n_ * (next + 1) / chunks;
      if (begin < end) error_.run([&] { fn_(ctx_, begin, end); });
      done_.fetch_add(1, std::memory_order_acq_rel);
      word = claims_.load(std::memory_order_acquire);
    }
  }

  void work(uint64_t seen) {
    t_in_pool_call = true;
    for (;;) {
      uint64_t gen = generation_.load(std::memory_order_acquire);
      for (int spin = 0; gen == seen && spin < 2000 && !quit_.load(); ++spin) {
        cpu_relax();
        gen = generation_.load(std::memory_order_acquire);
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return quit_.load() || generation_.load() != seen; });
        gen = generation_.load(std::memory_order_acquire);
      }
      if (quit_.load()) return;
      seen = gen;
      run_claimed(gen);
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(m_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  int threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex busy_, m_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> claims_{0};
  std::atomic<int64_t> done_{0};
  FirstError error_;
  std::atomic<bool> quit_{false};
  RangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
};

std::mutex g_pool_mutex;
Pool* g_pool = nullptr;

Pool& pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool) g_pool = new Pool(default_threads());  // never destroyed: workers may outlive exit
  return *g_pool;
}

// GNU OpenMP's entry point for `#pragma omp parallel` (Intel's runtime exports it too):
// runs body(data) on a team of `threads` threads, the caller one of them, and returns
// when all have finished. Null until share_openmp_threads() finds it in the process.
using GompParallel = void (*)(void (*body)(void*), void* data, unsigned threads, unsigned flags);
std::atomic<GompParallel> g_gomp_parallel{nullptr};

// omp_get_max_threads: the team size torch.set_num_threads chose (what torch's own
// parallel ops use), found with GOMP_parallel.
using OmpMaxThreads = int (*)();
std::atomic<OmpMaxThreads> g_omp_max_threads{nullptr};

// Whether set_num_threads chose our count; until then, on torch's team it is torch's.
std::atomic<bool> g_count_chosen{false};

}  // namespace

int num_threads() {
  if (!g_count_chosen.load(std::memory_order_relaxed) && g_gomp_parallel.load(std::memory_order_acquire))
    if (OmpMaxThreads team = g_omp_max_threads.load(std::memory_order_acquire)) return std::max(1, team());
  return pool().threads();
}

void set_num_threads(int n) {
  g_count_chosen.store(true, std::memory_order_relaxed);
  Pool& p = pool();
  if (n < 1) n = 1;
  if (n != p.threads()) p.resize(n);
}

namespace {

// One parallel_for on an OpenMP team: the same chunks as the pool's (chunk c is
// [n·c/chunks, n·(c+1)/chunks)), claimed from a counter by whichever team thread is free.
struct TeamCall {
  int64_t n, chunks;
  RangeFn fn;
  void* ctx;
  std::atomic<int64_t> next{0};
  FirstError error;
};

void team_body(void* data) {
  auto& call = *static_cast<TeamCall*>(data);
  InPoolCall inside;
  for (int64_t c = call.next.fetch_add(1); c < call.chunks; c = call.next.fetch_add(1)) {
    const int64_t begin = call.n * c / call.chunks, end = call.n * (c + 1) / call.chunks;
    if (begin < end) call.error.run([&] { call.fn(call.ctx, begin, end); });
  }
}

}  // namespace

// GNU OpenMP does not survive fork: a child whose parent ran a team waits forever for the
// team's threads. A forked child therefore leaves OpenMP alone and runs on the pool, whose
// caller claims every chunk that no worker takes (the child has none: same chunks, same bits).
static void stop_sharing_in_child() { g_gomp_parallel.store(nullptr, std::memory_order_release); }

bool share_openmp_threads(bool enable) {
  static const int atfork_registered = pthread_atfork(nullptr, nullptr, stop_sharing_in_child);
  (void)atfork_registered;
  GompParallel found = nullptr;
  OmpMaxThreads team = nullptr;
  if (enable) {
    found = reinterpret_cast<GompParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    team = reinterpret_cast<OmpMaxThreads>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
  }
  g_omp_max_threads.store(team, std::memory_order_release);
  g_gomp_parallel.store(found, std::memory_order_release);
  return found != nullptr;
}

bool sharing_openmp_threads() { return g_gomp_parallel.load(std::memory_order_acquire) != nullptr; }

void parallel_for_impl(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
  if (grain < 1) grain = 1;
  if (n <= grain || t_in_pool_call) return fn(ctx, 0, n);
  if (GompParallel gomp = g_gomp_parallel.load(std::memory_order_acquire)) {
    const int64_t chunks = std::min<int64_t>(num_threads(), (n + grain - 1) / grain);
    if (chunks <= 1) return fn(ctx, 0, n);
    TeamCall call{n, chunks, fn, ctx, {}, {}};
    gomp(team_body, &call, static_cast<unsigned>(chunks), 0);
    call.error.rethrow();
    return;
  }
  if (!pool().try_run(n, grain, fn, ctx)) fn(ctx, 0, n);
}

}  // namespace ox
