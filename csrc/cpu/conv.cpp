// conv2d and the fused conv → ReLU → max-pool block on the CPU (formulas in conv.h).
//
// Method: direct convolution, vectorised along the output row. Each image is
// first copied into a zero-padded buffer whose rows are split into `sw` column
// phases (column j·sw + q stored at [q][j]), so that for every stride the
// pixels one kernel tap touches along an output row are contiguous. A tile of
// OB output channels × NV vectors of output pixels is kept in registers while
// the loop runs over (c, kh, kw): one vector load of input, OB broadcast FMAs.
// The channel counts of the course nets (3→6, 6→16) are far too small for
// im2col + GEMM to pay off.
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
//
// conv1-like layers (5×5, stride 1, no padding, pool 2, rows of at most 32 pixels,
// few channels) have their own float AVX-512 kernels (k5_*: column-parity split
// rows, pooling in registers, minimal filtering in the forward, one product per
// window in ∂L/∂w).
//
// Layers whose channel count is a multiple of the lane count and whose output
// rows are narrow (conv2: 16 channels, 10-pixel rows) use channel-vectorised
// tiles instead (one vector = L output channels of one pixel), for forward and
// ∂L/∂w. Loops over tile dimensions carry `#pragma GCC unroll`: without full
// unrolling the accumulators live on the stack (∂L/∂w was 2.3× slower).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

