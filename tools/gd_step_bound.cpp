// What one full-batch GD step of the course's line problem (n rows, float64) can cost on
// this CPU, for the "1000 GD steps" figure in benchmarks/RESULTS.md:
//   1. the step's pass alone: r_i = w·x_i + b − y_i, then Σ r_i x_i, Σ r_i, Σ r_i² (the
//      gradient and the loss at θ_t, 3 FMAs per row), AVX-512 with 1, 2, 4 or 8 vectors of
//      accumulators, then the update, with no call overhead;
//   2. a core-to-core round trip (one thread writes a flag, the other answers), the least
//      that splitting each step over two cores would add.
//
//     g++ -O3 -march=native tools/gd_step_bound.cpp -o /tmp/gd_step_bound -lpthread && /tmp/gd_step_bound [n]
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

template <int U>
__attribute__((noinline)) static void line_sums(const double* x, const double* y, double w, double b, long n,
                                               double* sums) {
  const __m512d W = _mm512_set1_pd(w), B = _mm512_set1_pd(b);
  __m512d gw[U], gb[U], ll[U];
  for (int u = 0; u < U; ++u) gw[u] = gb[u] = ll[u] = _mm512_setzero_pd();
  long j = 0;
  for (; j + 8 * U <= n; j += 8 * U)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const __m512d xv = _mm512_loadu_pd(x + j + 8 * u);
      const __m512d r = _mm512_sub_pd(_mm512_fmadd_pd(W, xv, B), _mm512_loadu_pd(y + j + 8 * u));
      gw[u] = _mm512_fmadd_pd(r, xv, gw[u]);
      gb[u] = _mm512_add_pd(gb[u], r);
      ll[u] = _mm512_fmadd_pd(r, r, ll[u]);
    }
  double s[3] = {0, 0, 0};
  for (int u = 0; u < U; ++u) {
    s[0] += _mm512_reduce_add_pd(gw[u]);
    s[1] += _mm512_reduce_add_pd(gb[u]);
    s[2] += _mm512_reduce_add_pd(ll[u]);
  }
  for (; j < n; ++j) {
    const double r = w * x[j] + b - y[j];
    s[0] += r * x[j], s[1] += r, s[2] += r * r;
  }
  for (int k = 0; k < 3; ++k) sums[k] = s[k];
}

template <int U> static double ns_per_step(const std::vector<double>& x, const std::vector<double>& y) {
  const long n = static_cast<long>(x.size()), steps = 100000;
  double best = 1e30, loss = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double w = 0, b = 0, sums[3];
    const auto t0 = std::chrono::steady_clock::now();
    for (long s = 0; s < steps; ++s) {
      line_sums<U>(x.data(), y.data(), w, b, n, sums);
      w -= 0.05 * sums[0] / n, b -= 0.05 * sums[1] / n, loss += sums[2];
    }
    const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    if (ns / steps < best) best = ns / steps;
  }
  return loss > 0 ? best : -1;  // uses the losses, so the compiler keeps them
}

static double round_trip_ns() {
  alignas(64) static std::atomic<long> ping{0};
  alignas(64) static std::atomic<long> pong{0};
  const long rounds = 1000000;
  std::thread other([&] {
    for (long i = 1; i <= rounds; ++i) {
      while (ping.load(std::memory_order_acquire) != i) {}
      pong.store(i, std::memory_order_release);
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 1; i <= rounds; ++i) {
    ping.store(i, std::memory_order_release);
    while (pong.load(std::memory_order_acquire) != i) {}
  }
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  other.join();
  return ns / rounds;
}

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 1000;
  std::vector<double> x(n), y(n);
  std::mt19937 gen(0);
  std::uniform_real_distribution<double> u(0, 2);
  std::normal_distribution<double> noise;
  for (long i = 0; i < n; ++i) x[i] = u(gen), y[i] = 3 * x[i] + 4 + noise(gen);  // y = 3x + 4 + noise
  std::printf("n = %ld rows, one GD step (gradient + loss), best of 5 x 100000 steps:\n", n);
  std::printf("  1 vector of accumulators: %.1f ns\n", ns_per_step<1>(x, y));
  std::printf("  2 vectors:                %.1f ns\n", ns_per_step<2>(x, y));
  std::printf("  4 vectors:                %.1f ns\n", ns_per_step<4>(x, y));
  std::printf("  8 vectors:                %.1f ns\n", ns_per_step<8>(x, y));
  std::printf("core-to-core round trip:    %.1f ns\n", round_trip_ns());
}
