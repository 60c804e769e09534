// Dense ∂L/∂x scattered from ∂L/∂y through the kernel, for layers with few input channels.
// Used by conv_backward.cpp.
#pragma once
#include <cstring>

#include "cpu/conv_tiles.h"

namespace ox {
namespace OX_ISA {

// ---- dense ∂L/∂x by scattering ∂L/∂y through the kernel (few input channels) ----
// ∂L/∂x_padded[c, i·sh + kh, j·sw + kw] += Σ_o g[o,i,j] · w[o,c,kh,kw] for every y
// position (i, j): the KH rows × KW columns × C channels region of x_padded at
// (i·sh, j·sw). Channels-last, a region row is KW·C contiguous values (NVR vectors,
// lanes past KW·C multiply zeros of the weight table). A tile takes PR positions
// of one y column (i0 … i0 + PR − 1, j), whose regions cover (PR − 1)·sh + KH rows:
// those stay in registers while o runs, each weight vector w[o, :, kh, :] loaded
// once for the PR positions (one 64-byte load per FMA would bound the loop), then
// they are added into the padded channels-last ∂L/∂x of the image, finally cropped
// and transposed to (C, H, W). Every multiply-add is useful, unlike the flipped
// convolution over the dilated, padded ∂L/∂y (conv2: 16,000 FMAs per image against
// 24,000 there, whose 14-pixel rows and zero border taps waste lanes).
// Order per element: tiles in a fixed order, channels o in order within a tile.
struct GxScatterGeom {
  int64_t Hp, Wp, C, rowvec;  // rowvec = NVR·L, the weight table's row length
  int64_t size() const { return Hp * Wp * C + rowvec; }  // + one region row of overrun
};

// ge: g at the tile's first position; dst: its region in the padded ∂L/∂x. PR > 1
// needs stride 1 along the height (position p's region starts p rows lower).
template <class T, int KHt, int NVR, int PR>
static void gx_scatter_tile(const ConvShape& s, const GxScatterGeom& q, const T* wt, const T* ge, T* dst) {
  using V = Vec<T>;
  constexpr int L = V::L, RR = PR - 1 + KHt;
  const int64_t O = s.O, OW = s.OW, plane = s.OH * OW, rowlen = q.Wp * q.C;
  typename V::R acc[RR][NVR];
#pragma GCC unroll 32
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 32
    for (int v = 0; v < NVR; ++v) acc[r][v] = V::zero();
  for (int64_t o = 0; o < O; ++o) {
    typename V::R gv[PR];
#pragma GCC unroll 32
    for (int p = 0; p < PR; ++p) gv[p] = V::set1(ge[o * plane + p * OW]);
    const T* wo = wt + o * KHt * NVR * L;
#pragma GCC unroll 32
    for (int kh = 0; kh < KHt; ++kh)
#pragma GCC unroll 32
      for (int v = 0; v < NVR; ++v) {
        const typename V::R wv = V::loadu(wo + (kh * NVR + v) * L);
#pragma GCC unroll 32
        for (int p = 0; p < PR; ++p) acc[p + kh][v] = V::fma(gv[p], wv, acc[p + kh][v]);
      }
  }
#pragma GCC unroll 32
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 32
    for (int v = 0; v < NVR; ++v) {
      T* d = dst + r * rowlen + v * L;
      V::storeu(d, V::add(V::loadu(d), acc[r][v]));
    }
}

// Vector registers a tile of PR positions needs: accumulators, PR broadcasts of g,
// one weight vector and one spare.
constexpr int gx_scatter_regs(int KHt, int NVR, int PR) { return (PR - 1 + KHt) * NVR + PR + 2; }

template <class T, int KHt, int NVR, int PR>
static void gx_scatter_tile_pr(const ConvShape& s, const GxScatterGeom& q, const T* wt, const T* ge, T* dst) {
  if constexpr (gx_scatter_regs(KHt, NVR, PR) <= kVecRegs) gx_scatter_tile<T, KHt, NVR, PR>(s, q, wt, ge, dst);
}

template <class T, int KHt, int NVR>
static void gx_scatter_image(const ConvShape& s, const GxScatterGeom& q, const T* wt, const T* g, T* gxp, T* gx) {
  int64_t prmax = 1;  // shared tile rows need stride 1 along the height
  if (s.sh == 1)
    while (prmax < 5 && gx_scatter_regs(KHt, NVR, static_cast<int>(prmax) + 1) <= kVecRegs) ++prmax;
  const int64_t C = q.C, Wp = q.Wp;
  std::memset(gxp, 0, sizeof(T) * q.size());
  // columns of y split into near-equal tiles of at most prmax positions
  const int64_t ntiles = (s.OH + prmax - 1) / prmax, base = s.OH / ntiles, extra = s.OH % ntiles;
  for (int64_t t = 0, i0 = 0; t < ntiles; ++t) {
    const int64_t pr = base + (t < extra ? 1 : 0);
    for (int64_t j = 0; j < s.OW; ++j) {
      const T* ge = g + i0 * s.OW + j;
      T* dst = gxp + (i0 * s.sh * Wp + j * s.sw) * C;
      switch (pr) {
        case 1: gx_scatter_tile_pr<T, KHt, NVR, 1>(s, q, wt, ge, dst); break;
        case 2: gx_scatter_tile_pr<T, KHt, NVR, 2>(s, q, wt, ge, dst); break;
        case 3: gx_scatter_tile_pr<T, KHt, NVR, 3>(s, q, wt, ge, dst); break;
        case 4: gx_scatter_tile_pr<T, KHt, NVR, 4>(s, q, wt, ge, dst); break;
        default: gx_scatter_tile_pr<T, KHt, NVR, 5>(s, q, wt, ge, dst); break;
      }
    }
    i0 += pr;
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t h = 0; h < s.H; ++h) {
      const T* src = gxp + ((h + s.ph) * Wp + s.pw) * C + c;
      T* d = gx + (c * s.H + h) * s.W;
      for (int64_t v = 0; v < s.W; ++v) d[v] = src[v * C];
    }
}

template <class T> using GxScatterFn = void (*)(const ConvShape&, const GxScatterGeom&, const T*, const T*, T*,
                                                T*);

// The scatter applies when a region row fills its vectors well (KW·C ≥ 3/4 of
// NVR·L), a one-position tile's KH·NVR accumulators fit the register file, and
// it multiplies fewer vectors than the dense path (the flipped convolution: H rows
// × ⌈W/L⌉ vectors × KH·KW taps × O input channels × C outputs, C rounded up to its
// channel block; the scatter adds a read-modify-write per region vector).
template <class T> static GxScatterFn<T> pick_gx_scatter(const ConvShape& s, GxScatterGeom* q) {
  constexpr int64_t L = Vec<T>::L;
  if (L < 8) return nullptr;
  const int64_t row = s.KW * s.C, nvr = (row + L - 1) / L;
  if (row * 4 < nvr * L * 3 || gx_scatter_regs(int(s.KH), int(nvr), 1) > kVecRegs) return nullptr;
  const int64_t ob = pick_ob(s.C), cpad = (s.C + ob - 1) / ob * ob;
  const double dense = double(s.H) * ((s.W + L - 1) / L) * s.KH * s.KW * s.O * cpad;
  const double scatter = double(s.OH) * s.OW * s.KH * nvr * (s.O + 3);
  if (scatter > 0.8 * dense) return nullptr;
  *q = GxScatterGeom{s.H + 2 * s.ph, s.W + 2 * s.pw, s.C, nvr * L};
  switch (s.KH * 10 + nvr) {
    case 31: return gx_scatter_image<T, 3, 1>;
    case 32: return gx_scatter_image<T, 3, 2>;
    case 33: return gx_scatter_image<T, 3, 3>;
    case 51: return gx_scatter_image<T, 5, 1>;
    case 52: return gx_scatter_image<T, 5, 2>;
    case 53: return gx_scatter_image<T, 5, 3>;
    case 54: return gx_scatter_image<T, 5, 4>;
    default: return nullptr;
  }
}

// wt[o][kh][kw·C + c] = w[o][c][kh][kw], rows of q.rowvec values, zero past KW·C.
template <class T> static void build_gx_scatter_weights(const ConvShape& s, const GxScatterGeom& q, const T* w,
                                                        T* wt) {
  std::memset(wt, 0, sizeof(T) * s.O * s.KH * q.rowvec);
  for (int64_t o = 0; o < s.O; ++o)
    for (int64_t c = 0; c < s.C; ++c)
      for (int64_t kh = 0; kh < s.KH; ++kh)
        for (int64_t kw = 0; kw < s.KW; ++kw)
          wt[(o * s.KH + kh) * q.rowvec + kw * s.C + c] = w[((o * s.C + c) * s.KH + kh) * s.KW + kw];
}

}  // namespace OX_ISA
}  // namespace ox