#include "conv.h"
#include "core/isa.h"
#include "core/threading.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace ox {
namespace OX_ISA {

// ---- a minimal SIMD vocabulary: L lanes, masked tails ---------------------
template <class T> struct Vec;

#if defined(__AVX512F__)
template <> struct Vec<float> {
  using R = __m512;
  using M = __mmask16;
  static constexpr int L = 16;
  static M mask(int64_t n) { return n >= L ? M(0xFFFF) : M((1u << (n > 0 ? n : 0)) - 1u); }
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float v) { return _mm512_set1_ps(v); }
  static R loadu(const float* p) { return _mm512_loadu_ps(p); }
  static R loadz(M m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, M m, R v) { _mm512_mask_storeu_ps(p, m, v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static float sum(R v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    float r = 0;
    for (int i = 0; i < 16; ++i) r += t[i];
    return r;
  }
};
template <> struct Vec<double> {
  using R = __m512d;
  using M = __mmask8;
  static constexpr int L = 8;
  static M mask(int64_t n) { return n >= L ? M(0xFF) : M((1u << (n > 0 ? n : 0)) - 1u); }
  static R zero() { return _mm512_setzero_pd(); }
  static R set1(double v) { return _mm512_set1_pd(v); }
  static R loadu(const double* p) { return _mm512_loadu_pd(p); }
  static R loadz(M m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static void store(double* p, M m, R v) { _mm512_mask_storeu_pd(p, m, v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static double sum(R v) {
    alignas(64) double t[8];
    _mm512_store_pd(t, v);
    double r = 0;
    for (int i = 0; i < 8; ++i) r += t[i];
    return r;
  }
};
#elif defined(__AVX2__)
template <> struct Vec<float> {
  using R = __m256;
  using M = __m256i;
  static constexpr int L = 8;
  static M mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n > L ? L : n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float v) { return _mm256_set1_ps(v); }
  static R loadu(const float* p) { return _mm256_loadu_ps(p); }
  static R loadz(M m, const float* p) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, M m, R v) { _mm256_maskstore_ps(p, m, v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static float sum(R v) {
    float t[8];
    _mm256_storeu_ps(t, v);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  }
};
template <> struct Vec<double> {
  using R = __m256d;
  using M = __m256i;
  static constexpr int L = 4;
  static M mask(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n > L ? L : n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static R zero() { return _mm256_setzero_pd(); }
  static R set1(double v) { return _mm256_set1_pd(v); }
  static R loadu(const double* p) { return _mm256_loadu_pd(p); }
  static R loadz(M m, const double* p) { return _mm256_maskload_pd(p, m); }
  static void store(double* p, M m, R v) { _mm256_maskstore_pd(p, m, v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static double sum(R v) {
    double t[4];
    _mm256_storeu_pd(t, v);
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
};
#else
template <class T> struct ScalarVec {
  using R = T;
  using M = bool;
  static constexpr int L = 1;
  static M mask(int64_t n) { return n > 0; }
  static R zero() { return T(0); }
  static R set1(T v) { return v; }
  static R loadu(const T* p) { return *p; }
  static R loadz(M m, const T* p) { return m ? *p : T(0); }
  static void store(T* p, M m, R v) {
    if (m) *p = v;
  }
  static R fma(R a, R b, R c) { return a * b + c; }
  static R add(R a, R b) { return a + b; }
  static T sum(R v) { return v; }
};
template <> struct Vec<float> : ScalarVec<float> {};
template <> struct Vec<double> : ScalarVec<double> {};
#endif

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

// ---- forward tile kernel --------------------------------------------------
// Packed weights: wp[ob][c][kh][kw][OB] (channels zero-padded to a multiple of OB).
template <class T> struct RowsArgs {
  const T* buf;
  BufGeom g;
  int64_t KH, KW, sh;   // kernel and row stride inside the buffer
  const T* wp;          // packed weights
  const T* bp;          // packed bias (nob·OB entries)
  int64_t O, nob, OW;   // output channels, channel blocks, output width
  int64_t r_lo, r_hi;   // buffer rows outside [r_lo, r_hi) are all zero: their taps are skipped
};

// out[o][oh − oh0][ow] (strides ostride, rstride) for oh in [oh0, oh1), all o.
template <class T, int OB, int NV>
static void conv_rows(const RowsArgs<T>& a, int64_t oh0, int64_t oh1, T* out, int64_t ostride, int64_t rstride) {
  using V = Vec<T>;
  constexpr int L = V::L;
  const int64_t C = a.g.C, R = a.g.R, sw = a.g.sw, Wj = a.g.Wj, KH = a.KH, KW = a.KW;
  for (int64_t ob = 0; ob < a.nob; ++ob) {
    const T* wblock = a.wp + ob * C * KH * KW * OB;
    const int64_t nout = a.O - ob * OB < OB ? a.O - ob * OB : OB;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      for (int64_t ow0 = 0; ow0 < a.OW; ow0 += NV * L) {
        typename V::R acc[OB][NV];
        #pragma GCC unroll 32
        for (int o = 0; o < OB; ++o)
          #pragma GCC unroll 32
          for (int v = 0; v < NV; ++v) acc[o][v] = V::set1(a.bp[ob * OB + o]);
        const int64_t kh_lo = a.r_lo - oh * a.sh > 0 ? a.r_lo - oh * a.sh : 0;
        const int64_t kh_hi = a.r_hi - oh * a.sh < KH ? a.r_hi - oh * a.sh : KH;
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
            const T* wk = wblock + (c * KH + kh) * KW * OB;
            const T* row = a.buf + ((c * R + oh * a.sh + kh) * sw) * Wj + ow0;
            // tap kw sits in phase kw % sw at offset kw / sw (stepped, no division)
            for (int64_t kw = 0, q = 0, j = 0; kw < KW; ++kw, wk += OB) {
              const T* xp = row + q * Wj + j;
              if (++q == sw) {
                q = 0;
                ++j;
              }
              typename V::R xv[NV];
              #pragma GCC unroll 32
              for (int v = 0; v < NV; ++v) xv[v] = V::loadu(xp + v * L);
              #pragma GCC unroll 32
              for (int o = 0; o < OB; ++o) {
                const typename V::R wv = V::set1(wk[o]);
                #pragma GCC unroll 32
                for (int v = 0; v < NV; ++v) acc[o][v] = V::fma(wv, xv[v], acc[o][v]);
              }
            }
          }
        }
        T* dst = out + (ob * OB) * ostride + (oh - oh0) * rstride + ow0;
        for (int o = 0; o < nout; ++o)
          #pragma GCC unroll 32
          for (int v = 0; v < NV; ++v) {
            const int64_t left = a.OW - ow0 - v * L;
            if (left > 0) V::store(dst + o * ostride + v * L, V::mask(left), acc[o][v]);
          }
      }
    }
  }
}

// Channel-vectorised variant for output-channel counts that are a multiple of
// the lane count L (conv2: 16 channels, 10-pixel rows): a vector holds L output
// channels of one pixel, a tile holds PB pixels of a row, and each tap is one
// weight-vector load feeding PB broadcast FMAs. All lanes do useful work however
// narrow the row; the tile is transposed on the way out.
template <class T, int PB>
static void conv_tile_cv(const RowsArgs<T>& a, int64_t ob, int64_t oh, int64_t ow0, T* dst, int64_t ostride) {
  using V = Vec<T>;
  constexpr int L = V::L;
  const int64_t C = a.g.C, R = a.g.R, sw = a.g.sw, Wj = a.g.Wj, KH = a.KH, KW = a.KW;
  typename V::R acc[PB];
  const typename V::R bias = V::loadu(a.bp + ob * L);
#pragma GCC unroll 32
  for (int p = 0; p < PB; ++p) acc[p] = bias;
  const T* wblock = a.wp + ob * C * KH * KW * L;
  const int64_t kh_lo = a.r_lo - oh * a.sh > 0 ? a.r_lo - oh * a.sh : 0;
  const int64_t kh_hi = a.r_hi - oh * a.sh < KH ? a.r_hi - oh * a.sh : KH;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
      const T* wk = wblock + (c * KH + kh) * KW * L;
      const T* row = a.buf + ((c * R + oh * a.sh + kh) * sw) * Wj + ow0;
      for (int64_t kw = 0, q = 0, j = 0; kw < KW; ++kw, wk += L) {
        const T* xp = row + q * Wj + j;
        if (++q == sw) {
          q = 0;
          ++j;
        }
        const typename V::R wv = V::loadu(wk);
#pragma GCC unroll 32
        for (int p = 0; p < PB; ++p) acc[p] = V::fma(V::set1(xp[p]), wv, acc[p]);
      }
    }
  alignas(64) T tile[PB][L];
#pragma GCC unroll 32
  for (int p = 0; p < PB; ++p) V::store(tile[p], V::mask(L), acc[p]);
  const int64_t nout = a.O - ob * L < L ? a.O - ob * L : L;
  for (int64_t o = 0; o < nout; ++o)
    for (int p = 0; p < PB; ++p) dst[o * ostride + p] = tile[p][o];
}

template <class T> using TileCvFn = void (*)(const RowsArgs<T>&, int64_t, int64_t, int64_t, T*, int64_t);

template <class T> static TileCvFn<T> pick_tile_cv(int64_t pb) {
  switch (pb) {
    case 1: return conv_tile_cv<T, 1>;
    case 2: return conv_tile_cv<T, 2>;
    case 3: return conv_tile_cv<T, 3>;
    case 4: return conv_tile_cv<T, 4>;
    case 5: return conv_tile_cv<T, 5>;
    case 6: return conv_tile_cv<T, 6>;
    case 7: return conv_tile_cv<T, 7>;
    case 8: return conv_tile_cv<T, 8>;
    case 9: return conv_tile_cv<T, 9>;
    case 10: return conv_tile_cv<T, 10>;
    case 11: return conv_tile_cv<T, 11>;
    default: return conv_tile_cv<T, 12>;
  }
}

// Splits a row of OW pixels into near-equal tiles of at most 12.
template <class T>
static void conv_rows_cv(const RowsArgs<T>& a, int64_t oh0, int64_t oh1, T* out, int64_t ostride, int64_t rstride) {
  const int64_t ntiles = (a.OW + 11) / 12, base = a.OW / ntiles, extra = a.OW % ntiles;
  for (int64_t ob = 0; ob < a.nob; ++ob)
    for (int64_t oh = oh0; oh < oh1; ++oh)
      for (int64_t t = 0, ow0 = 0; t < ntiles; ++t) {
        const int64_t pb = base + (t < extra ? 1 : 0);
        pick_tile_cv<T>(pb)(a, ob, oh, ow0, out + ob * Vec<T>::L * ostride + (oh - oh0) * rstride + ow0, ostride);
        ow0 += pb;
      }
}

// Channel vectors pay off when the channels fill whole vectors and output rows
// would leave many pixel lanes idle.
template <class T> static bool use_channel_vectors(int64_t O, int64_t OW) {
  constexpr int64_t L = Vec<T>::L;
  if (L < 8 || O % L != 0) return false;
  const int64_t lanes = (OW + L - 1) / L * L;
  return OW * 100 < lanes * 85;
}

template <class T> using RowsFn = void (*)(const RowsArgs<T>&, int64_t, int64_t, T*, int64_t, int64_t);

template <class T, int NV> static RowsFn<T> pick_rows_nv(int ob) {
  switch (ob) {
    case 1: return conv_rows<T, 1, NV>;
    case 2: return conv_rows<T, 2, NV>;
    case 4: return conv_rows<T, 4, NV>;
    case 6: return conv_rows<T, 6, NV>;
    default: return conv_rows<T, 8, NV>;
  }
}

// Output-channel block: the whole channel count when it is small, else a
// divisor of it (6, 8), so that few lanes of the tile hold padding.
static int pick_ob(int64_t O) {
  if (O % 8 == 0) return 8;
  if (O % 6 == 0) return 6;
  if (O <= 1) return 1;
  if (O <= 2) return 2;
  if (O <= 4) return 4;
  if (O <= 6) return 6;
  return 8;
}

// A packed kernel for conv_rows. flip_transpose: w is (Cin, Oout, KH, KW) and the
// packed kernel is w[ci][oo][KH−1−kh][KW−1−kw] (for ∂L/∂x).
template <class T> struct Packed {
  Scratch<T> wbuf, bbuf;
  T* wp = nullptr;
  T* bp = nullptr;
  int ob = 1;
  int64_t nob = 0;
  Packed(const T* w, const T* b, int64_t Oout, int64_t Cin, int64_t KH, int64_t KW, bool flip_transpose,
         int64_t OW)
      : wbuf(weights_size(Oout, Cin, KH, KW, OW), true), bbuf(block_channels(Oout, OW) + 1, true) {
    ob = block_of(Oout, OW);
    nob = (Oout + ob - 1) / ob;
    wp = wbuf.get();
    bp = bbuf.get();
    for (int64_t oo = 0; oo < Oout; ++oo) {
      if (b) bp[oo] = b[oo];
      for (int64_t ci = 0; ci < Cin; ++ci)
        for (int64_t kh = 0; kh < KH; ++kh)
          for (int64_t kw = 0; kw < KW; ++kw) {
            const T v = flip_transpose ? w[((ci * Oout + oo) * KH + (KH - 1 - kh)) * KW + (KW - 1 - kw)]
                                       : w[((oo * Cin + ci) * KH + kh) * KW + kw];
            wp[((((oo / ob) * Cin + ci) * KH + kh) * KW + kw) * ob + oo % ob] = v;
          }
    }
  }
  Packed(const Packed&) = delete;
  Packed& operator=(const Packed&) = delete;

 private:
  static int block_of(int64_t Oout, int64_t OW) {
    return use_channel_vectors<T>(Oout, OW) ? Vec<T>::L : pick_ob(Oout);
  }
  static int64_t block_channels(int64_t Oout, int64_t OW) {
    const int64_t b = block_of(Oout, OW);
    return (Oout + b - 1) / b * b;
  }
  static int64_t weights_size(int64_t Oout, int64_t Cin, int64_t KH, int64_t KW, int64_t OW) {
    return block_channels(Oout, OW) * Cin * KH * KW + 1;
  }
};

template <class T> static RowsFn<T> pick_rows(const Packed<T>& pk, int64_t Oout, int64_t OW) {
  if (use_channel_vectors<T>(Oout, OW)) return conv_rows_cv<T>;
  return OW > Vec<T>::L ? pick_rows_nv<T, 2>(pk.ob) : pick_rows_nv<T, 1>(pk.ob);
}

// Geometry of the forward input buffer of one image.
static BufGeom input_geom(const ConvShape& s, int lanes) {
  return BufGeom{s.C, (s.OH - 1) * s.sh + s.KH, s.sw, s.OW + (s.KW - 1) / s.sw + 2 * lanes};
}

// ---- forward ---------------------------------------------------------------
template <class T> static void forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  if (s.N == 0 || s.O == 0 || s.OH == 0 || s.OW == 0) return;
  Packed<T> pk(w, b, s.O, s.C, s.KH, s.KW, false, s.OW);
  const BufGeom g = input_geom(s, Vec<T>::L);
  const RowsFn<T> rows = pick_rows<T>(pk, s.O, s.OW);
  parallel_for(s.N, 1, [&](int64_t n0, int64_t n1) {
    T* buf = new T[g.size()];
    RowsArgs<T> a{buf, g, s.KH, s.KW, s.sh, pk.wp, pk.bp, s.O, pk.nob, s.OW, s.ph, s.ph + s.H};
    for (int64_t n = n0; n < n1; ++n) {
      fill_buffer(x + n * s.C * s.H * s.W, s.H, s.W, 1, 1, s.ph, s.pw, g, buf);
      rows(a, 0, s.OH, y + n * s.O * s.OH * s.OW, s.OH * s.OW, s.OW);
    }
    delete[] buf;
  });
}

// ---- fused forward: conv + bias → ReLU → P×P max pool ----------------------
// Only P conv rows of one image exist at a time (in a small scratch buffer);
// the full-resolution activation is never written. Saved for backward: the
// uint8 position of the chosen element in each window (255: ReLU blocked it).
// That is 1 byte per pooled output and it makes ∂L/∂y exact without
// recomputing the convolution; x and w are needed for ∂L/∂w, ∂L/∂x anyway.
// 2×2 windows of two conv rows r0, r1 → PW pooled outputs, the same rule as
// the general loop below (first maximum of relu(y), last NaN), straight-line.
template <class T, int Scalar = 1>
static void pool2_row(const T* r0, const T* r1, int64_t PW, T* out, uint8_t* idx) {
  for (int64_t q = 0; q < PW; ++q) {
    const T a = r0[2 * q], b = r0[2 * q + 1], c = r1[2 * q], d = r1[2 * q + 1];
    const T za = a > T(0) ? a : T(0), zb = b > T(0) ? b : T(0);
    const T zc = c > T(0) ? c : T(0), zd = d > T(0) ? d : T(0);
    const T m01 = zb > za ? zb : za, m23 = zd > zc ? zd : zc;
    T mx = m23 > m01 ? m23 : m01;
    int k = za == mx ? 0 : zb == mx ? 1 : zc == mx ? 2 : 3;
    if ((a != a) | (b != b) | (c != c) | (d != d)) {  // rare: the last NaN wins
      mx = NAN;
      k = d != d ? 3 : c != c ? 2 : b != b ? 1 : 0;
    }
    out[q] = mx;
    idx[q] = mx <= T(0) ? kPoolNoGrad : static_cast<uint8_t>(k);
  }
}

#if defined(__AVX512F__)
// float, AVX-512: 16 windows at a time. Even/odd columns are split with a
// two-source permute; max with 0 is relu (NaN windows are redone by the scalar
// rule above); the first position holding the max wins, as in torch.
template <>
void pool2_row<float>(const float* r0, const float* r1, int64_t PW, float* out, uint8_t* idx) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 zero = _mm512_setzero_ps();
  // maskz form: GCC 12's plain _mm512_max_ps trips -Wmaybe-uninitialized
  auto max16 = [](__m512 x, __m512 y) { return _mm512_maskz_max_ps(0xFFFF, x, y); };
  for (int64_t q0 = 0; q0 < PW; q0 += 16) {
    const int64_t n = PW - q0 < 16 ? PW - q0 : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    const __mmask16 mlo = static_cast<__mmask16>(n >= 8 ? 0xFFFFu : (1u << (2 * n)) - 1u);
    const __mmask16 mhi = static_cast<__mmask16>(n <= 8 ? 0u : (1u << (2 * n - 16)) - 1u);
    const __m512 lo0 = _mm512_maskz_loadu_ps(mlo, r0 + 2 * q0), hi0 = _mm512_maskz_loadu_ps(mhi, r0 + 2 * q0 + 16);
    const __m512 lo1 = _mm512_maskz_loadu_ps(mlo, r1 + 2 * q0), hi1 = _mm512_maskz_loadu_ps(mhi, r1 + 2 * q0 + 16);
    const __m512 a = _mm512_permutex2var_ps(lo0, even, hi0), b = _mm512_permutex2var_ps(lo0, odd, hi0);
    const __m512 c = _mm512_permutex2var_ps(lo1, even, hi1), d = _mm512_permutex2var_ps(lo1, odd, hi1);
    const __mmask16 nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q) |
                          _mm512_cmp_ps_mask(c, c, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q);
    if (nan & m) {  // rare: the scalar rule handles NaN
      pool2_row<float, 0>(r0 + 2 * q0, r1 + 2 * q0, n, out + q0, idx + q0);
      continue;
    }
    const __m512 za = max16(a, zero), zb = max16(b, zero);
    const __m512 zc = max16(c, zero), zd = max16(d, zero);
    const __m512 mx = max16(max16(za, zb), max16(zc, zd));
    __m512i k = _mm512_set1_epi32(3);
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(zc, mx, _CMP_EQ_OQ), _mm512_set1_epi32(2));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(zb, mx, _CMP_EQ_OQ), _mm512_set1_epi32(1));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(za, mx, _CMP_EQ_OQ), _mm512_set1_epi32(0));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(mx, zero, _CMP_LE_OQ), _mm512_set1_epi32(kPoolNoGrad));
    _mm512_mask_storeu_ps(out + q0, m, mx);
    _mm512_mask_cvtepi32_storeu_epi8(idx + q0, m, k);
  }
}
#endif

