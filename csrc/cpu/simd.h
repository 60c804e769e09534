// The SIMD vocabulary of every CPU kernel, compiled per ISA like them (namespace ox::OX_ISA):
//
//   Vec<T>     L lanes of T: 16 floats / 8 doubles on AVX-512, 8 / 4 on AVX2, 1 in the scalar build
//   Scalar<T>  the one-lane form, in every build (for element-wise edges and float64 where a
//              kernel keeps it scalar on purpose)
//
// A mask M selects the first n lanes (mask(n), n clamped to [0, L]): loadz reads those and
// zeroes the rest, store writes only those. Each operation is one instruction with IEEE
// results, and the one-lane forms compute the same values: max(a, b) is `a > b ? a : b`,
// as maxps (so max(0, NaN) is NaN, like torch's relu).
#pragma once
#include <cmath>
#include <cstdint>

#include "core/isa.h"

#if defined(__AVX512F__) || defined(__AVX2__)
// GCC 12 warns about its own AVX-512 headers (_mm512_undefined_ps) when inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

#define OX_INLINE inline __attribute__((always_inline))

namespace ox {
namespace OX_ISA {

template <class T> struct Scalar {
  using S = T;
  using R = T;
  using M = bool;
  static constexpr int L = 1;
  static OX_INLINE M mask(int64_t n) { return n > 0; }
  static OX_INLINE R zero() { return T(0); }
  static OX_INLINE R set1(T v) { return v; }
  static OX_INLINE R loadu(const T* p) { return *p; }
  static OX_INLINE R loadz(M m, const T* p) { return m ? *p : T(0); }
  static OX_INLINE void storeu(T* p, R v) { *p = v; }
  static OX_INLINE void store(T* p, M m, R v) {
    if (m) *p = v;
  }
  static OX_INLINE R fma(R a, R b, R c) { return a * b + c; }
  static OX_INLINE R add(R a, R b) { return a + b; }
  static OX_INLINE R sub(R a, R b) { return a - b; }
  static OX_INLINE R mul(R a, R b) { return a * b; }
  static OX_INLINE R div(R a, R b) { return a / b; }
  static OX_INLINE R sqrt(R a) { return std::sqrt(a); }
  static OX_INLINE R max(R a, R b) { return a > b ? a : b; }
  static OX_INLINE T sum(R v) { return v; }
};

template <class T> struct Vec : Scalar<T> {};  // the scalar build; the SIMD builds specialise

#if defined(__AVX512F__)
template <> struct Vec<float> {
  using S = float;
  using R = __m512;
  using M = __mmask16;
  static constexpr int L = 16;
  static OX_INLINE M mask(int64_t n) { return n >= L ? M(0xFFFF) : M((1u << (n > 0 ? n : 0)) - 1u); }
  static OX_INLINE R zero() { return _mm512_setzero_ps(); }
  static OX_INLINE R set1(float v) { return _mm512_set1_ps(v); }
  static OX_INLINE R loadu(const float* p) { return _mm512_loadu_ps(p); }
  static OX_INLINE R loadz(M m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static OX_INLINE void storeu(float* p, R v) { _mm512_storeu_ps(p, v); }
  static OX_INLINE void store(float* p, M m, R v) { _mm512_mask_storeu_ps(p, m, v); }
  static OX_INLINE R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static OX_INLINE R add(R a, R b) { return _mm512_add_ps(a, b); }
  static OX_INLINE R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static OX_INLINE R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static OX_INLINE R div(R a, R b) { return _mm512_div_ps(a, b); }
  static OX_INLINE R sqrt(R a) { return _mm512_sqrt_ps(a); }
  static OX_INLINE R max(R a, R b) { return _mm512_max_ps(a, b); }
  static OX_INLINE float sum(R v) {  // lane 0 + lane 1 + ... in order
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    float r = 0;
    for (int i = 0; i < 16; ++i) r += t[i];
    return r;
  }
};
template <> struct Vec<double> {
  using S = double;
  using R = __m512d;
  using M = __mmask8;
  static constexpr int L = 8;
  static OX_INLINE M mask(int64_t n) { return n >= L ? M(0xFF) : M((1u << (n > 0 ? n : 0)) - 1u); }
  static OX_INLINE R zero() { return _mm512_setzero_pd(); }
  static OX_INLINE R set1(double v) { return _mm512_set1_pd(v); }
  static OX_INLINE R loadu(const double* p) { return _mm512_loadu_pd(p); }
  static OX_INLINE R loadz(M m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static OX_INLINE void storeu(double* p, R v) { _mm512_storeu_pd(p, v); }
  static OX_INLINE void store(double* p, M m, R v) { _mm512_mask_storeu_pd(p, m, v); }
  static OX_INLINE R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static OX_INLINE R add(R a, R b) { return _mm512_add_pd(a, b); }
  static OX_INLINE R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static OX_INLINE R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static OX_INLINE R div(R a, R b) { return _mm512_div_pd(a, b); }
  static OX_INLINE R sqrt(R a) { return _mm512_sqrt_pd(a); }
  static OX_INLINE R max(R a, R b) { return _mm512_max_pd(a, b); }
  static OX_INLINE double sum(R v) {  // lane 0 + lane 1 + ... in order
    alignas(64) double t[8];
    _mm512_store_pd(t, v);
    double r = 0;
    for (int i = 0; i < 8; ++i) r += t[i];
    return r;
  }
};

// In-register transpose of 16 rows of 16 floats: afterwards r[c] holds column c.
// unpack + shuffle_ps build, in each 128-bit lane L, column 4L + c of four rows;
// two rounds of shuffle_f32x4 then gather lane L of the four row groups.
static OX_INLINE void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 s0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), s1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 s2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88),
                 s3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(s0, s2, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(s0, s2, 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(s1, s3, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(s1, s3, 0xDD);
  }
}

#elif defined(__AVX2__)
template <> struct Vec<float> {
  using S = float;
  using R = __m256;
  using M = __m256i;
  static constexpr int L = 8;
  static OX_INLINE M mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n > L ? L : n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static OX_INLINE R zero() { return _mm256_setzero_ps(); }
  static OX_INLINE R set1(float v) { return _mm256_set1_ps(v); }
  static OX_INLINE R loadu(const float* p) { return _mm256_loadu_ps(p); }
  static OX_INLINE R loadz(M m, const float* p) { return _mm256_maskload_ps(p, m); }
  static OX_INLINE void storeu(float* p, R v) { _mm256_storeu_ps(p, v); }
  static OX_INLINE void store(float* p, M m, R v) { _mm256_maskstore_ps(p, m, v); }
  static OX_INLINE R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static OX_INLINE R add(R a, R b) { return _mm256_add_ps(a, b); }
  static OX_INLINE R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static OX_INLINE R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static OX_INLINE R div(R a, R b) { return _mm256_div_ps(a, b); }
  static OX_INLINE R sqrt(R a) { return _mm256_sqrt_ps(a); }
  static OX_INLINE R max(R a, R b) { return _mm256_max_ps(a, b); }
  static OX_INLINE float sum(R v) {  // pairwise: ((0+1)+(2+3)) + ((4+5)+(6+7))
    float t[8];
    _mm256_storeu_ps(t, v);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  }
};
template <> struct Vec<double> {
  using S = double;
  using R = __m256d;
  using M = __m256i;
  static constexpr int L = 4;
  static OX_INLINE M mask(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n > L ? L : n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static OX_INLINE R zero() { return _mm256_setzero_pd(); }
  static OX_INLINE R set1(double v) { return _mm256_set1_pd(v); }
  static OX_INLINE R loadu(const double* p) { return _mm256_loadu_pd(p); }
  static OX_INLINE R loadz(M m, const double* p) { return _mm256_maskload_pd(p, m); }
  static OX_INLINE void storeu(double* p, R v) { _mm256_storeu_pd(p, v); }
  static OX_INLINE void store(double* p, M m, R v) { _mm256_maskstore_pd(p, m, v); }
  static OX_INLINE R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static OX_INLINE R add(R a, R b) { return _mm256_add_pd(a, b); }
  static OX_INLINE R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static OX_INLINE R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static OX_INLINE R div(R a, R b) { return _mm256_div_pd(a, b); }
  static OX_INLINE R sqrt(R a) { return _mm256_sqrt_pd(a); }
  static OX_INLINE R max(R a, R b) { return _mm256_max_pd(a, b); }
  static OX_INLINE double sum(R v) {  // pairwise: (0+1) + (2+3)
    double t[4];
    _mm256_storeu_pd(t, v);
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
};

// In-register transpose of 8 rows of 8 floats: afterwards r[c] holds column c. unpack + shuffle_ps
// build, in each 128-bit half, column 4h + c of four rows; permute2f128 joins the halves.
static OX_INLINE void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}
#endif

// Whether every value of p[0, n) is finite: v·0 is 0 for a finite v and NaN for ±inf and NaN,
// so the sum of those products is 0 exactly when all are finite (four sums, for the adds' latency).
template <class T> bool all_finite(const T* p, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t L = V::L;
  const typename V::R zero = V::zero();
  typename V::R acc[4] = {zero, zero, zero, zero};
  int64_t e = 0;
  for (; e + 4 * L <= n; e += 4 * L)
    for (int k = 0; k < 4; ++k) acc[k] = V::add(acc[k], V::mul(V::loadu(p + e + k * L), zero));
  for (; e < n; e += L) acc[0] = V::add(acc[0], V::mul(V::loadz(V::mask(n - e), p + e), zero));
  return V::sum(V::add(V::add(acc[0], acc[1]), V::add(acc[2], acc[3]))) == T(0);
}

}  // namespace OX_ISA
}  // namespace ox
