// A float32 e^x that compilers vectorise (glibc's expf is not vectorised
// without -ffast-math). Used by the activation and loss kernels.
//   e^x = 2^n · e^r,  n = round(x·log2 e),  r = x − n·ln 2 ∈ [−ln2/2, ln2/2],
//   e^r by a degree-6 Taylor/minimax polynomial (relative error ≈ 2e-7 on that interval).
// 2^n is built in two halves so results down to the subnormal range (x ≈ −103)
// stay accurate; x above 88.7 gives +inf, below −104 gives 0, NaN gives NaN.
#pragma once
#include <cstdint>
#include <cstring>

namespace ox {
namespace OX_ISA {

static inline float pow2i(int32_t n) {  // 2^n for n in [−126, 127]
  const int32_t bits = (n + 127) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static inline float vexp(float x) {
  const float xc = x < -104.f ? -104.f : (x > 89.f ? 89.f : x);
  const float kLog2e = 1.44269504088896341f;
  const float kShift = 12582912.f;  // 1.5 · 2^23: adding it rounds to an integer
  const float t = xc * kLog2e + kShift;
  const float n = t - kShift;
  // r = x − n·ln2 in two parts (Cody–Waite) for accuracy.
  float r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t half = ni / 2;
  float y = p * pow2i(half) * pow2i(ni - half);
  y = x > 88.72283935546875f ? __builtin_inff() : y;
  y = x < -104.f ? 0.f : y;
  return x != x ? x : y;
}

}  // namespace OX_ISA
}  // namespace ox