#if defined(__AVX512F__)
// Fused forward of channel-vectorised layers (conv2: 16 channels), float AVX-512,
// pool 2: the tile holds conv rows 2p and 2p + 1 for PB (even) pixels, one vector
// = 16 output channels of one pixel, and pools in registers, 16 channels per
// instruction, with the rule of pool2_row (first maximum of relu(y); windows
// with a NaN redone by the scalar rule). Only the pooled values and indices are
// written (transposed on the way out); no conv row is stored.
template <int PB>
static void conv_pool2_tile_cv(const RowsArgs<float>& a, int64_t ob, int64_t p, int64_t ow0, int64_t PH,
                               int64_t PW, float* out, uint8_t* idx) {
  static_assert(PB % 2 == 0, "whole windows");
  constexpr int L = 16;
  const int64_t C = a.g.C, R = a.g.R, sw = a.g.sw, Wj = a.g.Wj, KH = a.KH, KW = a.KW;
  __m512 acc0[PB], acc1[PB];
  const __m512 bias = _mm512_loadu_ps(a.bp + ob * L);
#pragma GCC unroll 32
  for (int q = 0; q < PB; ++q) acc0[q] = acc1[q] = bias;
  const float* wblock = a.wp + ob * C * KH * KW * L;
  // all KH taps of both rows: padding rows of the buffer are zero
  for (int64_t c = 0; c < C; ++c)
    for (int64_t kh = 0; kh < KH; ++kh) {
      const float* wk = wblock + (c * KH + kh) * KW * L;
      const float* row0 = a.buf + ((c * R + 2 * p * a.sh + kh) * sw) * Wj + ow0;
      const float* row1 = a.buf + ((c * R + (2 * p + 1) * a.sh + kh) * sw) * Wj + ow0;
      for (int64_t kw = 0, q = 0, j = 0; kw < KW; ++kw, wk += L) {
        const int64_t off = q * Wj + j;
        if (++q == sw) {
          q = 0;
          ++j;
        }
        const __m512 wv = _mm512_loadu_ps(wk);
#pragma GCC unroll 32
        for (int t = 0; t < PB; ++t) {
          acc0[t] = _mm512_fmadd_ps(_mm512_set1_ps(row0[off + t]), wv, acc0[t]);
          acc1[t] = _mm512_fmadd_ps(_mm512_set1_ps(row1[off + t]), wv, acc1[t]);
        }
      }
    }
  const __m512 zero = _mm512_setzero_ps();
  auto max16 = [](__m512 x, __m512 y) { return _mm512_maskz_max_ps(0xFFFF, x, y); };
  const int64_t nout = a.O - ob * L < L ? a.O - ob * L : L;
  const int64_t plane = PH * PW;
#pragma GCC unroll 16
  for (int t = 0; t < PB / 2; ++t) {
    const __m512 va = acc0[2 * t], vb = acc0[2 * t + 1], vc = acc1[2 * t], vd = acc1[2 * t + 1];
    const int64_t qo = ow0 / 2 + t;
    alignas(64) float mo[L];
    alignas(64) int32_t ko[L];
    const __mmask16 nan = _mm512_cmp_ps_mask(va, va, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(vb, vb, _CMP_UNORD_Q) |
                          _mm512_cmp_ps_mask(vc, vc, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(vd, vd, _CMP_UNORD_Q);
    const __m512 za = max16(va, zero), zb = max16(vb, zero), zc = max16(vc, zero), zd = max16(vd, zero);
    const __m512 mx = max16(max16(za, zb), max16(zc, zd));
    __m512i k = _mm512_set1_epi32(3);
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(zc, mx, _CMP_EQ_OQ), _mm512_set1_epi32(2));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(zb, mx, _CMP_EQ_OQ), _mm512_set1_epi32(1));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(za, mx, _CMP_EQ_OQ), _mm512_set1_epi32(0));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(mx, zero, _CMP_LE_OQ), _mm512_set1_epi32(kPoolNoGrad));
    _mm512_store_ps(mo, mx);
    _mm512_store_si512(ko, k);
    if (nan) {  // rare: the scalar rule (pool2_row) for the lanes with a NaN
      alignas(64) float ra[L], rb[L], rc[L], rd[L];
      _mm512_store_ps(ra, va);
      _mm512_store_ps(rb, vb);
      _mm512_store_ps(rc, vc);
      _mm512_store_ps(rd, vd);
      for (int o = 0; o < L; ++o) {
        if (!((nan >> o) & 1)) continue;
        const float r0[2] = {ra[o], rb[o]}, r1[2] = {rc[o], rd[o]};
        uint8_t kk;
        pool2_row<float, 0>(r0, r1, 1, mo + o, &kk);
        ko[o] = kk;
      }
    }
    float* dst = out + (ob * L) * plane + p * PW + qo;
    uint8_t* di = idx + (ob * L) * plane + p * PW + qo;
    for (int64_t o = 0; o < nout; ++o) {
      dst[o * plane] = mo[o];
      di[o * plane] = static_cast<uint8_t>(ko[o]);
    }
  }
}

