// The forward tile kernels of the CPU convolution (conv*.cpp), shared by the plain and
// fused forward, the conv1 kernels (conv_k5.cpp) and the ∂L/∂x of the backward, which is
// a convolution too; and the 2×2 pooling rule (pool2_row, pool2_vec).
#pragma once
#include "cpu/conv_simd.h"

namespace ox {
namespace OX_ISA {

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
            if (left >= L) V::storeu(dst + o * ostride + v * L, acc[o][v]);  // masked: ~18 cycles on AMD AVX2
            else if (left > 0) V::store(dst + o * ostride + v * L, V::mask(left), acc[o][v]);
          }
      }
    }
  }
}

// Where tap kw of a row starts in a buffer row split into sw column phases of Wj: phase kw % sw,
// column kw / sw (stride 1, the usual case, skips the division).
static inline int64_t tap_offset(int64_t kw, int64_t sw, int64_t Wj) {
  return sw == 1 ? kw : (kw % sw) * Wj + kw / sw;
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
      for (int64_t kw = 0; kw < KW; ++kw, wk += L) {
        const T* xp = row + tap_offset(kw, sw, Wj);
        const typename V::R wv = V::loadu(wk);
#pragma GCC unroll 32
        for (int p = 0; p < PB; ++p) acc[p] = V::fma(V::set1(xp[p]), wv, acc[p]);
      }
    }
  alignas(64) T tile[PB][L];
#pragma GCC unroll 32
  for (int p = 0; p < PB; ++p) V::storeu(tile[p], acc[p]);
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

// The image itself as a buffer: possible without padding and with column stride 1, for tiles
// that read only the pixels of their windows (the channel-vector ones).
inline bool unpadded_unit_stride(const ConvShape& s) { return s.ph == 0 && s.pw == 0 && s.sw == 1; }
inline BufGeom image_geom(const ConvShape& s) { return BufGeom{s.C, s.H, 1, s.W}; }

// Geometry of the forward input buffer of one image.
inline BufGeom input_geom(const ConvShape& s, int lanes) {
  return BufGeom{s.C, (s.OH - 1) * s.sh + s.KH, s.sw, s.OW + (s.KW - 1) / s.sw + 2 * lanes};
}

// 2×2 windows of two conv rows r0, r1 → PW pooled outputs, the same rule as
// the general loop in fused_forward (first maximum of relu(y), last NaN), straight-line.
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
// pool2_row's rule on 16 windows at once: lanes of a, b, c, d hold each window's conv
// outputs at positions 0, 1, 2, 3; mx = the max of relu over the window, k = the first
// position holding it (kPoolNoGrad where mx ≤ 0). For windows without NaN (pool2_nan):
// those take the scalar rule.
inline void pool2_vec(__m512 a, __m512 b, __m512 c, __m512 d, __m512& mx, __m512i& k) {
  const __m512 zero = _mm512_setzero_ps();
  // maskz form: GCC 12's plain _mm512_max_ps trips -Wmaybe-uninitialized
  auto max16 = [](__m512 x, __m512 y) { return _mm512_maskz_max_ps(0xFFFF, x, y); };
  const __m512 za = max16(a, zero), zb = max16(b, zero), zc = max16(c, zero), zd = max16(d, zero);
  mx = max16(max16(za, zb), max16(zc, zd));
  k = _mm512_set1_epi32(3);
  k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(zc, mx, _CMP_EQ_OQ), _mm512_set1_epi32(2));
  k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(zb, mx, _CMP_EQ_OQ), _mm512_set1_epi32(1));
  k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(za, mx, _CMP_EQ_OQ), _mm512_set1_epi32(0));
  k = _mm512_mask_mov_epi32(k, _mm512_cmp_ps_mask(mx, zero, _CMP_LE_OQ), _mm512_set1_epi32(kPoolNoGrad));
}

inline __mmask16 pool2_nan(__m512 a, __m512 b, __m512 c, __m512 d) {
  return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q) |
         _mm512_cmp_ps_mask(c, c, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q);
}
#endif

