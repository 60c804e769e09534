// Dense ∂L/∂w tiles of the conv backward (register tiles summed over a block's images and
// pixels), and the expansion of a pooled gradient to full resolution. Used by conv_backward.cpp.
#pragma once
#include <cstring>

#include "cpu/conv_tiles.h"

namespace ox {
namespace OX_ISA {

// ∂L/∂w tile: OBW output channels × KWB taps (kw0 …) of one (c, kh), summed over
// the images of a block and all output pixels.
template <class T> struct GwArgs {
  const T* const* xbufs;  // padded input of each image of the block
  const T* const* gys;    // ∂L/∂y (O, OH, OW) of each image
  int64_t nimg;
  BufGeom g;
  int64_t O, KH, KW, sh, OH, OW;
};

template <class T, int OBW, int KWB>
static void gw_tile(const GwArgs<T>& a, int64_t o0, int64_t c, int64_t kh, int64_t kw0, T* gw) {
  using V = Vec<T>;
  constexpr int L = V::L;
  const int64_t sw = a.g.sw, Wj = a.g.Wj, plane = a.OH * a.OW;
  int64_t koff[KWB];  // where tap kw0 + k starts in a buffer row: phase (kw % sw), offset kw / sw
  #pragma GCC unroll 32
  for (int k = 0; k < KWB; ++k) koff[k] = ((kw0 + k) % sw) * Wj + (kw0 + k) / sw;
  typename V::R acc[OBW][KWB];
  #pragma GCC unroll 32
  for (int o = 0; o < OBW; ++o)
    #pragma GCC unroll 32
    for (int k = 0; k < KWB; ++k) acc[o][k] = V::zero();
  for (int64_t i = 0; i < a.nimg; ++i) {
    const T* g0 = a.gys[i] + o0 * plane;
    for (int64_t oh = 0; oh < a.OH; ++oh) {
      const T* xrow = a.xbufs[i] + ((c * a.g.R + oh * a.sh + kh) * sw) * Wj;
      const T* grow = g0 + oh * a.OW;
      for (int64_t ow0 = 0; ow0 < a.OW; ow0 += L) {
        const typename V::M m = V::mask(a.OW - ow0);
        typename V::R gv[OBW];
        #pragma GCC unroll 32
        for (int o = 0; o < OBW; ++o) gv[o] = V::loadz(m, grow + o * plane + ow0);
        #pragma GCC unroll 32
        for (int k = 0; k < KWB; ++k) {
          const typename V::R xv = V::loadz(m, xrow + koff[k] + ow0);
          #pragma GCC unroll 32
          for (int o = 0; o < OBW; ++o) acc[o][k] = V::fma(gv[o], xv, acc[o][k]);
        }
      }
    }
  }
  #pragma GCC unroll 32
  for (int o = 0; o < OBW; ++o)
    #pragma GCC unroll 32
    for (int k = 0; k < KWB; ++k) gw[(((o0 + o) * a.g.C + c) * a.KH + kh) * a.KW + kw0 + k] = V::sum(acc[o][k]);
}

template <class T> using GwFn = void (*)(const GwArgs<T>&, int64_t, int64_t, int64_t, int64_t, T*);

template <class T, int OBW> static GwFn<T> pick_gw_k(int64_t kb) {
  switch (kb) {
    case 1: return gw_tile<T, OBW, 1>;
    case 2: return gw_tile<T, OBW, 2>;
    case 3: return gw_tile<T, OBW, 3>;
    case 4: return gw_tile<T, OBW, 4>;
    default: return gw_tile<T, OBW, 5>;
  }
}
template <class T> static GwFn<T> pick_gw(int64_t ob, int64_t kb) {
  switch (ob) {
    case 1: return pick_gw_k<T, 1>(kb);
    case 2: return pick_gw_k<T, 2>(kb);
    case 3: return pick_gw_k<T, 3>(kb);
    default: return pick_gw_k<T, 4>(kb);
  }
}

// Channel-vectorised ∂L/∂w tile (output channels a multiple of L): a vector
// holds L output channels; ∂L/∂y is read pixel-major (transposed per image), so
// one gradient-vector load feeds KHB × KWB broadcast FMAs, all lanes busy.
template <class T, int KHB, int KWB>
static void gw_tile_cv(const GwArgs<T>& a, int64_t ob, int64_t c, int64_t kh0, int64_t kw0, T* gw) {
  using V = Vec<T>;
  constexpr int L = V::L;
  const int64_t sw = a.g.sw, Wj = a.g.Wj, O = a.O;
  int64_t koff[KWB];
  for (int k = 0; k < KWB; ++k) koff[k] = ((kw0 + k) % sw) * Wj + (kw0 + k) / sw;
  typename V::R acc[KHB][KWB];
#pragma GCC unroll 32
  for (int r = 0; r < KHB; ++r)
#pragma GCC unroll 32
    for (int k = 0; k < KWB; ++k) acc[r][k] = V::zero();
  for (int64_t i = 0; i < a.nimg; ++i) {
    for (int64_t oh = 0; oh < a.OH; ++oh) {
      const T* xr[KHB];
#pragma GCC unroll 32
      for (int r = 0; r < KHB; ++r) xr[r] = a.xbufs[i] + ((c * a.g.R + oh * a.sh + kh0 + r) * sw) * Wj;
      const T* gr = a.gys[i] + oh * a.OW * O + ob * L;  // pixel-major: gT[pixel][O]
      for (int64_t ow = 0; ow < a.OW; ++ow) {
        const typename V::R gv = V::loadu(gr + ow * O);
#pragma GCC unroll 32
        for (int r = 0; r < KHB; ++r)
#pragma GCC unroll 32
          for (int k = 0; k < KWB; ++k) acc[r][k] = V::fma(V::set1(xr[r][koff[k] + ow]), gv, acc[r][k]);
      }
    }
  }
  alignas(64) T lanes[L];
  for (int r = 0; r < KHB; ++r)
    for (int k = 0; k < KWB; ++k) {
      V::storeu(lanes, acc[r][k]);
      for (int o = 0; o < L; ++o) gw[(((ob * L + o) * a.g.C + c) * a.KH + kh0 + r) * a.KW + kw0 + k] = lanes[o];
    }
}

template <class T, int KHB> static GwFn<T> pick_gw_cv_k(int64_t kb) {
  switch (kb) {
    case 1: return gw_tile_cv<T, KHB, 1>;
    case 2: return gw_tile_cv<T, KHB, 2>;
    case 3: return gw_tile_cv<T, KHB, 3>;
    case 4: return gw_tile_cv<T, KHB, 4>;
    default: return gw_tile_cv<T, KHB, 5>;
  }
}

template <class T> static bool use_channel_vectors_gw(int64_t O, int64_t OW) {
  return Vec<T>::L >= 8 && O % Vec<T>::L == 0 && OW % Vec<T>::L != 0;
}

// gT[pixel][o] = g[o][pixel] for one image.
template <class T> static void transpose_image(const T* g, int64_t O, int64_t plane, T* gt) {
  for (int64_t o = 0; o < O; ++o)
    for (int64_t e = 0; e < plane; ++e) gt[e * O + o] = g[o * plane + e];
}

// ∂L/∂y of one image from the pooled gradient and the saved window positions.
template <class T>
static void expand_pool_grad(const ConvShape& s, int64_t P, const T* gout, const uint8_t* idx, T* gy) {
  const int64_t PH = s.OH / P, PW = s.OW / P;
  std::memset(gy, 0, sizeof(T) * s.O * s.OH * s.OW);
  for (int64_t o = 0; o < s.O; ++o)
    for (int64_t p = 0; p < PH; ++p)
      for (int64_t q = 0; q < PW; ++q) {
        const int64_t e = (o * PH + p) * PW + q;
        const uint8_t k = idx[e];
        if (k == kPoolNoGrad) continue;
        gy[(o * s.OH + p * P + k / P) * s.OW + q * P + k % P] = gout[e];
      }
}

}  // namespace OX_ISA
}  // namespace ox