using PoolTileFn = void (*)(const RowsArgs<float>&, int64_t, int64_t, int64_t, int64_t, int64_t, float*, uint8_t*);

static PoolTileFn pick_pool_tile_cv(int64_t pb) {
  switch (pb) {
    case 2: return conv_pool2_tile_cv<2>;
    case 4: return conv_pool2_tile_cv<4>;
    case 6: return conv_pool2_tile_cv<6>;
    case 8: return conv_pool2_tile_cv<8>;
    case 10: return conv_pool2_tile_cv<10>;
    default: return conv_pool2_tile_cv<12>;
  }
}

// One image (buffer already filled): rows of windows, split into near-equal tiles
// of at most 6 windows (12 pixels, 24 accumulators).
static bool fused_forward_cv_image(const ConvShape& s, const RowsArgs<float>& a, int64_t nob, float* out,
                                   uint8_t* idx) {
  const int64_t PH = s.OH / 2, PW = s.OW / 2;
  const int64_t ntiles = (PW + 5) / 6, base = PW / ntiles, extra = PW % ntiles;
  for (int64_t ob = 0; ob < nob; ++ob)
    for (int64_t p = 0; p < PH; ++p)
      for (int64_t t = 0, q0 = 0; t < ntiles; ++t) {
        const int64_t nwin = base + (t < extra ? 1 : 0);
        pick_pool_tile_cv(2 * nwin)(a, ob, p, 2 * q0, PH, PW, out, idx);
        q0 += nwin;
      }
  return true;
}
#endif

// Generic: no in-register pooling for this type / instruction set.
template <class T>
static bool fused_forward_cv(const ConvShape&, int64_t, const RowsArgs<T>&, int64_t, T*, uint8_t*) {
  return false;
}
#if defined(__AVX512F__)
template <>
bool fused_forward_cv<float>(const ConvShape& s, int64_t P, const RowsArgs<float>& a, int64_t nob, float* out,
                             uint8_t* idx) {
  if (P != 2 || !use_channel_vectors<float>(s.O, s.OW)) return false;
  return fused_forward_cv_image(s, a, nob, out, idx);
}
#endif

// ---- 5×5 kernel, stride 1, no padding, pool 2, narrow rows (conv1: 3→6, 32×32) ----
// The channel count is too small for channel vectors, so a vector holds output
// pixels of one row, but split by column parity: each image row is stored as its
// even columns, then its odd columns (k5_split, 64 floats per row), so that conv
// columns 2q (even) and 2q + 1 (odd) of the same window q sit in the same lane of
// two vectors. A tile computes 3 output channels × conv rows 2p, 2p + 1 × even/odd
// columns (12 accumulators): the 2×2 window of pooled output (p, q) is lane q of
// four of them, and pools in registers with pool2_row's rule. Tap kw of an even
// column 2q reads column 2q + kw = parity t & 1 at offset t >> 1 (t = kw); of an odd
// column, t = kw + 1: six vectors per input row serve all 10 (parity, kw) pairs.
//
// ∂L/∂w and ∂L/∂b use the same layout: the pooled gradient of each window is put
// into the one of its four positions that the saved index names (zeros elsewhere:
// the same products as the dense path, which multiplies the expanded ∂L/∂y), and
// a tile of 3 channels × 5 taps kw of one (c, kh) sums G[r][s] · X over rows and
// images of a block in registers (15 accumulators, lanes summed at the end).
constexpr int64_t kK5Row = 64;  // [even 16][zeros 16][odd 16][zeros 16]
constexpr int64_t kK5MaxO = 64;

template <class T> static bool k5_applies(const ConvShape&, int64_t) { return false; }

#if defined(__AVX512F__)
template <> bool k5_applies<float>(const ConvShape& s, int64_t P) {
  return P == 2 && s.KH == 5 && s.KW == 5 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0 && s.OH % 2 == 0 &&
         s.OW % 2 == 0 && s.W <= 32 && s.OW >= 8 && s.O <= kK5MaxO && !use_channel_vectors<float>(s.O, s.OW);
}

