// The conv1 kernels of the CPU convolution (conv_k5.cpp), float AVX-512 only; the
// templates below are what the other conv files call: false / nothing elsewhere.
#pragma once
#include <type_traits>

#include "cpu/conv_simd.h"

namespace ox {
namespace OX_ISA {

constexpr int64_t kK5Row = 64;  // [even 16][zeros 16][odd 16][zeros 16]
constexpr int64_t kK5MaxO = 64;

#if defined(__AVX512F__)
// Whether a layer has the conv1 shape these kernels handle (5×5, stride 1, no
// padding, pool 2, rows of at most 32 pixels, few channels).
bool k5_layer(const ConvShape& s, int64_t P);
void k5_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* out, uint8_t* idx);
// ∂L/∂w, ∂L/∂b of images [n0, n1) into part; xb, gbuf: kBatchBlock images of scratch each.
void k5_gw_block(const ConvShape& s, const float* x, const float* gout, const uint8_t* idx, int64_t n0, int64_t n1,
                 float* xb, float* gbuf, float* part);
#endif

template <class T> bool k5_applies(const ConvShape& s, int64_t P) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) return k5_layer(s, P);
#endif
  return false;
}

template <class T>
bool k5_fused_forward(const ConvShape& s, int64_t P, const T* x, const T* w, const T* b, T* out, uint8_t* idx) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (!k5_layer(s, P)) return false;
    k5_forward(s, x, w, b, out, idx);
    return true;
  }
#endif
  return false;
}

template <class T>
void k5_gw(const ConvShape& s, const T* x, const T* gout, const uint8_t* idx, int64_t n0, int64_t n1, T* xb, T* gbuf,
           T* part) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) k5_gw_block(s, x, gout, idx, n0, n1, xb, gbuf, part);
#endif
}

}  // namespace OX_ISA
}  // namespace ox
