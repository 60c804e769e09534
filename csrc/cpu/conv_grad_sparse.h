// The fused block's backward from the pooled gradient, visiting only the one non-zero of
// ∂L/∂y per window and channel: ∂L/∂w (im2col patches, or channels-last in place) and ∂L/∂x
// (stride 1, pool 2). Used by conv_backward.cpp.
#pragma once
#include <cstring>

#include "cpu/conv_tiles.h"

namespace ox {
namespace OX_ISA {

// ---- fused backward from the pooled gradient, without expanding it --------
// After ReLU and a P×P max-pool, ∂L/∂y has at most one non-zero per window and
// channel: g = gout[n,o,p,q] at y position (i, j) = (p·P + k/P, q·P + k%P),
// k = idx[n,o,p,q] (none when k = 255). The dense backward multiplies the other
// P² − 1 zeros too; these kernels visit only the non-zeros (P² = 4× fewer FMAs
// at the course's pool 2). Both vectorise over a patch of C·KH·KW values.
//
// ∂L/∂w[o] += g · patch(i, j), patch(i, j)[c,kh,kw] = x_padded[c, i·sh + kh, j + kw]:
// the patches of the pooled-covered y positions are gathered once per image
// (im2col, C·KH·KW values per position, patches CS apart), then each channel o
// sums its non-zeros in registers (NV vectors) and adds the total into the
// block's partial (fixed order: deterministic). ∂L/∂b[o] += g likewise.
// Only y positions inside pool windows get a patch.

// Distance between two patches of the sparse ∂L/∂w: room for the chunked copies'
// overrun (≤ 7 values past C·KK), a whole number of vectors.
template <class T> static int64_t patch_stride(int64_t CKK) {
  const int64_t L = Vec<T>::L;
  return (CKK + 8 + L - 1) / L * L;
}

template <class T, int NV>
static void gw_sparse_image(const ConvShape& s, int64_t P, const T* xbuf, const BufGeom& xg, const T* gout,
                            const uint8_t* idx, T* xc, T* part) {
  using V = Vec<T>;
  constexpr int L = V::L;
  // fields in locals: the stores below could alias s and xg for the compiler
  const int64_t C = s.C, KH = s.KH, KW = s.KW, O = s.O, sh = s.sh, R = xg.R, Wj = xg.Wj;
  const int64_t PH = s.OH / P, PW = s.OW / P, OWc = PW * P, CKK = C * KH * KW, nw = O * CKK;
  const int64_t CS = patch_stride<T>(CKK);
  int64_t koff[15 * 15];  // window position k → its patch, relative to the window's first
  for (int64_t k = 0; k < P * P; ++k) koff[k] = ((k / P) * OWc + k % P) * CS;
  // Patch of y position (i, j) at xc + (i·OWc + j)·CS; stride sw = 1: tap kw at column
  // j + kw. Rows are copied in whole chunks of 8 (plain loads and stores; masked ones
  // stalled): the values written past a row are overwritten by the next row, or land
  // in [C·KK, CS), whose lanes are never stored to the partial.
  for (int64_t i = 0; i < PH * P; ++i)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t kh = 0; kh < KH; ++kh) {
        const T* src = xbuf + (c * R + i * sh + kh) * Wj;
        T* dst = xc + i * OWc * CS + (c * KH + kh) * KW;
        if (KW <= 8) {
          for (int64_t j = 0; j < OWc; ++j) std::memcpy(dst + j * CS, src + j, 8 * sizeof(T));
        } else {
          for (int64_t j = 0; j < OWc; ++j)
            for (int64_t kw = 0; kw < KW; kw += 8) std::memcpy(dst + j * CS + kw, src + j + kw, 8 * sizeof(T));
        }
      }
  for (int64_t o = 0; o < O; ++o) {
    typename V::R acc[NV];
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) acc[v] = V::zero();
    T gsum = 0;
    const uint8_t* io = idx + o * PH * PW;
    const T* go = gout + o * PH * PW;
    for (int64_t p = 0; p < PH; ++p)
      for (int64_t q = 0; q < PW; ++q) {
        const uint8_t k = io[p * PW + q];
        if (k == kPoolNoGrad) continue;
        const T* col = xc + (p * P * OWc + q * P) * CS + koff[k];
        const T gv = go[p * PW + q];
        const typename V::R g = V::set1(gv);
        gsum += gv;
#pragma GCC unroll 32
        for (int v = 0; v < NV; ++v) acc[v] = V::fma(g, V::loadu(col + v * L), acc[v]);
      }
    T* dst = part + o * CKK;
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) {
      const typename V::M m = V::mask(CKK - v * L);
      if (CKK - v * L > 0) V::store(dst + v * L, m, V::add(V::loadz(m, dst + v * L), acc[v]));
    }
    part[nw + o] += gsum;
  }
}