// buf[c][h][64]: even columns at [0, 16), odd at [32, 48), zeros elsewhere.
// Returns whether every value is finite.
static bool k5_split(const float* x, int64_t C, int64_t H, int64_t W, float* buf) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __mmask16 mlo = static_cast<__mmask16>(W >= 16 ? 0xFFFFu : (1u << W) - 1u);
  const __mmask16 mhi = static_cast<__mmask16>(W <= 16 ? 0u : (1u << (W - 16)) - 1u);
  const __m512 zero = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int64_t r = 0; r < C * H; ++r) {
    const float* src = x + r * W;
    float* dst = buf + r * kK5Row;
    const __m512 lo = _mm512_maskz_loadu_ps(mlo, src), hi = _mm512_maskz_loadu_ps(mhi, src + 16);
    bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(lo, lo), zero, _CMP_NEQ_UQ) |
           _mm512_cmp_ps_mask(_mm512_sub_ps(hi, hi), zero, _CMP_NEQ_UQ);
    _mm512_storeu_ps(dst, _mm512_permutex2var_ps(lo, even, hi));
    _mm512_storeu_ps(dst + 16, zero);
    _mm512_storeu_ps(dst + 32, _mm512_permutex2var_ps(lo, odd, hi));
    _mm512_storeu_ps(dst + 48, zero);
  }
  return bad == 0;
}

// Pools the tile acc[o][row][parity] (3 channels, window q in lane q) with
// pool2_row's rule and stores pooled row p of the first nout channels.
static void k5_pool(const __m512 (&acc)[3][2][2], int64_t p, int64_t PW, int nout, float* out, uint8_t* idx,
                    int64_t plane) {
  const __m512 zero = _mm512_setzero_ps();
  auto max16 = [](__m512 x, __m512 y) { return _mm512_maskz_max_ps(0xFFFF, x, y); };
  const __mmask16 m = static_cast<__mmask16>((1u << PW) - 1u);
  for (int o = 0; o < nout; ++o) {
    const __m512 va = acc[o][0][0], vb = acc[o][0][1], vc = acc[o][1][0], vd = acc[o][1][1];
    float* dst = out + o * plane + p * PW;
    uint8_t* di = idx + o * plane + p * PW;
    const __mmask16 nan = m & (_mm512_cmp_ps_mask(va, va, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(vb, vb, _CMP_UNORD_Q) |
                               _mm512_cmp_ps_mask(vc, vc, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(vd, vd, _CMP_UNORD_Q));
    const __m512 za = max16(va, zero), zb = max16(vb, zero), zc = max16(vc, zero), zd = max16(vd, zero);
    const __m512 mx = max16(max16(za, zb), max16(zc, zd));
    __m512i k = _mm512_set1_epi32(3);
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(zc, mx, _CMP_EQ_OQ), _mm512_set1_epi32(2));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(zb, mx, _CMP_EQ_OQ), _mm512_set1_epi32(1));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(za, mx, _CMP_EQ_OQ), _mm512_set1_epi32(0));
    k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(mx, zero, _CMP_LE_OQ), _mm512_set1_epi32(kPoolNoGrad));
    _mm512_mask_storeu_ps(dst, m, mx);
    _mm512_mask_cvtepi32_storeu_epi8(di, m, k);
    if (nan) {  // rare: the scalar rule (pool2_row) for the windows with a NaN
      alignas(64) float ra[16], rb[16], rc[16], rd[16];
      _mm512_store_ps(ra, va);
      _mm512_store_ps(rb, vb);
      _mm512_store_ps(rc, vc);
      _mm512_store_ps(rd, vd);
      for (int q = 0; q < 16; ++q) {
        if (!((nan >> q) & 1)) continue;
        const float r0[2] = {ra[q], rb[q]}, r1[2] = {rc[q], rd[q]};
        pool2_row<float, 0>(r0, r1, 1, dst + q, di + q);
      }
    }
  }
}

// Pooled row p of channels o0 … o0 + 2 (wp: [C][5][5][3] of this channel triple, bias3: 3).
static void k5_fwd_tile(const float* xb, int64_t C, int64_t H, const float* wp, const float* bias3, int64_t p,
                        int64_t PW, int nout, float* out, uint8_t* idx, int64_t plane) {
  __m512 acc[3][2][2];
#pragma GCC unroll 3
  for (int o = 0; o < 3; ++o) {
    const __m512 bv = _mm512_set1_ps(bias3[o]);
    acc[o][0][0] = acc[o][0][1] = acc[o][1][0] = acc[o][1][1] = bv;
  }
  for (int64_t c = 0; c < C; ++c) {
    const float* rows = xb + (c * H + 2 * p) * kK5Row;
    const float* wc = wp + c * 75;
#pragma GCC unroll 5
    for (int kh = 0; kh < 5; ++kh) {
      __m512 X0[6], X1[6];
#pragma GCC unroll 6
      for (int t = 0; t < 6; ++t) {
        X0[t] = _mm512_loadu_ps(rows + kh * kK5Row + (t & 1) * 32 + (t >> 1));
        X1[t] = _mm512_loadu_ps(rows + (kh + 1) * kK5Row + (t & 1) * 32 + (t >> 1));
      }
#pragma GCC unroll 5
      for (int kw = 0; kw < 5; ++kw)
#pragma GCC unroll 3
        for (int o = 0; o < 3; ++o) {
          const __m512 wv = _mm512_set1_ps(wc[(kh * 5 + kw) * 3 + o]);
          acc[o][0][0] = _mm512_fmadd_ps(wv, X0[kw], acc[o][0][0]);
          acc[o][0][1] = _mm512_fmadd_ps(wv, X0[kw + 1], acc[o][0][1]);
          acc[o][1][0] = _mm512_fmadd_ps(wv, X1[kw], acc[o][1][0]);
          acc[o][1][1] = _mm512_fmadd_ps(wv, X1[kw + 1], acc[o][1][1]);
        }
    }
  }
  k5_pool(acc, p, PW, nout, out, idx, plane);
}


// Minimal filtering (Winograd F(2,3) + F(2,2)) along the row, for images and weights
// that are all finite (inf − inf in the transforms would give NaN where the direct
// sum gives ±inf; such images take k5_fwd_tile). With d_t = x[2q + t] (t = 0 … 5),
// the even and odd conv columns of window q are
//   y0 = A + C + D,  y1 = B + C − D,  where, summed over (c, kh),
//   A = (d0 − d2)·w0 + (d3 − d4)·w3          B = (d1 − d3)·(−w2) + (d5 − d4)·w4
//   C = (d1 + d2)·(w0 + w1 + w2)/2 + d4·(w3 + w4)   D = (d2 − d1)·(w0 − w1 + w2)/2
// 7 products per (channel, row, c, kh) instead of 10. k5_split_transform stores the
// seven input vectors T0 … T6 of every row (112 floats); the weights are packed as
// [ot][c][kh][j][3] (K5Packed::wt).
constexpr int kK5T = 7;
constexpr int kK5Acc[kK5T] = {0, 2, 3, 1, 0, 2, 1};  // T_j feeds A, B, C or D (0 … 3)

// The transformed rows straight from the image (no split buffer): d_t = x[2q + t] is one
// two-source permute of the row's two vectors (lanes past the row: ignored, never
// pooled). Returns whether every value is finite (else nothing useful is written).
static bool k5_split_transform(const float* x, int64_t rows, int64_t W, float* tb) {
  const __mmask16 mlo = static_cast<__mmask16>(W >= 16 ? 0xFFFFu : (1u << W) - 1u);
  const __mmask16 mhi = static_cast<__mmask16>(W <= 16 ? 0u : (1u << (W - 16)) - 1u);
  const __m512i i0 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  __m512i it[6];
  for (int t = 0; t < 6; ++t) it[t] = _mm512_and_si512(_mm512_add_epi32(i0, _mm512_set1_epi32(t)), _mm512_set1_epi32(31));
  const __m512 zero = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + r * W;
    const __m512 lo = _mm512_maskz_loadu_ps(mlo, src), hi = _mm512_maskz_loadu_ps(mhi, src + 16);
    bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(lo, lo), zero, _CMP_NEQ_UQ) |
           _mm512_cmp_ps_mask(_mm512_sub_ps(hi, hi), zero, _CMP_NEQ_UQ);
    __m512 d[6];
