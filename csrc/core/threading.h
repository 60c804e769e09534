// A small persistent thread pool for the CPU kernels.
//
// parallel_for(n, grain, fn) splits [0, n) into contiguous ranges of at least
// `grain` items and runs fn(begin, end) on them, the calling thread taking the
// first. Calls from several threads at once, and nested calls, run serially in
// the caller: the pool never blocks on itself.
//
// Determinism: how ranges are assigned depends on the thread count, so a
// reduction must not add per-thread partials. Reduce over fixed blocks instead
// (see reduce_blocks) and combine block partials in block order.
#pragma once
#include <cstdint>

namespace ox {

// Threads a parallel_for uses: on torch's OpenMP team (below), torch's current count
// (omp_get_max_threads, as torch.set_num_threads left it) until set_num_threads chooses
// one; on our pool, the pool's size.
int num_threads();
void set_num_threads(int n);  // n >= 1; from then on this count, on either

// Run parallel_for on the OpenMP runtime already loaded in the process (torch's)
// instead of our own pool, when enable is true and the runtime is found; returns
// whether it is used. Two pools on the same cores fight: after each parallel torch
// op its OpenMP threads spin for a while, and our workers wait for a core. On
// torch's own threads the two take turns. The chunks, and so the results, are the
// same either way.
bool share_openmp_threads(bool enable);
bool sharing_openmp_threads();

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_for_impl(int64_t n, int64_t grain, RangeFn fn, void* ctx);

template <class F> void parallel_for(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  auto thunk = [](void* ctx, int64_t b, int64_t e) { (*static_cast<F*>(ctx))(b, e); };
  parallel_for_impl(n, grain, thunk, &f);
}

// Runs f(block_index, begin, end) for blocks [k*block, min((k+1)*block, n)),
// in parallel; the split into blocks does not depend on the thread count.
template <class F> void for_each_block(int64_t n, int64_t block, F&& f) {
  int64_t nblocks = (n + block - 1) / block;
  parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t k = b0; k < b1; ++k) {
      int64_t begin = k * block, end = begin + block < n ? begin + block : n;
      f(k, begin, end);
    }
  });
}

}  // namespace ox