template <class T> using GwSparseFn = void (*)(const ConvShape&, int64_t, const T*, const BufGeom&, const T*,
                                               const uint8_t*, T*, T*);

// Vectors per patch (RP / L), or 0 when the sparse ∂L/∂w does not apply or would not
// pay: its cost (patch row copies + one FMA per vector per non-zero) must be under
// 0.6× the dense path's FMAs. conv2: 7,000 vs 15,000 per image, sparse (measured
// 1.25× faster with ∂L/∂b); conv1: 17,600 vs 22,000, dense (sparse measured slower).
template <class T> static int gw_sparse_vectors(const ConvShape& s, int64_t P) {
  constexpr int64_t L = Vec<T>::L;
  const int64_t CKK = s.C * s.KH * s.KW, nv = (CKK + L - 1) / L;
  const int64_t PH = s.OH / P, PW = s.OW / P;
  const double sparse = double(PH * P) * (PW * P) * s.C * s.KH * ((s.KW + 7) / 8) + double(s.O) * PH * PW * nv;
  const double dense = double(s.O) * s.OH * s.OW * CKK / L;
  // L ≥ 4: buffer rows have 2L ≥ 8 values of slack for the chunked patch copies
  return s.sw == 1 && nv <= 16 && L >= 4 && sparse < 0.6 * dense ? static_cast<int>(nv) : 0;
}

// Exactly nv vectors (1 … 16): a kernel of more would read past the last patch (patch_stride).
template <class T> static GwSparseFn<T> pick_gw_sparse(int nv) {
  switch (nv) {
    case 1: return gw_sparse_image<T, 1>;
    case 2: return gw_sparse_image<T, 2>;
    case 3: return gw_sparse_image<T, 3>;
    case 4: return gw_sparse_image<T, 4>;
    case 5: return gw_sparse_image<T, 5>;
    case 6: return gw_sparse_image<T, 6>;
    case 7: return gw_sparse_image<T, 7>;
    case 8: return gw_sparse_image<T, 8>;
    case 9: return gw_sparse_image<T, 9>;
    case 10: return gw_sparse_image<T, 10>;
    case 11: return gw_sparse_image<T, 11>;
    case 12: return gw_sparse_image<T, 12>;
    case 13: return gw_sparse_image<T, 13>;
    case 14: return gw_sparse_image<T, 14>;
    case 15: return gw_sparse_image<T, 15>;
    default: return gw_sparse_image<T, 16>;
  }
}

// Channels-last variant (few input channels, stride 1 along the width): with x
// stored channels-last and padded, xcl[r][col][c], the KW·C values of one patch
// row (c, kh, all kw) are contiguous: xcl[(i·sh + kh)·Wp + j][0 … KW·C). A patch
// is then KH rows of NVR vectors loaded in place (lanes past KW·C read the next
// column and are dropped), so no patch is copied: the image is transposed once
// (C·H·W values) instead of C·KH chunk copies per y position, and its 5 KB (conv2)
// stay in L1 where the copied patches (64 KB) did not. Per channel o the non-zeros
// are summed in registers (KH·NVR vectors), then added into the block's
// channels-last sum acc[o][kh][kw·C + c]; at the block's end that is written to the
// partial in the (O, C, KH, KW) order. Order per element: windows (p, q) row-major
// within an image, images in order.
struct GwClGeom {
  int64_t Hp, Wp, C, rowvec;  // rowvec = NVR·L
  int64_t size() const { return Hp * Wp * C + rowvec; }  // + one patch row of overrun
};

