// conv2d and fused-block backward on the CPU (formulas in conv.h; overview in conv.cpp).
//
// Backward runs over fixed blocks of kBatchBlock images (deterministic for any
// thread count): per block it pads the images, accumulates ∂L/∂w and ∂L/∂b into
// the block's partial (register tiles of OBW channels × KWB taps, reduced over
// the block's images and pixels), and computes ∂L/∂x as a stride-1 convolution
// of the dilated, padded ∂L/∂y with the flipped, transposed kernel, reusing the
// forward tile kernel; where the input has few channels (conv2: 6) ∂L/∂x is
// instead scattered from ∂L/∂y through the kernel into a channels-last buffer
// (see "dense ∂L/∂x by scattering"), which multiplies no zeros. Block partials
// are summed in block order at the end.
//
// The fused block's backward starts from the pooled gradient and the saved
// window positions. Where it pays (conv2: pool 2, stride 1, 16 channels) it never
// builds the full-resolution ∂L/∂y, which is ≥ 3/4 zeros: sparse kernels visit
// only the one non-zero per window and channel (see "fused backward from the
// pooled gradient" below; for few input channels ∂L/∂w reads its patches in place
// from a channels-last copy of x); elsewhere ∂L/∂y is expanded and the dense path
// runs.
#include "cpu/conv_k5.h"
#include "cpu/conv_tiles.h"