#if defined(__AVX512F__)
// float, AVX-512: 16 windows at a time. Even/odd columns are split with a
// two-source permute; max with 0 is relu (NaN windows are redone by the scalar
// rule above); the first position holding the max wins, as in torch.
template <>
inline void pool2_row<float>(const float* r0, const float* r1, int64_t PW, float* out, uint8_t* idx) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t q0 = 0; q0 < PW; q0 += 16) {
    const int64_t n = PW - q0 < 16 ? PW - q0 : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    const __mmask16 mlo = static_cast<__mmask16>(n >= 8 ? 0xFFFFu : (1u << (2 * n)) - 1u);
    const __mmask16 mhi = static_cast<__mmask16>(n <= 8 ? 0u : (1u << (2 * n - 16)) - 1u);
    const __m512 lo0 = _mm512_maskz_loadu_ps(mlo, r0 + 2 * q0), hi0 = _mm512_maskz_loadu_ps(mhi, r0 + 2 * q0 + 16);
    const __m512 lo1 = _mm512_maskz_loadu_ps(mlo, r1 + 2 * q0), hi1 = _mm512_maskz_loadu_ps(mhi, r1 + 2 * q0 + 16);
    const __m512 a = _mm512_permutex2var_ps(lo0, even, hi0), b = _mm512_permutex2var_ps(lo0, odd, hi0);
    const __m512 c = _mm512_permutex2var_ps(lo1, even, hi1), d = _mm512_permutex2var_ps(lo1, odd, hi1);
    if (pool2_nan(a, b, c, d) & m) {  // rare: the scalar rule handles NaN
      pool2_row<float, 0>(r0 + 2 * q0, r1 + 2 * q0, n, out + q0, idx + q0);
      continue;
    }
    __m512 mx;
    __m512i k;
    pool2_vec(a, b, c, d, mx, k);
    _mm512_mask_storeu_ps(out + q0, m, mx);
    _mm512_mask_cvtepi32_storeu_epi8(idx + q0, m, k);
  }
}
#elif defined(__AVX2__)
// float, AVX2: the same with 8 windows at a time. Even/odd columns are split by a shuffle within
// 128-bit halves and a permute of 64-bit pairs; blends pick the first position of the max.
template <>
inline void pool2_row<float>(const float* r0, const float* r1, int64_t PW, float* out, uint8_t* idx) {
  using V = Vec<float>;
  const __m256 zero = _mm256_setzero_ps();
  auto split = [](__m256 lo, __m256 hi, __m256& even, __m256& odd) {
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
  };
  auto pick = [](__m256i k, __m256 take, int v) {
    return _mm256_blendv_epi8(k, _mm256_set1_epi32(v), _mm256_castps_si256(take));
  };
  for (int64_t q0 = 0; q0 < PW; q0 += 8) {
    const int64_t n = PW - q0 < 8 ? PW - q0 : 8;
    const V::M mlo = V::mask(2 * n), mhi = V::mask(2 * n - 8);
    __m256 a, b, c, d;
    split(V::loadz(mlo, r0 + 2 * q0), V::loadz(mhi, r0 + 2 * q0 + 8), a, b);
    split(V::loadz(mlo, r1 + 2 * q0), V::loadz(mhi, r1 + 2 * q0 + 8), c, d);
    const __m256 nan = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q), _mm256_cmp_ps(b, b, _CMP_UNORD_Q)),
                                    _mm256_or_ps(_mm256_cmp_ps(c, c, _CMP_UNORD_Q), _mm256_cmp_ps(d, d, _CMP_UNORD_Q)));
    if (_mm256_movemask_ps(nan) & ((1 << n) - 1)) {  // rare: the scalar rule handles NaN
      pool2_row<float, 0>(r0 + 2 * q0, r1 + 2 * q0, n, out + q0, idx + q0);
      continue;
    }
    const __m256 za = _mm256_max_ps(a, zero), zb = _mm256_max_ps(b, zero);
    const __m256 zc = _mm256_max_ps(c, zero), zd = _mm256_max_ps(d, zero);
    const __m256 mx = _mm256_max_ps(_mm256_max_ps(za, zb), _mm256_max_ps(zc, zd));
    __m256i k = _mm256_set1_epi32(3);
    k = pick(k, _mm256_cmp_ps(zc, mx, _CMP_EQ_OQ), 2);
    k = pick(k, _mm256_cmp_ps(zb, mx, _CMP_EQ_OQ), 1);
    k = pick(k, _mm256_cmp_ps(za, mx, _CMP_EQ_OQ), 0);
    k = pick(k, _mm256_cmp_ps(mx, zero, _CMP_LE_OQ), kPoolNoGrad);
    if (n == 8) V::storeu(out + q0, mx);  // a masked store costs ~18 cycles on AMD cores
    else V::store(out + q0, V::mask(n), mx);
    alignas(32) int32_t ks[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(ks), k);
    for (int64_t q = 0; q < n; ++q) idx[q0 + q] = static_cast<uint8_t>(ks[q]);
  }
}
#endif

}  // namespace OX_ISA
}  // namespace ox