#pragma GCC unroll 6
    for (int t = 0; t < 6; ++t) d[t] = _mm512_permutex2var_ps(lo, it[t], hi);
    float* dst = tb + r * kK5T * 16;
    _mm512_storeu_ps(dst + 0, _mm512_sub_ps(d[0], d[2]));
    _mm512_storeu_ps(dst + 16, _mm512_add_ps(d[1], d[2]));
    _mm512_storeu_ps(dst + 32, _mm512_sub_ps(d[2], d[1]));
    _mm512_storeu_ps(dst + 48, _mm512_sub_ps(d[1], d[3]));
    _mm512_storeu_ps(dst + 64, _mm512_sub_ps(d[3], d[4]));
    _mm512_storeu_ps(dst + 80, d[4]);
    _mm512_storeu_ps(dst + 96, _mm512_sub_ps(d[5], d[4]));
  }
  return bad == 0;
}

static void k5_fwd_tile_mf(const float* tb, int64_t C, int64_t H, const float* wt, const float* bias3, int64_t p,
                           int64_t PW, int nout, float* out, uint8_t* idx, int64_t plane) {
  __m512 a[3][2][4];  // [o][row][A, B, C, D]
#pragma GCC unroll 3
  for (int o = 0; o < 3; ++o)
#pragma GCC unroll 2
    for (int r = 0; r < 2; ++r) {
      a[o][r][0] = a[o][r][1] = a[o][r][3] = _mm512_setzero_ps();
      a[o][r][2] = _mm512_set1_ps(bias3[o]);
    }
  for (int64_t c = 0; c < C; ++c) {
    const float* rows = tb + (c * H + 2 * p) * kK5T * 16;
    const float* wc = wt + c * 5 * kK5T * 3;
#pragma GCC unroll 5
    for (int kh = 0; kh < 5; ++kh)
#pragma GCC unroll 7
      for (int j = 0; j < kK5T; ++j) {
        const __m512 t0 = _mm512_loadu_ps(rows + (kh * kK5T + j) * 16);
        const __m512 t1 = _mm512_loadu_ps(rows + ((kh + 1) * kK5T + j) * 16);
#pragma GCC unroll 3
        for (int o = 0; o < 3; ++o) {
          const __m512 wv = _mm512_set1_ps(wc[(kh * kK5T + j) * 3 + o]);
          a[o][0][kK5Acc[j]] = _mm512_fmadd_ps(wv, t0, a[o][0][kK5Acc[j]]);
          a[o][1][kK5Acc[j]] = _mm512_fmadd_ps(wv, t1, a[o][1][kK5Acc[j]]);
        }
      }
  }
  __m512 acc[3][2][2];
#pragma GCC unroll 3
  for (int o = 0; o < 3; ++o)
#pragma GCC unroll 2
    for (int r = 0; r < 2; ++r) {
      const __m512 cd = _mm512_add_ps(a[o][r][2], a[o][r][3]), cmd = _mm512_sub_ps(a[o][r][2], a[o][r][3]);
      acc[o][r][0] = _mm512_add_ps(a[o][r][0], cd);
      acc[o][r][1] = _mm512_add_ps(a[o][r][1], cmd);
    }
  k5_pool(acc, p, PW, nout, out, idx, plane);
}

// Weights [ot][c][kh][kw][3] and bias [ot][3], channels zero-padded to a multiple of 3.
struct K5Packed {
  int64_t not_ = 0;
  float* wp = nullptr;
  float* wt = nullptr;  // minimal-filtering weights [ot][c][kh][j][3]
  float* bp = nullptr;
  bool finite = true;   // every weight finite (else no minimal filtering)
  K5Packed(const float* w, const float* b, int64_t O, int64_t C) {
    not_ = (O + 2) / 3;
    wp = new float[not_ * C * 75]();
    wt = new float[not_ * C * 5 * kK5T * 3]();
    bp = new float[not_ * 3]();
    for (int64_t o = 0; o < O; ++o) {
      if (b) bp[o] = b[o];
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t e = 0; e < 25; ++e) {
          const float v = w[(o * C + c) * 25 + e];
          finite &= std::isfinite(v);
          wp[(((o / 3) * C + c) * 25 + e) * 3 + o % 3] = v;
        }
        for (int64_t kh = 0; kh < 5; ++kh) {
          const float* g = w + ((o * C + c) * 5 + kh) * 5;
          const double t[kK5T] = {g[0], (double(g[0]) + g[1] + g[2]) / 2, (double(g[0]) - g[1] + g[2]) / 2,
                                  -double(g[2]), g[3], double(g[3]) + g[4], g[4]};
          for (int j = 0; j < kK5T; ++j)
            wt[((((o / 3) * C + c) * 5 + kh) * kK5T + j) * 3 + o % 3] = static_cast<float>(t[j]);
        }
      }
    }
  }
  ~K5Packed() {
    delete[] wp;
    delete[] wt;
    delete[] bp;
  }
  K5Packed(const K5Packed&) = delete;
  K5Packed& operator=(const K5Packed&) = delete;
};

static void k5_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* out,
                       uint8_t* idx) {
  const int64_t PH = s.OH / 2, PW = s.OW / 2, plane = PH * PW, C = s.C, O = s.O;
  K5Packed pk(w, b, O, C);
  parallel_for(s.N, 1, [&](int64_t n0, int64_t n1) {
    float* buf = static_cast<float*>(
        ::operator new(sizeof(float) * C * s.H * (kK5Row + kK5T * 16), std::align_val_t(64)));
    float* tb = buf + C * s.H * kK5Row;
    for (int64_t n = n0; n < n1; ++n) {
      const float* xn = x + n * C * s.H * s.W;
      const bool mf = pk.finite && k5_split_transform(xn, C * s.H, s.W, tb);
      if (!mf) k5_split(xn, C, s.H, s.W, buf);
      for (int64_t p = 0; p < PH; ++p)
        for (int64_t ot = 0; ot < pk.not_; ++ot) {
          const int nout = static_cast<int>(O - ot * 3 < 3 ? O - ot * 3 : 3);
          const int64_t e = (n * O + ot * 3) * plane;
          if (mf)
            k5_fwd_tile_mf(tb, C, s.H, pk.wt + ot * C * 5 * kK5T * 3, pk.bp + ot * 3, p, PW, nout, out + e, idx + e,
                           plane);
          else
            k5_fwd_tile(buf, C, s.H, pk.wp + ot * C * 75, pk.bp + ot * 3, p, PW, nout, out + e, idx + e, plane);
        }
    }
    ::operator delete(buf, std::align_val_t(64));
  });
}