template <class T, int KHt, int NVR>
static void gw_sparse_cl_block(const ConvShape& s, int64_t P, const GwClGeom& q, const T* x, const T* gout,
                               const uint8_t* idx, int64_t n0, int64_t n1, T* xcl, T* acc_cl, T* part) {
  using V = Vec<T>;
  constexpr int L = V::L;
  const int64_t C = s.C, H = s.H, W = s.W, KW = s.KW, O = s.O, Wp = q.Wp, rowlen = Wp * C, rowvec = q.rowvec;
  const int64_t PH = s.OH / P, PW = s.OW / P, plane = PH * PW, nw = O * C * KHt * KW;
  int64_t koff[15 * 15];  // window position k → offset of its y position's patch from the window's first
  for (int64_t k = 0; k < P * P; ++k) koff[k] = (k / P) * s.sh * rowlen + (k % P) * C;
  std::memset(acc_cl, 0, sizeof(T) * O * KHt * rowvec);
  for (int64_t n = n0; n < n1; ++n) {
    std::memset(xcl, 0, sizeof(T) * q.size());
    const T* xn = x + n * C * H * W;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h) {
        T* d = xcl + ((h + s.ph) * Wp + s.pw) * C + c;
        const T* src = xn + (c * H + h) * W;
        for (int64_t v = 0; v < W; ++v) d[v * C] = src[v];
      }
    const T* gn = gout + n * O * plane;
    const uint8_t* in = idx + n * O * plane;
    for (int64_t o = 0; o < O; ++o) {
      typename V::R acc[KHt][NVR];
#pragma GCC unroll 32
      for (int kh = 0; kh < KHt; ++kh)
#pragma GCC unroll 32
        for (int v = 0; v < NVR; ++v) acc[kh][v] = V::zero();
      T gsum = 0;
      const uint8_t* io = in + o * plane;
      const T* go = gn + o * plane;
      for (int64_t p = 0; p < PH; ++p)
        for (int64_t qq = 0; qq < PW; ++qq) {
          const uint8_t k = io[p * PW + qq];
          if (k == kPoolNoGrad) continue;
          const T* patch = xcl + p * P * s.sh * rowlen + qq * P * C + koff[k];
          const T gv = go[p * PW + qq];
          const typename V::R g = V::set1(gv);
          gsum += gv;
#pragma GCC unroll 32
          for (int kh = 0; kh < KHt; ++kh)
#pragma GCC unroll 32
            for (int v = 0; v < NVR; ++v) acc[kh][v] = V::fma(g, V::loadu(patch + kh * rowlen + v * L), acc[kh][v]);
        }
      T* a = acc_cl + o * KHt * rowvec;
#pragma GCC unroll 32
      for (int kh = 0; kh < KHt; ++kh)
#pragma GCC unroll 32
        for (int v = 0; v < NVR; ++v) {
          T* d = a + kh * rowvec + v * L;
          V::storeu(d, V::add(V::loadu(d), acc[kh][v]));
        }
      part[nw + o] += gsum;
    }
  }
  for (int64_t o = 0; o < O; ++o)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t kh = 0; kh < KHt; ++kh)
        for (int64_t kw = 0; kw < KW; ++kw)
          part[((o * C + c) * KHt + kh) * KW + kw] = acc_cl[(o * KHt + kh) * rowvec + kw * C + c];
}

template <class T> using GwClFn = void (*)(const ConvShape&, int64_t, const GwClGeom&, const T*, const T*,
                                           const uint8_t*, int64_t, int64_t, T*, T*, T*);

