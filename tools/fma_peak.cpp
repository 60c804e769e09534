// The machine's float32 FMA peak (AVX-512 where the compiler targets it, else AVX2), the denominator of "fraction of peak" in
// benchmarks/RESULTS.md: independent FMA chains on registers only (no memory), one
// and then every hardware thread.
//
//     g++ -O3 -march=native tools/fma_peak.cpp -o /tmp/fma_peak -lpthread && /tmp/fma_peak
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

// 24 chains: more than FMA latency × FMA units on any current x86 core, so the loop is
// bound by FMA throughput alone.
constexpr int kChains = 24;

#if defined(__AVX512F__)
using VecF = __m512;
constexpr int kLanes = 16;
static VecF set1(float v) { return _mm512_set1_ps(v); }
static VecF fmadd(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
static void store(float* p, VecF v) { _mm512_store_ps(p, v); }
#else
using VecF = __m256;
constexpr int kLanes = 8;
static VecF set1(float v) { return _mm256_set1_ps(v); }
static VecF fmadd(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
static void store(float* p, VecF v) { _mm256_store_ps(p, v); }
#endif

static float fma_chains(long iterations) {
  VecF acc[kChains];
  const VecF scale = set1(1.0000001f), shift = set1(1e-7f);
  for (int i = 0; i < kChains; ++i) acc[i] = set1(float(i));
  for (long k = 0; k < iterations; ++k) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) acc[i] = fmadd(acc[i], scale, shift);
  }
  float sum = 0.f;  // used, so the chains are not optimised away
  alignas(64) float lanes[kLanes];
  for (int i = 0; i < kChains; ++i) {
    store(lanes, acc[i]);
    for (float v : lanes) sum += v;
  }
  return sum;
}

int main() {
  const long iterations = 100000000;
  const unsigned all = std::thread::hardware_concurrency();
  for (unsigned threads : {1u, all}) {
    std::vector<float> sums(threads);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back([&, t] { sums[t] = fma_chains(iterations); });
    for (auto& t : pool) t.join();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double flops = double(threads) * iterations * kChains * kLanes * 2;  // multiply + add per lane
    std::printf("%u thread(s): %.1f GFLOP/s (checksum %g)\n", threads, flops / seconds / 1e9, double(sums[0]));
  }
}