// Finite images (the usual case): the products with the three zero positions of a
// window are exact zeros, so a window needs one product, not four: the input vector
// of its chosen position is selected per lane (row bit, column bit of the index:
// three blends) and multiplied by the gradient (zero where the ReLU blocked it).
// A block with an inf or NaN in x takes the four-product form (0·inf = NaN, as torch).
static void k5_gw_tile_sel(const float* xb, int64_t xsz, const float* gbuf, int64_t gsz, int64_t nimg, int64_t H,
                           int64_t PH, int64_t Op, int64_t o0, int64_t c, int kh, __m512 (&acc)[3][5]) {  // acc[0, 2) used
  for (int64_t i = 0; i < nimg; ++i) {
    const float* rows = xb + i * xsz + (c * H + kh) * kK5Row;
    const float* G = gbuf + i * gsz + o0 * 64;
    for (int64_t p = 0; p < PH; ++p) {
      const float* gp = G + p * Op * 64;
      const float* r0 = rows + 2 * p * kK5Row;
      const float* r1 = r0 + kK5Row;
      __m512 X0[6], X1[6];
#pragma GCC unroll 6
      for (int t = 0; t < 6; ++t) {
        X0[t] = _mm512_loadu_ps(r0 + (t & 1) * 32 + (t >> 1));
        X1[t] = _mm512_loadu_ps(r1 + (t & 1) * 32 + (t >> 1));
      }
#pragma GCC unroll 2
      for (int o = 0; o < 2; ++o) {
        const float* go = gp + o * 64;
        const __m512 gv = _mm512_loadu_ps(go);
        uint32_t bits[2];
        std::memcpy(bits, go + 16, sizeof bits);
        const __mmask16 ms = static_cast<__mmask16>(bits[0]), mr = static_cast<__mmask16>(bits[1]);
#pragma GCC unroll 5
        for (int kw = 0; kw < 5; ++kw) {
          const __m512 y0 = _mm512_mask_mov_ps(X0[kw], ms, X0[kw + 1]);
          const __m512 y1 = _mm512_mask_mov_ps(X1[kw], ms, X1[kw + 1]);
          acc[o][kw] = _mm512_fmadd_ps(gv, _mm512_mask_mov_ps(y0, mr, y1), acc[o][kw]);
        }
      }
    }
  }
}

static void k5_gw_tile_dense(const float* xb, int64_t xsz, const float* gbuf, int64_t gsz, int64_t nimg, int64_t H,
                             int64_t PH, int64_t Op, int64_t o0, int64_t c, int kh, __m512 (&acc)[3][5]) {
  for (int64_t i = 0; i < nimg; ++i) {
    const float* rows = xb + i * xsz + (c * H + kh) * kK5Row;
    const float* G = gbuf + i * gsz + o0 * 64;
    for (int64_t p = 0; p < PH; ++p) {
      const float* gp = G + p * Op * 64;
#pragma GCC unroll 2
      for (int r = 0; r < 2; ++r) {
        const float* row = rows + (2 * p + r) * kK5Row;
        __m512 X[6];
#pragma GCC unroll 6
        for (int t = 0; t < 6; ++t) X[t] = _mm512_loadu_ps(row + (t & 1) * 32 + (t >> 1));
#pragma GCC unroll 2
        for (int sft = 0; sft < 2; ++sft)
#pragma GCC unroll 3
          for (int o = 0; o < 3; ++o) {
            const __m512 gv = _mm512_loadu_ps(gp + o * 64 + (2 * r + sft) * 16);
#pragma GCC unroll 5
            for (int kw = 0; kw < 5; ++kw) acc[o][kw] = _mm512_fmadd_ps(gv, X[sft + kw], acc[o][kw]);
          }
      }
    }
  }
}

// ∂L/∂w, ∂L/∂b of a block of images into part ([O][C][5][5] then [O]), fixed order.
// xb: room for the block's split images (C·H·64 floats each); gbuf: for each image,
// G[p][Op][64]: the window gradients, either at their four positions (G[..][2r + s]
// = g where the index is 2r + s, else 0) or, when x is finite, once (zeros where the
// index is 255) followed by the column-bit and row-bit masks.
static void k5_gw_block(const ConvShape& s, const float* x, const float* gout, const uint8_t* idx, int64_t n0,
                        int64_t n1, float* xb, float* gbuf, float* part) {
  const int64_t C = s.C, O = s.O, H = s.H, PH = s.OH / 2, PW = s.OW / 2, plane = PH * PW;
  const int64_t Op = (O + 5) / 6 * 6, xsz = C * H * kK5Row, gsz = PH * Op * 64, nw = O * C * 25;
  const __mmask16 m = static_cast<__mmask16>((1u << PW) - 1u);
  const int64_t nimg = n1 - n0;
  bool finite = true;
  for (int64_t i = 0; i < nimg; ++i) finite &= k5_split(x + (n0 + i) * C * H * s.W, C, H, s.W, xb + i * xsz);
  __m512 bacc[kK5MaxO];
  for (int64_t o = 0; o < O; ++o) bacc[o] = _mm512_setzero_ps();
  const __m512i none = _mm512_set1_epi32(kPoolNoGrad);
  for (int64_t i = 0; i < nimg; ++i) {
    const int64_t n = n0 + i;
    float* G = gbuf + i * gsz;
    for (int64_t p = 0; p < PH; ++p)
      for (int64_t o = 0; o < Op; ++o) {
        float* gp = G + (p * Op + o) * 64;
        if (o >= O) {
          for (int k = 0; k < 4; ++k) _mm512_storeu_ps(gp + 16 * k, _mm512_setzero_ps());
          continue;
        }
        const int64_t e = (n * O + o) * plane + p * PW;
        const __m512 g = _mm512_maskz_loadu_ps(m, gout + e);
        const __m512i k = _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_maskz_loadu_epi8(m, idx + e));
        const __m512 gpass = _mm512_maskz_mov_ps(_mm512_cmpneq_epi32_mask(k, none), g);
        bacc[o] = _mm512_add_ps(bacc[o], gpass);
        if (finite) {
          _mm512_storeu_ps(gp, gpass);
          const uint32_t bits[2] = {_mm512_test_epi32_mask(k, _mm512_set1_epi32(1)),
                                    _mm512_test_epi32_mask(k, _mm512_set1_epi32(2))};
          std::memcpy(gp + 16, bits, sizeof bits);
        } else {
          for (int kk = 0; kk < 4; ++kk)
            _mm512_storeu_ps(gp + 16 * kk,
                             _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(k, _mm512_set1_epi32(kk)), g));
        }
      }
  }
  for (int64_t o = 0; o < O; ++o) part[nw + o] += Vec<float>::sum(bacc[o]);
  const int OT = finite ? 2 : 3;
  for (int64_t o0 = 0; o0 < O; o0 += OT)
    for (int64_t c = 0; c < C; ++c)
      for (int kh = 0; kh < 5; ++kh) {
        __m512 acc[3][5];
#pragma GCC unroll 3
        for (int o = 0; o < 3; ++o)
#pragma GCC unroll 5
          for (int kw = 0; kw < 5; ++kw) acc[o][kw] = _mm512_setzero_ps();
        if (finite)
          k5_gw_tile_sel(xb, xsz, gbuf, gsz, nimg, H, PH, Op, o0, c, kh, acc);
        else
          k5_gw_tile_dense(xb, xsz, gbuf, gsz, nimg, H, PH, Op, o0, c, kh, acc);
        for (int o = 0; o < OT && o0 + o < O; ++o)
          for (int kw = 0; kw < 5; ++kw) part[((o0 + o) * C + c) * 25 + kh * 5 + kw] += Vec<float>::sum(acc[o][kw]);
      }
}
#endif

template <class T>
static bool k5_fused_forward(const ConvShape&, int64_t, const T*, const T*, const T*, T*, uint8_t*) {
  return false;
}
template <class T>
static void k5_gw(const ConvShape&, const T*, const T*, const uint8_t*, int64_t, int64_t, T*, T*, T*) {}
#if defined(__AVX512F__)
template <>
void k5_gw<float>(const ConvShape& s, const float* x, const float* gout, const uint8_t* idx, int64_t n0, int64_t n1,
                  float* xb, float* gbuf, float* part) {
  k5_gw_block(s, x, gout, idx, n0, n1, xb, gbuf, part);
}
template <>
bool k5_fused_forward<float>(const ConvShape& s, int64_t P, const float* x, const float* w, const float* b,
                             float* out, uint8_t* idx) {
  if (!k5_applies<float>(s, P)) return false;
  k5_forward(s, x, w, b, out, idx);
  return true;
}
#endif

