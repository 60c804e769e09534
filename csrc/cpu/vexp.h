// float32 e^x over arrays, vectorised with intrinsics (glibc's expf is not
// vectorised without -ffast-math, and GCC will not auto-vectorise a clamped
// polynomial exp under the default trapping-math rules). Used by the activation,
// loss and matrix-product (sigmoid epilogue) kernels.
//   e^x = 2^n · e^r,  n = round(x·log2 e),  r = x − n·ln 2 ∈ [−ln2/2, ln2/2],
//   e^r by its degree-6 Taylor polynomial (relative error ≤ 2e-7 on that interval).
// x is clamped to [−104, 89] (NaN passes through the clamp); 2^n is applied so
// that the result under- and overflows naturally: ≈ 0 below −104, +inf above 88.72.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
// GCC 12 warns about its own AVX-512 headers (_mm512_undefined_ps) when inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace ox {
namespace OX_ISA {

namespace vexp_detail {
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693145751953125f;  // ln 2 in two parts (Cody–Waite)
constexpr float kLn2Lo = 1.428606765330187045e-06f;
constexpr float kLo = -104.f, kHi = 89.f;
constexpr float kC[7] = {1.f / 720.f, 1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f};

static inline float pow2i(int32_t n) {  // 2^n for n in [−126, 127]
  const int32_t bits = (n + 127) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
}  // namespace vexp_detail

// Scalar version (tails, and the scalar build).
static inline float vexp(float x) {
  using namespace vexp_detail;
  if (x != x) return x;
  const float xc = x < kLo ? kLo : (x > kHi ? kHi : x);
  const float n = std::nearbyint(xc * kLog2e);
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = kC[0];
  for (int k = 1; k < 7; ++k) p = p * r + kC[k];
  const int32_t ni = static_cast<int32_t>(n), half = ni >> 1;
  return p * pow2i(half) * pow2i(ni - half);
}

#if defined(__AVX512F__)
static inline __m512 vexp16(__m512 x) {
  using namespace vexp_detail;
  // min/max return their second operand when one is NaN: NaN survives the clamp.
  const __m512 xc = _mm512_max_ps(_mm512_set1_ps(kLo), _mm512_min_ps(_mm512_set1_ps(kHi), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kC[0]);
  for (int k = 1; k < 7; ++k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC[k]));
  return _mm512_scalef_ps(p, n);  // p · 2^n with IEEE over/underflow
}
#elif defined(__AVX2__)
static inline __m256 vexp8(__m256 x) {
  using namespace vexp_detail;
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(kLo), _mm256_min_ps(_mm256_set1_ps(kHi), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kC[0]);
  for (int k = 1; k < 7; ++k) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC[k]));
  const __m256i ni = _mm256_cvtps_epi32(n);  // NaN gives INT_MIN; p is NaN then anyway
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}
#endif

// out[i] = e^{in[i]}; in and out may be the same array.
static inline void exp_array(const float* in, float* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, vexp16(_mm512_loadu_ps(in + i)));
#elif defined(__AVX2__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, vexp8(_mm256_loadu_ps(in + i)));
#endif
  for (; i < n; ++i) out[i] = vexp(in[i]);
}

// sigmoid(x) = 1 / (1 + e^{−x}): e^{−x} overflows to +inf below x ≈ −88.7 and the
// quotient is then 0, as in torch's float32 sigmoid; NaN stays NaN. One formula for
// the sigmoid op and the linear layer's fused epilogue (cpu/gemm.cpp), so the two agree
// bit for bit.
static inline float vsigmoid(float x) { return 1.f / (1.f + vexp(-x)); }
#if defined(__AVX512F__)
static inline __m512 vsigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, vexp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}
#elif defined(__AVX2__)
static inline __m256 vsigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.f);
  return _mm256_div_ps(one, _mm256_add_ps(one, vexp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
#endif

static inline void sigmoid_array(const float* in, float* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, vsigmoid16(_mm512_loadu_ps(in + i)));
#elif defined(__AVX2__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, vsigmoid8(_mm256_loadu_ps(in + i)));
#endif
  for (; i < n; ++i) out[i] = vsigmoid(in[i]);
}

}  // namespace OX_ISA
}  // namespace ox