// The channels-last variant applies with stride 1 along the width, patch rows that
// fill their vectors well (KW·C ≥ 3/4 of NVR·L) and KH·NVR accumulators that fit
// the register file (conv2, float AVX-512: 5 rows × 2 vectors).
template <class T> static GwClFn<T> pick_gw_sparse_cl(const ConvShape& s, GwClGeom* q) {
  constexpr int64_t L = Vec<T>::L;
  if (L < 8 || s.sw != 1) return nullptr;
  const int64_t row = s.KW * s.C, nvr = (row + L - 1) / L;
  if (row * 4 < nvr * L * 3 || s.KH * nvr + 3 > kVecRegs) return nullptr;
  *q = GwClGeom{s.H + 2 * s.ph, s.W + 2 * s.pw, s.C, nvr * L};
  switch (s.KH * 10 + nvr) {
    case 31: return gw_sparse_cl_block<T, 3, 1>;
    case 32: return gw_sparse_cl_block<T, 3, 2>;
    case 33: return gw_sparse_cl_block<T, 3, 3>;
    case 51: return gw_sparse_cl_block<T, 5, 1>;
    case 52: return gw_sparse_cl_block<T, 5, 2>;
    case 53: return gw_sparse_cl_block<T, 5, 3>;
    case 54: return gw_sparse_cl_block<T, 5, 4>;
    default: return nullptr;
  }
}

// ∂L/∂x (stride 1, pool 2): the non-zeros of one window (p, q), all channels o,
// reach only the region of RR = KH + 1 rows × (KW + 1) columns of x_padded at
// (2p, 2q). The region is held in registers, channels-last (CP ≥ C channels per
// column, each region row NVR vectors). The window's channels are first sorted
// by the row r of their position k = 2r + s into two buckets (branch-free: both
// lists are written, one count advances), each entry holding g and the offset of
// w[o] shifted by s columns in the table Ws[s][o][kh][col][c] (2·O·KH rows, 30 KB
// for conv2: stays in L1); each bucket then adds g · Ws into region rows
// r … r + KH − 1 (r a compile-time constant). Two buckets rather than one per
// position: half the loop exits, which the varying counts make unpredictable.
// The region is then added into a channels-last padded ∂L/∂x of the image,
// finally cropped and transposed to (C, H, W).
struct GxSparseGeom {
  int64_t CP, rowlen, Hp, Wp;  // rowlen = (KW + 1)·CP
};
constexpr int64_t kGxSparseMaxO = 256;

template <class T, int KHt, int NVR, int R0>
static inline void gx_bucket(typename Vec<T>::R (&acc)[KHt + 1][NVR], const T* gs, const int32_t* offs, int n,
                             const T* ws, int64_t rowlen) {
  using V = Vec<T>;
  for (int t = 0; t < n; ++t) {
    const typename V::R g = V::set1(gs[t]);
    const T* wk = ws + offs[t];
#pragma GCC unroll 32
    for (int kh = 0; kh < KHt; ++kh)
#pragma GCC unroll 32
      for (int v = 0; v < NVR; ++v) acc[R0 + kh][v] = V::fma(g, V::loadu(wk + kh * rowlen + v * V::L), acc[R0 + kh][v]);
  }
}

