// What the CPU convolution kernels (conv*.cpp) share, compiled per ISA like them:
// 64-byte aligned Scratch, and the padded, phase-split image buffers every kernel reads
// its input from. Their vectors are simd.h's Vec<T>.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

#include "conv.h"
#include "core/isa.h"
#include "core/threading.h"
#include "cpu/simd.h"

namespace ox {
namespace OX_ISA {

constexpr int64_t kBatchBlock = 8;  // images per backward block (fixed: determinism)

#if defined(__AVX512F__)
constexpr int kVecRegs = 32;  // vector registers: bounds register-tile sizes
#else
constexpr int kVecRegs = 16;
#endif

// Scratch of n values, 64-byte aligned: tables and patches read by whole-vector
// loads at multiples of 64 bytes then never straddle two cache lines (a split
// load costs two). Empty when n ≤ 0; zero-filled on request.
template <class T> class Scratch {
 public:
  explicit Scratch(int64_t n, bool zero = false) {
    if (n <= 0) return;
    p_ = static_cast<T*>(::operator new(sizeof(T) * n, std::align_val_t(64)));
    if (zero) std::memset(p_, 0, sizeof(T) * n);
  }
  ~Scratch() {
    if (p_) ::operator delete(p_, std::align_val_t(64));
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

// ---- channels-last ↔ (C, H, W) ----------------------------------------------
// dst[c][h][v] = src[((h + pt)·Wp + v + pl)·CS + c]: crop a padded channels-last
// image (CS values per pixel) to (C, H, W).
template <class T>
static void from_channels_last(const T* src, int64_t C, int64_t H, int64_t W, int64_t pt, int64_t pl, int64_t Wp,
                               int64_t CS, T* dst) {
#if defined(__AVX512F__)
  // float rows of at most 16 pixels by one 16-lane gather each (strided loads one lane
  // each would take a load and a store per value; conv2's 6-channel pixels defeat shuffles).
  if constexpr (std::is_same_v<T, float>)
    if (W <= 16) {
      const __mmask16 m = static_cast<__mmask16>((1u << W) - 1u);
      const __m512i vi = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(static_cast<int>(CS)));
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h) {
          const float* s = src + ((h + pt) * Wp + pl) * CS + c;
          _mm512_mask_storeu_ps(dst + (c * H + h) * W, m, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, vi, s, 4));
        }
      return;
    }
#endif
  for (int64_t c = 0; c < C; ++c)
    for (int64_t h = 0; h < H; ++h) {
      const T* s = src + ((h + pt) * Wp + pl) * CS + c;
      T* d = dst + (c * H + h) * W;
      for (int64_t v = 0; v < W; ++v) d[v] = s[v * CS];
    }
}

// ---- padded, phase-split image buffers ------------------------------------
// Layout of a buffer: [C][R rows][sw phases][Wj], column j·sw + q at [q][j].
struct BufGeom {
  int64_t C, R, sw, Wj;
  int64_t size() const { return C * R * sw * Wj; }
};

// buf[c][r][q][j] = src[c][(r − pt)/dh][(j·sw + q − pl)/dw] where both divisions
// are exact and in range, else 0. dh, dw > 1 insert zeros (dilated ∂L/∂y);
// pt, pl may be negative (cropping).
template <class T>
static void fill_buffer(const T* src, int64_t Hs, int64_t Ws, int64_t dh, int64_t dw, int64_t pt, int64_t pl,
                        const BufGeom& g, T* buf) {
  const int64_t row_len = g.sw * g.Wj;
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t r = 0; r < g.R; ++r) {
      T* row = buf + (c * g.R + r) * row_len;
      std::memset(row, 0, sizeof(T) * row_len);
      const int64_t d = r - pt;
      if (d < 0 || d % dh != 0 || d / dh >= Hs) continue;
      const T* srow = src + (c * Hs + d / dh) * Ws;
      if (dw == 1 && g.sw == 1) {
        const int64_t j0 = pl > 0 ? pl : 0, j1 = pl + Ws < g.Wj ? pl + Ws : g.Wj;
        for (int64_t j = j0; j < j1; ++j) row[j] = srow[j - pl];
        continue;
      }
      for (int64_t v = 0; v < Ws; ++v) {
        const int64_t col = v * dw + pl;
        if (col < 0) continue;
        const int64_t j = col / g.sw, q = col % g.sw;
        if (j >= g.Wj) break;
        row[q * g.Wj + j] = srow[v];
      }
    }
  }
}

}  // namespace OX_ISA
}  // namespace ox