template <class T>
static void fused_forward(const ConvShape& s, int64_t P, const T* x, const T* w, const T* b, T* out,
                          uint8_t* idx) {
  const int64_t PH = s.OH / P, PW = s.OW / P;
  if (s.N == 0 || s.O == 0 || PH == 0 || PW == 0) return;
  if (k5_fused_forward<T>(s, P, x, w, b, out, idx)) return;
  Packed<T> pk(w, b, s.O, s.C, s.KH, s.KW, false, s.OW);
  const BufGeom g = input_geom(s, Vec<T>::L);
  const RowsFn<T> rows = pick_rows<T>(pk, s.O, s.OW);
  parallel_for(s.N, 1, [&](int64_t n0, int64_t n1) {
    T* buf = new T[g.size()];
    T* band = new T[pk.nob * pk.ob * P * s.OW];  // conv rows [p·P, p·P + P) of all channels
    RowsArgs<T> a{buf, g, s.KH, s.KW, s.sh, pk.wp, pk.bp, s.O, pk.nob, s.OW, s.ph, s.ph + s.H};
    int64_t woff[15 * 15];  // window position e = r·P + c → offset r·OW + c in the band
    for (int64_t e = 0; e < P * P; ++e) woff[e] = (e / P) * s.OW + e % P;
    for (int64_t n = n0; n < n1; ++n) {
      fill_buffer(x + n * s.C * s.H * s.W, s.H, s.W, 1, 1, s.ph, s.pw, g, buf);
      if (fused_forward_cv<T>(s, P, a, pk.nob, out + n * s.O * PH * PW, idx + n * s.O * PH * PW)) continue;
      for (int64_t p = 0; p < PH; ++p) {
        rows(a, p * P, p * P + P, band, P * s.OW, s.OW);
        for (int64_t o = 0; o < s.O; ++o) {
          const T* bo = band + o * P * s.OW;
          const int64_t base = ((n * s.O + o) * PH + p) * PW;
          if (P == 2) {
            pool2_row(bo, bo + s.OW, PW, out + base, idx + base);
            continue;
          }
          for (int64_t q = 0; q < PW; ++q) {
            // torch's max_pool2d scan over relu(y): take v when v > max or v is NaN,
            // i.e. the first maximum, or the last NaN. Written branch-free (random
            // data defeats branch prediction): the max first, then its first position.
            const T* win = bo + q * P;
            T mx = T(0);  // relu output is ≥ 0, so the window max starts at 0
            bool nan = false;
            for (int64_t e = 0; e < P * P; ++e) {
              const T v = win[woff[e]];
              mx = v > mx ? v : mx;
              nan |= v != v;
            }
            int64_t k = 0;
            if (!nan) {
              for (int64_t e = P * P - 1; e >= 0; --e) {
                const T v = win[woff[e]];
                const T z = v > T(0) ? v : T(0);
                k = z == mx ? e : k;
              }
            } else {
              mx = NAN;
              for (int64_t e = 0; e < P * P; ++e) {
                const T v = win[woff[e]];
                k = v != v ? e : k;
              }
            }
            out[base + q] = mx;
            idx[base + q] = mx <= T(0) ? kPoolNoGrad : static_cast<uint8_t>(k);
          }
        }
      }
    }
    delete[] band;
    delete[] buf;
  });
}

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

// ---- per-ISA entry points (type dispatch) ------------------------------------
void conv_fwd(const ConvShape& s, const void* x, const void* w, const void* b, void* y, bool f64) {
  if (f64)
    forward(s, static_cast<const double*>(x), static_cast<const double*>(w), static_cast<const double*>(b),
            static_cast<double*>(y));
  else
    forward(s, static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(b),
            static_cast<float*>(y));
}

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

void conv_pool_fwd(const ConvShape& s, int64_t P, const void* x, const void* w, const void* b, void* out,
                   uint8_t* idx, bool f64) {
  if (f64)
    fused_forward(s, P, static_cast<const double*>(x), static_cast<const double*>(w),
                  static_cast<const double*>(b), static_cast<double*>(out), idx);
  else
    fused_forward(s, P, static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(b),
                  static_cast<float*>(out), idx);
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include "core/checks.h"

OX_ISA_DECLARE(void, conv_fwd, (const ConvShape&, const void*, const void*, const void*, void*, bool))
OX_ISA_DECLARE(void, conv_bwd,
               (const ConvShape&, const void*, const uint8_t*, int64_t, const void*, const void*, void*, void*,
                void*, bool))
OX_ISA_DECLARE(void, conv_pool_fwd,
               (const ConvShape&, int64_t, const void*, const void*, const void*, void*, uint8_t*, bool))

namespace ox {

ConvShape conv2d_check(const char* op, const View& x, const View& w, const View* b, int64_t sh, int64_t sw,
                       int64_t ph, int64_t pw) {
  check_dtype(op, "x", x, {DType::f32, DType::f64});
  check_rank(op, "x", x, 4);
  check_contiguous(op, "x", x);
  check_numel_fits(op, "x", x);
  check_like(op, "weight", w, "x", x);
  check_rank(op, "weight", w, 4);
  if (b) {
    check_like(op, "bias", *b, "x", x);
    check_shape(op, "bias", *b, {w.shape[0]});
  }
  if (w.shape[1] != x.shape[1])
    value_error(op, ": argument 'weight' has ", w.shape[1], " input channels (shape ", shape_str(w),
                ") but 'x' has ", x.shape[1], " channels (shape ", shape_str(x), ")");
  if (sh < 1 || sw < 1) value_error(op, ": argument 'stride' must be >= 1, got (", sh, ", ", sw, ")");
  if (ph < 0 || pw < 0) value_error(op, ": argument 'padding' must be >= 0, got (", ph, ", ", pw, ")");
  if (w.shape[2] < 1 || w.shape[3] < 1)
    value_error(op, ": argument 'weight' must have a kernel of at least 1x1, got shape ", shape_str(w));
  const int64_t Hp = x.shape[2] + 2 * ph, Wp = x.shape[3] + 2 * pw;
  if (w.shape[2] > Hp || w.shape[3] > Wp)
    value_error(op, ": kernel size (", w.shape[2], ", ", w.shape[3], ") of argument 'weight' is larger than the "
                "padded input (", Hp, ", ", Wp, ") of argument 'x'");
  ConvShape s{x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0], w.shape[2], w.shape[3], sh, sw, ph, pw,
              0, 0};
  s.OH = (Hp - s.KH) / sh + 1;
  s.OW = (Wp - s.KW) / sw + 1;
  return s;
}

void conv2d_forward_cpu(const ConvShape& s, const View& x, const View& w, const View* b, const View& y) {
  OX_ISA_DISPATCH(conv_fwd, s, x.data, w.data, b ? b->data : nullptr, y.data, x.dtype == DType::f64);
}

void conv2d_backward_cpu(const ConvShape& s, const View& gy, const View& x, const View& w, const View* gx,
                         const View* gw, const View* gb) {
  OX_ISA_DISPATCH(conv_bwd, s, gy.data, nullptr, 1, x.data, w.data, gx ? gx->data : nullptr,
                  gw ? gw->data : nullptr, gb ? gb->data : nullptr, x.dtype == DType::f64);
}

void conv2d_relu_maxpool2d_forward_cpu(const ConvShape& s, int64_t pool, const View& x, const View& w,
                                       const View* b, const View& out, const View& idx) {
  OX_ISA_DISPATCH(conv_pool_fwd, s, pool, x.data, w.data, b ? b->data : nullptr, out.data, idx.ptr<uint8_t>(),
                  x.dtype == DType::f64);
}

void conv2d_relu_maxpool2d_backward_cpu(const ConvShape& s, int64_t pool, const View& gout, const View& idx,
                                        const View& x, const View& w, const View* gx, const View* gw,
                                        const View* gb) {
  OX_ISA_DISPATCH(conv_bwd, s, gout.data, idx.ptr<uint8_t>(), pool, x.data, w.data, gx ? gx->data : nullptr,
                  gw ? gw->data : nullptr, gb ? gb->data : nullptr, x.dtype == DType::f64);
}

}  // namespace ox
#endif
