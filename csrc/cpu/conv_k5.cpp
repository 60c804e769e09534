// conv1-like layers on the CPU, float AVX-512: 5×5 kernel, stride 1, no padding,
// pool 2, narrow rows (the course's conv1: 3→6 channels, 32×32 images).
//
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
#include "cpu/conv_k5.h"
#include "cpu/conv_tiles.h"

namespace ox {
namespace OX_ISA {

#if defined(__AVX512F__)
bool k5_layer(const ConvShape& s, int64_t P) {
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
  const __mmask16 m = static_cast<__mmask16>((1u << PW) - 1u);
  for (int o = 0; o < nout; ++o) {
    const __m512 va = acc[o][0][0], vb = acc[o][0][1], vc = acc[o][1][0], vd = acc[o][1][1];
    float* dst = out + o * plane + p * PW;
    uint8_t* di = idx + o * plane + p * PW;
    const __mmask16 nan = m & pool2_nan(va, vb, vc, vd);
    __m512 mx;
    __m512i k;
    pool2_vec(va, vb, vc, vd, mx, k);
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

void k5_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* out, uint8_t* idx) {
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
void k5_gw_block(const ConvShape& s, const float* x, const float* gout, const uint8_t* idx, int64_t n0, int64_t n1,
                 float* xb, float* gbuf, float* part) {
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

}  // namespace OX_ISA
}  // namespace ox