namespace ox {
namespace OX_ISA {

// ---- backward ---------------------------------------------------------------
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
      V::store(lanes, V::mask(L), acc[r][k]);
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
          V::store(d, V::mask(L), V::add(V::loadu(d), acc[kh][v]));
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
        for (int v = 0; v < NVR; ++v) V::store(dst + v * L, V::mask(L), V::add(V::loadu(dst + v * L), acc[r][v]));
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
      V::store(d, V::mask(L), V::add(V::loadu(d), acc[r][v]));
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

// gy: ∂L/∂y (N, O, OH, OW), or with idx the pooled gradient (N, O, OH/P, OW/P).
template <class T>
static void backward(const ConvShape& s, const T* gy, const uint8_t* idx, int64_t P, const T* x, const T* w,
                     T* gx, T* gw, T* gb) {
  const int64_t nw = s.O * s.C * s.KH * s.KW;
  const int64_t nblocks = (s.N + kBatchBlock - 1) / kBatchBlock;
  const int64_t plane_y = s.O * s.OH * s.OW;
  const int64_t plane_gout = idx ? s.O * (s.OH / P) * (s.OW / P) : plane_y;
  const bool want_w = gw || gb;
  const bool gw_cv = use_channel_vectors_gw<T>(s.O, s.OW);
  T* partial = want_w ? new T[nblocks * (nw + s.O) + 1]() : nullptr;
  const BufGeom xg = input_geom(s, Vec<T>::L);
  // Fused block: ∂L/∂w, ∂L/∂b and ∂L/∂x straight from the pooled gradient where the
  // sparse kernels apply (see above); the dense path expands it first.
  // conv1-like layers: ∂L/∂w and ∂L/∂b by the parity-split kernel (k5_gw_block)
  const bool k5w = idx && want_w && k5_applies<T>(s, P);
  const int gws_nv = idx && want_w && !k5w ? gw_sparse_vectors<T>(s, P) : 0;
  GwClGeom gwq{};
  const GwClFn<T> gw_cl = gws_nv ? pick_gw_sparse_cl<T>(s, &gwq) : nullptr;
  const GwSparseFn<T> gw_sparse = gws_nv && !gw_cl ? pick_gw_sparse<T>(gws_nv) : nullptr;
  GxSparseGeom gxq{};
  const GxSparseFn<T> gx_sparse = idx && gx ? pick_gx_sparse<T>(s, P, &gxq) : nullptr;
  Scratch<T> wfull_buf(gx_sparse ? 2 * s.O * s.KH * gxq.rowlen : 0);
  T* wfull = wfull_buf.get();
  if (gx_sparse) build_gx_sparse_weights(s, gxq, w, wfull);
  GxScatterGeom gxs{};
  const GxScatterFn<T> gx_scatter = gx && !gx_sparse ? pick_gx_scatter<T>(s, &gxs) : nullptr;
  Scratch<T> wscat_buf(gx_scatter ? s.O * s.KH * gxs.rowvec : 0);
  T* wscat = wscat_buf.get();
  if (gx_scatter) build_gx_scatter_weights(s, gxs, w, wscat);
  const bool need_gexp = idx && ((gx && !gx_sparse) || (want_w && !gw_sparse && !gw_cl && !k5w));
  const bool fill_x = want_w && !k5w && !gw_cl;  // padded, phase-split x for the ∂L/∂w paths
  // ∂L/∂x: stride-1 conv of the dilated ∂L/∂y, padded by K−1−p, with the flipped kernel.
  const BufGeom gg{s.O, s.H + s.KH - 1, 1, s.W + s.KW - 1 + 2 * Vec<T>::L};
  const bool gx_dense = gx && !gx_sparse && !gx_scatter;
  Packed<T>* pk = gx_dense ? new Packed<T>(w, nullptr, s.C, s.O, s.KH, s.KW, true, s.W) : nullptr;
  const RowsFn<T> rows = gx_dense ? pick_rows<T>(*pk, s.C, s.W) : nullptr;

  parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
    T* xbufs = fill_x ? new T[kBatchBlock * xg.size()] : nullptr;
    const int64_t k5x = s.C * s.H * kK5Row, k5g = (s.OH / 2) * ((s.O + 5) / 6 * 6) * 64;
    T* k5buf = k5w ? static_cast<T*>(::operator new(sizeof(T) * kBatchBlock * (k5x + k5g), std::align_val_t(64)))
                   : nullptr;
    T* gexp = need_gexp ? new T[kBatchBlock * plane_y] : nullptr;
    T* gbuf = gx_dense ? new T[gg.size()] : nullptr;
    T* gtrans = gw && gw_cv && !gw_sparse && !gw_cl ? new T[kBatchBlock * plane_y] : nullptr;
    // patches of the sparse ∂L/∂w (zeroed once: lanes past C·KH·KW are read, never
    // stored), padded channels-last ∂L/∂x of the sparse path
    const int64_t npatch = (s.OH / P) * P * (s.OW / P) * P;
    Scratch<T> xcol_buf(gw_sparse ? npatch * patch_stride<T>(s.C * s.KH * s.KW) : 0, true);
    Scratch<T> gxp_buf(gx_sparse ? gxq.Hp * gxq.Wp * gxq.CP : 0);
    Scratch<T> gxscat_buf(gx_scatter ? gxs.size() : 0);
    // channels-last x and the block's channels-last ∂L/∂w sum of the gw_cl path
    Scratch<T> xcl_buf(gw_cl ? gwq.size() : 0), acc_cl_buf(gw_cl ? s.O * s.KH * gwq.rowvec : 0);
    T *xcol = xcol_buf.get(), *gxp = gxp_buf.get(), *gxscat = gxscat_buf.get();
    const T* xptr[kBatchBlock];
    const T* gptr[kBatchBlock];
    const T* gtptr[kBatchBlock];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * kBatchBlock, n1 = n0 + kBatchBlock < s.N ? n0 + kBatchBlock : s.N;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t i = n - n0;
        if (need_gexp) {
          expand_pool_grad(s, P, gy + n * plane_gout, idx + n * plane_gout, gexp + i * plane_y);
          gptr[i] = gexp + i * plane_y;
        } else {
          gptr[i] = idx ? nullptr : gy + n * plane_y;
        }
        if (fill_x) {
          fill_buffer(x + n * s.C * s.H * s.W, s.H, s.W, 1, 1, s.ph, s.pw, xg, xbufs + i * xg.size());
          xptr[i] = xbufs + i * xg.size();
        }
        if (gx_sparse) {
          gx_sparse(s, gxq, wfull, gy + n * plane_gout, idx + n * plane_gout, gxp, gx + n * s.C * s.H * s.W);
        } else if (gx_scatter) {
          gx_scatter(s, gxs, wscat, gptr[i], gxscat, gx + n * s.C * s.H * s.W);
        } else if (gx) {
          fill_buffer(gptr[i], s.OH, s.OW, s.sh, s.sw, s.KH - 1 - s.ph, s.KW - 1 - s.pw, gg, gbuf);
          // rows [KH−1−ph, KH−1−ph + (OH−1)·sh + 1) of the dilated, padded ∂L/∂y hold data
          RowsArgs<T> a{gbuf, gg, s.KH, s.KW, 1, pk->wp, pk->bp, s.C, pk->nob, s.W,
                        s.KH - 1 - s.ph, s.KH - 1 - s.ph + (s.OH - 1) * s.sh + 1};
          rows(a, 0, s.H, gx + n * s.C * s.H * s.W, s.H * s.W, s.W);
        }
      }
      if (!want_w) continue;
      T* part = partial + blk * (nw + s.O);
      if (k5w) {
        k5_gw<T>(s, x, gy, idx, n0, n1, k5buf, k5buf + kBatchBlock * k5x, part);
        continue;
      }
      if (gw_cl) {  // ∂L/∂w and ∂L/∂b together, as below
        gw_cl(s, P, gwq, x, gy, idx, n0, n1, xcl_buf.get(), acc_cl_buf.get(), part);
        continue;
      }
      if (gw_sparse) {  // ∂L/∂w and ∂L/∂b together (an unwanted one is computed and dropped)
        for (int64_t n = n0; n < n1; ++n)
          gw_sparse(s, P, xptr[n - n0], xg, gy + n * plane_gout, idx + n * plane_gout, xcol, part);
        continue;
      }
      if (gw && gw_cv) {
        for (int64_t i = 0; i < n1 - n0; ++i) {
          transpose_image(gptr[i], s.O, s.OH * s.OW, gtrans + i * plane_y);
          gtptr[i] = gtrans + i * plane_y;
        }
        GwArgs<T> a{xptr, gtptr, n1 - n0, xg, s.O, s.KH, s.KW, s.sh, s.OH, s.OW};
        for (int64_t ob = 0; ob < s.O / Vec<T>::L; ++ob)
          for (int64_t kw0 = 0; kw0 < s.KW; kw0 += 5) {
            const int64_t kb = s.KW - kw0 < 5 ? s.KW - kw0 : 5;
            for (int64_t c = 0; c < s.C; ++c)
              for (int64_t kh = 0; kh < s.KH; kh += 2) {
                const GwFn<T> tile = s.KH - kh >= 2 ? pick_gw_cv_k<T, 2>(kb) : pick_gw_cv_k<T, 1>(kb);
                tile(a, ob, c, kh, kw0, part);
              }
          }
      } else if (gw) {
        GwArgs<T> a{xptr, gptr, n1 - n0, xg, s.O, s.KH, s.KW, s.sh, s.OH, s.OW};
        for (int64_t o0 = 0; o0 < s.O; o0 += 4)
          for (int64_t kw0 = 0; kw0 < s.KW; kw0 += 5) {
            const int64_t ob = s.O - o0 < 4 ? s.O - o0 : 4, kb = s.KW - kw0 < 5 ? s.KW - kw0 : 5;
            const GwFn<T> tile = pick_gw<T>(ob, kb);
            for (int64_t c = 0; c < s.C; ++c)
              for (int64_t kh = 0; kh < s.KH; ++kh) tile(a, o0, c, kh, kw0, part);
          }
      }
      if (gb) {
        const int64_t plane = s.OH * s.OW;
        for (int64_t o = 0; o < s.O; ++o) {
          typename Vec<T>::R acc = Vec<T>::zero();
          for (int64_t i = 0; i < n1 - n0; ++i) {
            const T* g = gptr[i] + o * plane;
            for (int64_t e = 0; e < plane; e += Vec<T>::L)
              acc = Vec<T>::add(acc, Vec<T>::loadz(Vec<T>::mask(plane - e), g + e));
          }
          part[nw + o] = Vec<T>::sum(acc);
        }
      }
    }
    if (k5buf) ::operator delete(k5buf, std::align_val_t(64));
    delete[] gtrans;
    delete[] gbuf;
    delete[] gexp;
    delete[] xbufs;
  });

  if (want_w) {
    for (int64_t e = 0; e < nw + s.O; ++e) {
      T acc = 0;
      for (int64_t blk = 0; blk < nblocks; ++blk) acc += partial[blk * (nw + s.O) + e];
      if (e < nw) {
        if (gw) gw[e] = acc;
      } else if (gb) {
        gb[e - nw] = acc;
      }
    }
  }
  delete pk;
  delete[] partial;
}

// ---- per-ISA entry point (type dispatch) -------------------------------------
void conv_bwd(const ConvShape& s, const void* gy, const uint8_t* idx, int64_t P, const void* x, const void* w,
              void* gx, void* gw, void* gb, bool f64) {
  if (f64)
    backward(s, static_cast<const double*>(gy), idx, P, static_cast<const double*>(x),
             static_cast<const double*>(w), static_cast<double*>(gx), static_cast<double*>(gw),
             static_cast<double*>(gb));
  else
    backward(s, static_cast<const float*>(gy), idx, P, static_cast<const float*>(x), static_cast<const float*>(w),
             static_cast<float*>(gx), static_cast<float*>(gw), static_cast<float*>(gb));
}

}  // namespace OX_ISA
}  // namespace ox
