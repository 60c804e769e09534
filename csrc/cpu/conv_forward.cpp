// conv2d and the fused conv → ReLU → max-pool forward on the CPU (formulas in conv.h;
// overview in conv.cpp).
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
// Layers whose channel count is a multiple of the lane count and whose output
// rows are narrow (conv2: 16 channels, 10-pixel rows) use channel-vectorised
// tiles instead (one vector = L output channels of one pixel), for forward and
// ∂L/∂w. Loops over tile dimensions carry `#pragma GCC unroll`: without full
// unrolling the accumulators live on the stack (∂L/∂w was 2.3× slower).
#include "cpu/conv_k5.h"
#include "cpu/conv_tiles.h"

namespace ox {
namespace OX_ISA {

// ---- forward ---------------------------------------------------------------
// Channel-vector tiles take the image itself as their buffer where they can (image_geom; the
// copy was ~10 % of conv2's forward).
template <class T> static bool image_is_buffer(const ConvShape& s) {
  return use_channel_vectors<T>(s.O, s.OW) && unpadded_unit_stride(s);
}
template <class T> static BufGeom forward_geom(const ConvShape& s) {
  return image_is_buffer<T>(s) ? image_geom(s) : input_geom(s, Vec<T>::L);
}

template <class T> static void forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y) {
  if (s.N == 0 || s.O == 0 || s.OH == 0 || s.OW == 0) return;
  Packed<T> pk(w, b, s.O, s.C, s.KH, s.KW, false, s.OW);
  const RowsFn<T> rows = pick_rows<T>(pk, s.O, s.OW);
  const bool in_place = image_is_buffer<T>(s);
  const BufGeom g = forward_geom<T>(s);
  parallel_for(s.N, 1, [&](int64_t n0, int64_t n1) {
    T* buf = in_place ? nullptr : new T[g.size()];
    RowsArgs<T> a{buf, g, s.KH, s.KW, s.sh, pk.wp, pk.bp, s.O, pk.nob, s.OW, s.ph, s.ph + s.H};
    for (int64_t n = n0; n < n1; ++n) {
      const T* image = x + n * s.C * s.H * s.W;
      if (in_place) a.buf = image;
      else fill_buffer(image, s.H, s.W, 1, 1, s.ph, s.pw, g, buf);
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
      for (int64_t kw = 0; kw < KW; ++kw, wk += L) {
        const int64_t off = tap_offset(kw, sw, Wj);
        const __m512 wv = _mm512_loadu_ps(wk);
#pragma GCC unroll 32
        for (int t = 0; t < PB; ++t) {
          acc0[t] = _mm512_fmadd_ps(_mm512_set1_ps(row0[off + t]), wv, acc0[t]);
          acc1[t] = _mm512_fmadd_ps(_mm512_set1_ps(row1[off + t]), wv, acc1[t]);
        }
      }
    }
  const int64_t nout = a.O - ob * L < L ? a.O - ob * L : L;
  const int64_t plane = PH * PW;
#pragma GCC unroll 16
  for (int t = 0; t < PB / 2; ++t) {
    const __m512 va = acc0[2 * t], vb = acc0[2 * t + 1], vc = acc1[2 * t], vd = acc1[2 * t + 1];
    const int64_t qo = ow0 / 2 + t;
    alignas(64) float mo[L];
    alignas(64) int32_t ko[L];
    const __mmask16 nan = pool2_nan(va, vb, vc, vd);
    __m512 mx;
    __m512i k;
    pool2_vec(va, vb, vc, vd, mx, k);
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

template <class T>
static void fused_forward(const ConvShape& s, int64_t P, const T* x, const T* w, const T* b, T* out,
                          uint8_t* idx) {
  const int64_t PH = s.OH / P, PW = s.OW / P;
  if (s.N == 0 || s.O == 0 || PH == 0 || PW == 0) return;
  if (k5_fused_forward<T>(s, P, x, w, b, out, idx)) return;
  Packed<T> pk(w, b, s.O, s.C, s.KH, s.KW, false, s.OW);
  const bool in_place = image_is_buffer<T>(s);
  const BufGeom g = forward_geom<T>(s);
  const RowsFn<T> rows = pick_rows<T>(pk, s.O, s.OW);
  parallel_for(s.N, 1, [&](int64_t n0, int64_t n1) {
    T* buf = in_place ? nullptr : new T[g.size()];
    T* band = new T[pk.nob * pk.ob * P * s.OW];  // conv rows [p·P, p·P + P) of all channels
    RowsArgs<T> a{buf, g, s.KH, s.KW, s.sh, pk.wp, pk.bp, s.O, pk.nob, s.OW, s.ph, s.ph + s.H};
    int64_t woff[15 * 15];  // window position e = r·P + c → offset r·OW + c in the band
    for (int64_t e = 0; e < P * P; ++e) woff[e] = (e / P) * s.OW + e % P;
    for (int64_t n = n0; n < n1; ++n) {
      const T* image = x + n * s.C * s.H * s.W;
      if (in_place) a.buf = image;
      else fill_buffer(image, s.H, s.W, 1, 1, s.ph, s.pw, g, buf);
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

// ---- per-ISA entry points (type dispatch) ------------------------------------
void conv_fwd(const ConvShape& s, const void* x, const void* w, const void* b, void* y, bool f64) {
  if (f64)
    forward(s, static_cast<const double*>(x), static_cast<const double*>(w), static_cast<const double*>(b),
            static_cast<double*>(y));
  else
    forward(s, static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(b),
            static_cast<float*>(y));
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