template <class T, int KHt, int NVR>
static void gx_sparse_image(const ConvShape& s, const GxSparseGeom& q_, const T* ws, const T* gout,
                            const uint8_t* idx, T* gxp, T* gx) {
  using V = Vec<T>;
  constexpr int L = V::L, RR = KHt + 1;
  const int64_t O = s.O, PH = s.OH / 2, PW = s.OW / 2, CP = q_.CP, Wp = q_.Wp, rowlen = q_.rowlen;
  const int64_t plane = PH * PW;
  // table offset of w[o] shifted by s = k % 2, for k = 0 … 3
  const int32_t wshift = static_cast<int32_t>(O * KHt * rowlen), wo = static_cast<int32_t>(KHt * rowlen);
  std::memset(gxp, 0, sizeof(T) * q_.Hp * Wp * CP);
  // bucket r = 0, 1: g and table offset of each channel whose window position is in row r
  T gs[2][kGxSparseMaxO];
  int32_t offs[2][kGxSparseMaxO];
  for (int64_t p = 0; p < PH; ++p)
    for (int64_t q = 0; q < PW; ++q) {
      int n0 = 0, n1 = 0;
      const uint8_t* ik = idx + p * PW + q;
      const T* g0 = gout + p * PW + q;
      for (int64_t o = 0; o < O; ++o) {
        const uint8_t k = ik[o * plane];
        const T g = g0[o * plane];
        const int32_t off = static_cast<int32_t>(o) * wo + (k & 1) * wshift;
        gs[0][n0] = g;
        offs[0][n0] = off;
        gs[1][n1] = g;
        offs[1][n1] = off;
        n0 += k < 2;
        n1 += (k == 2) | (k == 3);
      }
      typename V::R acc[RR][NVR];
#pragma GCC unroll 32
      for (int r = 0; r < RR; ++r)
#pragma GCC unroll 32
        for (int v = 0; v < NVR; ++v) acc[r][v] = V::zero();
      gx_bucket<T, KHt, NVR, 0>(acc, gs[0], offs[0], n0, ws, rowlen);  // k = 0, 1: region rows 0 … KH − 1
      gx_bucket<T, KHt, NVR, 1>(acc, gs[1], offs[1], n1, ws, rowlen);  // k = 2, 3: rows 1 … KH
#pragma GCC unroll 32
      for (int r = 0; r < RR; ++r) {
        T* dst = gxp + ((p * 2 + r) * Wp + q * 2) * CP;
#pragma GCC unroll 32
        for (int v = 0; v < NVR; ++v) V::storeu(dst + v * L, V::add(V::loadu(dst + v * L), acc[r][v]));
      }
    }
  from_channels_last(gxp, s.C, s.H, s.W, s.ph, s.pw, Wp, CP, gx);
}

template <class T> using GxSparseFn = void (*)(const ConvShape&, const GxSparseGeom&, const T*, const T*,
                                               const uint8_t*, T*, T*);

// The sparse ∂L/∂x applies to pool 2, stride 1, a 5-row kernel and a region row
// of 3 vectors (conv2 with float AVX-512: 6 columns × 8 channels; 18 accumulators).
template <class T> static GxSparseFn<T> pick_gx_sparse(const ConvShape& s, int64_t P, GxSparseGeom* q) {
  constexpr int64_t L = Vec<T>::L;
  if (P != 2 || s.sh != 1 || s.sw != 1 || L < 8 || s.O > kGxSparseMaxO) return nullptr;
  const int64_t cols = s.KW + 1;
  int64_t CP = s.C;
  while ((cols * CP) % L != 0 && CP < s.C + L) ++CP;
  // channel padding beyond 2× (conv1: 3 → 8) makes it slower than the dense path
  if ((cols * CP) % L != 0 || CP > 2 * s.C) return nullptr;
  *q = GxSparseGeom{CP, cols * CP, s.H + 2 * s.ph, s.W + 2 * s.pw};
  if (s.KH == 5 && cols * CP / L == 3) return gx_sparse_image<T, 5, 3>;
  return nullptr;
}

// Ws[sft][o][kh][col][c] = w[o][c][kh][col − sft] for 0 ≤ col − sft < KW, else 0.
template <class T>
static void build_gx_sparse_weights(const ConvShape& s, const GxSparseGeom& q, const T* w, T* ws) {
  std::memset(ws, 0, sizeof(T) * 2 * s.O * s.KH * q.rowlen);
  for (int64_t sft = 0; sft < 2; ++sft)
    for (int64_t o = 0; o < s.O; ++o)
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t kh = 0; kh < s.KH; ++kh)
          for (int64_t kw = 0; kw < s.KW; ++kw)
            ws[((sft * s.O + o) * s.KH + kh) * q.rowlen + (kw + sft) * q.CP + c] =
                w[((o * s.C + c) * s.KH + kh) * s.KW + kw];
}

}  // namespace OX_ISA
}  // namespace ox
