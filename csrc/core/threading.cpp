#include "core/threading.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
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
class Pool {
 public:
  explicit Pool(int threads) { resize(threads); }
  ~Pool() { stop(); }

  int threads() const { return threads_; }

  void resize(int threads) {
    std::lock_guard<std::mutex> busy(busy_);
    stop();
    threads_ = std::max(1, threads);
    quit_ = false;
    const uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i, gen] { work(i, gen); });
  }

  // Returns false when the pool is busy (another caller, or a nested call).
  bool try_run(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    int64_t chunks = std::min<int64_t>(threads_, (n + grain - 1) / grain);
    if (chunks <= 1) {
      fn(ctx, 0, n);
      return true;
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      fn_ = fn;
      ctx_ = ctx;
      n_ = n;
      chunks_ = chunks;
      pending_.store(static_cast<int>(chunks - 1), std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    run_chunk(0);
    while (pending_.load(std::memory_order_acquire) > 0) cpu_relax();
    return true;
  }

 private:
  void run_chunk(int64_t c) {
    int64_t begin = n_ * c / chunks_, end = n_ * (c + 1) / chunks_;
    if (begin < end) fn_(ctx_, begin, end);
  }

  // `seen` starts at the generation current when resize() created the worker
  // (read under busy_, so no job is in flight): a fresh worker must not mistake
  // the last finished job, whose fn_/ctx_ are gone, for new work.
  void work(int index, uint64_t seen) {
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
      if (index < chunks_) {
        run_chunk(index);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
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
  std::atomic<int> pending_{0};
  std::atomic<bool> quit_{false};
  RangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0, chunks_ = 1;
};

std::mutex g_pool_mutex;
Pool* g_pool = nullptr;

Pool& pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool) g_pool = new Pool(default_threads());  // never destroyed: workers may outlive exit
  return *g_pool;
}

}  // namespace

int num_threads() { return pool().threads(); }

void set_num_threads(int n) {
  Pool& p = pool();
  if (n < 1) n = 1;
  if (n != p.threads()) p.resize(n);
}

void parallel_for_impl(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
  if (grain < 1) grain = 1;
  if (n <= grain || !pool().try_run(n, grain, fn, ctx)) fn(ctx, 0, n);
}

}  // namespace ox
