#include "linreg.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "core/isa.h"
#include "core/threading.h"
#include "cpu/simd.h"
#include "linreg_quadratic.h"
#include "linreg_sample.h"

namespace ox {
namespace OX_ISA {

// Everything below accumulates, over the rows i of S, the sums
//   G_b = Σ r_ib x̃_i   and   L_b = Σ r_ib²,   r_ib = θ_bᵀx̃_i − y_i,
// and the callers scale them: ∇f = G/m, f = L/(2m).
//
// Determinism: the rows are split into blocks whose size depends only on
// (m, d), never on the thread count; each block writes its own partial sums,
// which are then added in block order. Inside a block every sum runs in a
// fixed order over kLanes independent lanes (so that the compiler can
// vectorise it), reduced by a fixed pairwise tree.

constexpr int kLanes = 16;
constexpr int64_t kMaxBlocks = 64;
constexpr int64_t kMinBlockElems = 16384;  // a block's share of X, so tiny problems run in one block

// p[0] + … + p[W−1] by a fixed pairwise tree (W a power of 2); overwrites p.
template <int W = kLanes, class T> static inline T sum_lanes(T* p) {
  for (int w = W / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) p[k] += p[k + w];
  return p[0];
}

// d = 1, B = 1 (the course's line y = kx + b): vectorised over rows instead of columns.
template <class T, bool kIndexed>
static void rows_line(const T* X, const T* y, const T* theta, const int64_t* rows, int64_t begin, int64_t end,
                      T* G, T* L) {
  const T w = theta[0], b0 = theta[1];
  T gw[kLanes] = {}, gb[kLanes] = {}, ll[kLanes] = {};
  int64_t j = begin;
  for (; j + kLanes <= end; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const int64_t i = kIndexed ? rows[j + k] : j + k;
      const T x = X[i], r = w * x + b0 - y[i];
      gw[k] += r * x;
      gb[k] += r;
      ll[k] += r * r;
    }
  for (int k = 0; j < end; ++j, ++k) {
    const int64_t i = kIndexed ? rows[j] : j;
    const T x = X[i], r = w * x + b0 - y[i];
    gw[k] += r * x;
    gb[k] += r;
    ll[k] += r * r;
  }
  G[0] += sum_lanes(gw);
  G[1] += sum_lanes(gb);
  L[0] += sum_lanes(ll);
}

// ---- batches (B >= kTileMinB): a blocked GEMM pair per tile of kTileRows rows --------------------
//   R_tile = X̃_tile Θᵀ − y_tile   (kTileRows × B)
//   G     += R_tileᵀ X̃_tile        (B × (d+1))
// The tile is copied into a small buffer padded to dp = roundup(d+1, kVec) columns, with the
// bias column set to 1 (so x̃ exists only per tile, in L1), and Θ is transposed and padded to
// Bp = roundup(B, kVec) columns once per call. Padded rows are zero (residual 0), padded θ
// columns give garbage rows of G that are never read.
constexpr int64_t kTileMinB = 4;
constexpr int kTileRows = 32;  // multiple of kMicroRows
constexpr int kVec = 16;       // multiple of the widest vector (16 floats / 2 × 8 doubles)
constexpr int kMicroRows = 4;

static inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Rt[r][b] = Σ_c Xt[r][c] ThT[c][b] − yt[r]; register block of 4 rows × kVec thetas. The θ block
// (dp × kVec) is the outer loop, so it stays in L1 while the tile's rows stream past it.
template <class T>
static void tile_residuals(const T* Xt, const T* yt, const T* ThT, int64_t dp, int64_t Bp, T* Rt) {
  using S = Vec<T>;  // L lanes (1 in the scalar build)
  constexpr int NV = kVec / S::L;
  for (int64_t b0 = 0; b0 < Bp; b0 += kVec)
    for (int r0 = 0; r0 < kTileRows; r0 += kMicroRows) {
      typename S::R acc[kMicroRows][NV];
      for (int i = 0; i < kMicroRows; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = S::set1(-yt[r0 + i]);
      for (int64_t c = 0; c < dp; ++c) {
        const T* th = ThT + c * Bp + b0;
        typename S::R tv[NV];
        for (int v = 0; v < NV; ++v) tv[v] = S::loadu(th + v * S::L);
        for (int i = 0; i < kMicroRows; ++i) {
          const typename S::R xv = S::set1(Xt[(r0 + i) * dp + c]);
          for (int v = 0; v < NV; ++v) acc[i][v] = S::fma(xv, tv[v], acc[i][v]);
        }
      }
      for (int i = 0; i < kMicroRows; ++i)
        for (int v = 0; v < NV; ++v) S::storeu(Rt + (r0 + i) * Bp + b0 + v * S::L, acc[i][v]);
    }
}

// Gp[b][c] += Σ_r Rt[r][b] Xt[r][c]; register block of 4 thetas × kVec columns.
template <class T> static void tile_grad(const T* Xt, const T* Rt, int64_t dp, int64_t Bp, T* Gp) {
  using S = Vec<T>;  // L lanes (1 in the scalar build)
  constexpr int NV = kVec / S::L;
  for (int64_t b0 = 0; b0 < Bp; b0 += kMicroRows)
    for (int64_t c0 = 0; c0 < dp; c0 += kVec) {
      typename S::R acc[kMicroRows][NV];
      for (int i = 0; i < kMicroRows; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = S::loadu(Gp + (b0 + i) * dp + c0 + v * S::L);
      for (int r = 0; r < kTileRows; ++r) {
        const T* x = Xt + r * dp + c0;
        typename S::R xv[NV];
        for (int v = 0; v < NV; ++v) xv[v] = S::loadu(x + v * S::L);
        for (int i = 0; i < kMicroRows; ++i) {
          const typename S::R rv = S::set1(Rt[r * Bp + b0 + i]);
          for (int v = 0; v < NV; ++v) acc[i][v] = S::fma(rv, xv[v], acc[i][v]);
        }
      }
      for (int i = 0; i < kMicroRows; ++i)
        for (int v = 0; v < NV; ++v) S::storeu(Gp + (b0 + i) * dp + c0 + v * S::L, acc[i][v]);
    }
}

// Small batches (B < kTileMinB) of wide rows (x̃ of kNarrowBytes or more), R rows at a time read in place
// (so they stay in L1 between the two passes over them):
//   r_i = x_i·w_b + θ_b[d] − y_i   (R independent dot products, the tail columns masked),
//   G_b[:d] += Σ_i r_i x_i,   G_b[d] += Σ_i r_i,   L_b += Σ_i r_i².
// Each dot is L-lane partial sums reduced by sum_lanes' tree; rows are added in order.
// G and theta are B × (d+1).
template <int R, class T>
static inline void row_group(const T* const* x, const T* yr, const T* theta, int64_t d, int64_t B, bool want_grad,
                             T* G, T* L) {
  using S = Vec<T>;
  const int64_t stride = d + 1;
  const int64_t full = d / S::L * S::L;
  const typename S::M tail = S::mask(d - full);
  for (int64_t b = 0; b < B; ++b) {
    const T* th = theta + b * stride;
    typename S::R acc[R];
    for (int i = 0; i < R; ++i) {  // row by row: each row is one sequential read from memory
      typename S::R even = S::zero(), odd = S::zero();  // two chains, half the FMA latency
      int64_t c = 0;
      for (; c + 2 * S::L <= full; c += 2 * S::L) {
        even = S::fma(S::loadu(x[i] + c), S::loadu(th + c), even);
        odd = S::fma(S::loadu(x[i] + c + S::L), S::loadu(th + c + S::L), odd);
      }
      if (c < full) even = S::fma(S::loadu(x[i] + c), S::loadu(th + c), even);
      if (full < d) odd = S::fma(S::loadz(tail, x[i] + full), S::loadz(tail, th + full), odd);
      acc[i] = S::add(even, odd);
    }
    T res[R];
    T r_sum = 0, r_sq = 0;
    for (int i = 0; i < R; ++i) {
      T lanes[S::L];
      S::storeu(lanes, acc[i]);
      res[i] = sum_lanes<S::L>(lanes) + th[d] - yr[i];
      r_sum += res[i];
      r_sq += res[i] * res[i];
    }
    L[b] += r_sq;
    if (!want_grad) continue;
    T* g = G + b * stride;
    for (int64_t c = 0; c < full; c += S::L) {
      typename S::R gv = S::loadu(g + c);
      for (int i = 0; i < R; ++i) gv = S::fma(S::set1(res[i]), S::loadu(x[i] + c), gv);
      S::storeu(g + c, gv);
    }
    if (full < d) {
      typename S::R gv = S::loadz(tail, g + full);
      for (int i = 0; i < R; ++i) gv = S::fma(S::set1(res[i]), S::loadz(tail, x[i] + full), gv);
      S::store(g + full, tail, gv);
    }
    g[d] += r_sum;
  }
}

constexpr int kGroupRows = 8;

template <class T, bool kIndexed>
static void rows_wide(const T* X, const T* y, const T* theta, const int64_t* rows, int64_t begin, int64_t end,
                      int64_t d, int64_t B, bool want_grad, T* G, T* L) {
  const T* x[kGroupRows];
  T yr[kGroupRows];
  int64_t j = begin;
  for (; j + kGroupRows <= end; j += kGroupRows) {
    for (int i = 0; i < kGroupRows; ++i) {
      const int64_t row = kIndexed ? rows[j + i] : j + i;
      x[i] = X + row * d;
      yr[i] = y[row];
    }
    row_group<kGroupRows>(x, yr, theta, d, B, want_grad, G, L);
  }
  for (; j < end; ++j) {
    const int64_t row = kIndexed ? rows[j] : j;
    x[0] = X + row * d;
    yr[0] = y[row];
    row_group<1>(x, yr, theta, d, B, want_grad, G, L);
  }
}

// Small batches of narrow rows (B < kTileMinB, x̃ shorter than kNarrowBytes): the tile is staged
// transposed, XtT[c][r] (row c = d is the bias: 1 for real rows, 0 for padding), so that
// everything runs over kVec rows at a time with no per-row horizontal sum:
//   r[rows] = Σ_c θ_b[c] XtT[c][rows] − y[rows],  Gl_b[c][lanes] += r · XtT[c][rows],  Ll_b += r².
// The kVec lanes of Gl / Ll are summed (fixed tree) once per block. Staging costs per element,
// the in-place path per row: measured with 40 MB of X (2-core AVX-512 machine, GB/s staged /
// in place), float32 d = 20: 17 / 13, d = 28: 18 / 18, d = 31: 18 / 21; float64 d = 10: 26 / 25,
// d = 15: 30 / 34, d = 31: 29 / 42. So rows of 128 bytes and more are read in place.
constexpr int64_t kNarrowBytes = 128;
constexpr int64_t kNarrow = kNarrowBytes / sizeof(float);  // the most columns a staged tile holds

template <class T>
static void tile_transposed(const T* XtT, const T* yt, const T* theta, int64_t stride, int64_t B, bool want_grad,
                            T* Gl, T* Ll) {
  using S = Vec<T>;  // L lanes (1 in the scalar build)
  constexpr int NV = kVec / S::L;
  for (int r0 = 0; r0 < kTileRows; r0 += kVec)
    for (int64_t b = 0; b < B; ++b) {
      const T* th = theta + b * stride;
      typename S::R acc[NV];
      for (int v = 0; v < NV; ++v) acc[v] = S::set1(T(0));
      for (int64_t c = 0; c < stride; ++c) {
        const typename S::R tc = S::set1(th[c]);
        for (int v = 0; v < NV; ++v) acc[v] = S::fma(tc, S::loadu(XtT + c * kTileRows + r0 + v * S::L), acc[v]);
      }
      T* l = Ll + b * kVec;
      for (int v = 0; v < NV; ++v) {
        acc[v] = S::fma(S::set1(T(-1)), S::loadu(yt + r0 + v * S::L), acc[v]);  // − y (exact)
        S::storeu(l + v * S::L, S::fma(acc[v], acc[v], S::loadu(l + v * S::L)));
      }
      if (want_grad)
        for (int64_t c = 0; c < stride; ++c) {
          T* g = Gl + (b * stride + c) * kVec;
          const T* x = XtT + c * kTileRows + r0;
          for (int v = 0; v < NV; ++v)
            S::storeu(g + v * S::L, S::fma(acc[v], S::loadu(x + v * S::L), S::loadu(g + v * S::L)));
        }
    }
}

template <class T, bool kIndexed>
static void rows_narrow(const T* X, const T* y, const T* theta, const int64_t* rows, int64_t begin, int64_t end,
                        int64_t d, int64_t B, bool want_grad, T* Gp, T* L) {
  const int64_t stride = d + 1;
  T XtT[kNarrow * kTileRows];
  T yt[kTileRows];
  T* Gl = new T[B * stride * kVec]();
  T* Ll = new T[B * kVec]();
  for (int64_t t0 = begin; t0 < end; t0 += kTileRows) {
    const int64_t nr = end - t0 < kTileRows ? end - t0 : kTileRows;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {  // 16 rows at a time, one register each, transposed
      for (int64_t h = 0; h < kTileRows; h += 16) {
        const int64_t real = nr - h < 16 ? (nr - h > 0 ? nr - h : 0) : 16;  // rows past it: padding, 0
        const float* x[16];
        for (int k = 0; k < 16; ++k) {
          const int64_t r = k < real ? h + k : 0;  // a padding row points at a real one, never read
          const int64_t i = kIndexed ? rows[t0 + r] : t0 + r;
          x[k] = X + i * d;
          yt[h + k] = k < real ? y[i] : 0.0f;
        }
        for (int64_t c0 = 0; c0 < d; c0 += 16) {
          const __mmask16 cols = Vec<float>::mask(d - c0);
          __m512 v[16];
          for (int k = 0; k < 16; ++k)
            v[k] = k < real ? _mm512_maskz_loadu_ps(cols, x[k] + c0) : _mm512_setzero_ps();
          transpose16(v);
          for (int64_t c = c0; c < d && c < c0 + 16; ++c) _mm512_storeu_ps(XtT + c * kTileRows + h, v[c - c0]);
        }
        _mm512_storeu_ps(XtT + d * kTileRows + h, _mm512_maskz_mov_ps(Vec<float>::mask(real), _mm512_set1_ps(1.0f)));
      }
      tile_transposed(XtT, yt, theta, stride, B, want_grad, Gl, Ll);
      continue;
    }
#endif
    for (int64_t r = 0; r < kTileRows; ++r) {
      if (r < nr) {
        const int64_t i = kIndexed ? rows[t0 + r] : t0 + r;
        const T* x = X + i * d;
        for (int64_t c = 0; c < d; ++c) XtT[c * kTileRows + r] = x[c];
        XtT[d * kTileRows + r] = T(1);
        yt[r] = y[i];
      } else {
        for (int64_t c = 0; c < stride; ++c) XtT[c * kTileRows + r] = T(0);
        yt[r] = T(0);
      }
    }
    tile_transposed(XtT, yt, theta, stride, B, want_grad, Gl, Ll);
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < stride; ++c) Gp[b * stride + c] += sum_lanes<kVec>(Gl + (b * stride + c) * kVec);
    L[b] += sum_lanes<kVec>(Ll + b * kVec);
  }
  delete[] Ll;
  delete[] Gl;
}

template <class T, bool kIndexed>
static void rows_tiled(const T* X, const T* y, const T* ThT, const int64_t* rows, int64_t begin, int64_t end,
                       int64_t d, int64_t B, int64_t dp, int64_t Bp, bool want_grad, T* Gp, T* L) {
  T* Xt = new T[kTileRows * dp];
  T* Rt = new T[kTileRows * Bp];
  T yt[kTileRows];
  for (int64_t t0 = begin; t0 < end; t0 += kTileRows) {
    const int64_t nr = end - t0 < kTileRows ? end - t0 : kTileRows;
    for (int64_t r = 0; r < kTileRows; ++r) {
      T* xt = Xt + r * dp;
      if (r < nr) {
        const int64_t i = kIndexed ? rows[t0 + r] : t0 + r;
        std::memcpy(xt, X + i * d, sizeof(T) * d);
        xt[d] = T(1);
        for (int64_t c = d + 1; c < dp; ++c) xt[c] = T(0);
        yt[r] = y[i];
      } else {
        for (int64_t c = 0; c < dp; ++c) xt[c] = T(0);
        yt[r] = T(0);
      }
    }
    tile_residuals(Xt, yt, ThT, dp, Bp, Rt);
    if (want_grad) tile_grad(Xt, Rt, dp, Bp, Gp);
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t b = 0; b < B; ++b) L[b] += Rt[r * Bp + b] * Rt[r * Bp + b];
  }
  delete[] Rt;
  delete[] Xt;
}

// grad (B, d+1) = G/m and/or loss (B,) = L/(2m) over S (all rows, or `rows`); either may be null.
template <class T>
static void evaluate(const T* X, const T* y, const T* theta, const int64_t* rows, int64_t m, int64_t d, int64_t B,
                     T* grad, T* loss) {
  const int64_t stride = d + 1;
  int64_t block = (m + kMaxBlocks - 1) / kMaxBlocks;
  int64_t min_block = kMinBlockElems / stride;
  if (min_block < 256) min_block = 256;
  if (block < min_block) block = min_block;
  const int64_t nblocks = (m + block - 1) / block;

  // Paths: the line (d = 1, B = 1) row-vectorised; the GEMM pair on padded tiles for
  // B >= kTileMinB; below that a transposed tile for narrow rows, or wide rows read in place.
  const bool line = d == 1 && B == 1;
  const bool gemm = B >= kTileMinB;
  const bool narrow = !line && !gemm && stride * static_cast<int64_t>(sizeof(T)) < kNarrowBytes;
  const int64_t dp = gemm ? round_up(stride, kVec) : stride;
  const int64_t Bp = gemm ? round_up(B, kVec) : B;
  const int64_t gsize = Bp * dp, psize = gsize + B;  // per block: G then L
  T* partial = new T[nblocks * psize]();
  T* ThT = nullptr;
  if (gemm) {  // Θᵀ padded: ThT[c][b]
    ThT = new T[dp * Bp]();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < stride; ++c) ThT[c * Bp + b] = theta[b * stride + c];
  }
  const bool want_grad = grad != nullptr;
  for_each_block(m, block, [&](int64_t k, int64_t begin, int64_t end) {
    T* G = partial + k * psize;
    T* L = G + gsize;
    if (line) {
      if (rows) rows_line<T, true>(X, y, theta, rows, begin, end, G, L);
      else rows_line<T, false>(X, y, theta, rows, begin, end, G, L);
    } else if (gemm) {
      if (rows) rows_tiled<T, true>(X, y, ThT, rows, begin, end, d, B, dp, Bp, want_grad, G, L);
      else rows_tiled<T, false>(X, y, ThT, rows, begin, end, d, B, dp, Bp, want_grad, G, L);
    } else if (narrow) {
      if (rows) rows_narrow<T, true>(X, y, theta, rows, begin, end, d, B, want_grad, G, L);
      else rows_narrow<T, false>(X, y, theta, rows, begin, end, d, B, want_grad, G, L);
    } else {
      if (rows) rows_wide<T, true>(X, y, theta, rows, begin, end, d, B, want_grad, G, L);
      else rows_wide<T, false>(X, y, theta, rows, begin, end, d, B, want_grad, G, L);
    }
  });
  const T inv_m = T(1) / static_cast<T>(m);
  if (grad)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < stride; ++c) {
        T s = 0;
        for (int64_t k = 0; k < nblocks; ++k) s += partial[k * psize + b * dp + c];
        grad[b * stride + c] = s * inv_m;
      }
  if (loss)
    for (int64_t b = 0; b < B; ++b) {
      T s = 0;
      for (int64_t k = 0; k < nblocks; ++k) s += partial[k * psize + gsize + b];
      loss[b] = s * inv_m / T(2);
    }
  delete[] ThT;
  delete[] partial;
}

// One trajectory of fit: θ_{t+1} = θ_t − lr·g_t (gd / sgd / minibatch), or Adam:
//   m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g²,  m̂ = m/(1−β1^t),  v̂ = v/(1−β2^t),
//   θ ← θ − lr m̂ / (√v̂ + ε)   (t = 1, 2, ...).
// g_t is the gradient over all rows (gd) or over the rows drawn for step t.
// losses[t] = f(θ_t) over all rows. Over all rows f and ∇f come from a pass over X, or from the
// quadratic form `quad` when given (linreg_quadratic.h).
template <class T>
static void fit_one(const T* X, const T* y, int64_t n, int64_t d, const T* theta0, T lr, uint64_t seed, int method,
                    int64_t steps, int64_t batch, double beta1, double beta2, double eps, T* thetas, T* losses,
                    int64_t* indices, T* state, const LinregQuadratic* quad) {
  const int64_t stride = d + 1;
  std::vector<double> scratch(quad ? stride : 0);  // the form's
  auto all_rows = [&](const T* th, T* grad, T* loss) {
    if (quad) *loss = linreg_quadratic_eval(*quad, th, grad, scratch.data());
    else evaluate(X, y, th, static_cast<const int64_t*>(nullptr), n, d, 1, grad, loss);
  };
  T* g = new T[stride];
  T* mom = state;
  T* vel = state + stride;
  for (int64_t c = 0; c < stride; ++c) {
    thetas[c] = theta0[c];
    mom[c] = vel[c] = T(0);
  }
  const T b1 = static_cast<T>(beta1), b2 = static_cast<T>(beta2), e = static_cast<T>(eps);
  for (int64_t t = 0; t < steps; ++t) {
    const T* th = thetas + t * stride;
    T* next = thetas + (t + 1) * stride;
    if (method == static_cast<int>(FitMethod::gd)) {
      all_rows(th, g, losses + t);
    } else {
      all_rows(th, static_cast<T*>(nullptr), losses + t);
      int64_t* idx = indices + t * batch;
      linreg_sample_rows(seed, static_cast<uint64_t>(t), n, batch, idx);
      evaluate(X, y, th, idx, batch, d, 1, g, static_cast<T*>(nullptr));
    }
    if (method == static_cast<int>(FitMethod::adam)) {
      const T bc1 = static_cast<T>(1.0 - std::pow(beta1, static_cast<double>(t + 1)));
      const T bc2 = static_cast<T>(1.0 - std::pow(beta2, static_cast<double>(t + 1)));
      for (int64_t c = 0; c < stride; ++c) {
        mom[c] = b1 * mom[c] + (T(1) - b1) * g[c];
        vel[c] = b2 * vel[c] + (T(1) - b2) * g[c] * g[c];
        const T mhat = mom[c] / bc1, vhat = vel[c] / bc2;
        next[c] = th[c] - lr * mhat / (std::sqrt(vhat) + e);
      }
    } else {
      for (int64_t c = 0; c < stride; ++c) next[c] = th[c] - lr * g[c];
    }
  }
  all_rows(thetas + steps * stride, static_cast<T*>(nullptr), losses + steps);
  delete[] g;
}

template <class T>
static void fit_all(const T* X, const T* y, int64_t n, int64_t d, int64_t B, const T* theta0, const double* lr,
                    const int64_t* seed, int method, int64_t steps, int64_t batch, double beta1, double beta2,
                    double eps, T* thetas, T* losses, int64_t* indices, T* state, const LinregQuadratic* quad) {
  const int64_t stride = d + 1;
  // Trajectories in parallel; the row blocks inside each then run serially (nested calls), with
  // the same split as a single trajectory, so a grid entry equals the run made alone.
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      fit_one(X, y, n, d, theta0 + b * stride, static_cast<T>(lr[b]), static_cast<uint64_t>(seed[b]), method, steps,
              batch, beta1, beta2, eps, thetas + b * (steps + 1) * stride, losses + b * (steps + 1),
              indices + b * steps * batch, state + b * 2 * stride, quad);
  });
}

// ---- entry points per ISA --------------------------------------------------------------------------
void linreg_eval(const void* X, const void* y, const void* theta, const int64_t* rows, int64_t m, int64_t d, int64_t B,
                 void* grad, void* loss, bool f64) {
  if (f64)
    evaluate(static_cast<const double*>(X), static_cast<const double*>(y), static_cast<const double*>(theta), rows,
             m, d, B, static_cast<double*>(grad), static_cast<double*>(loss));
  else
    evaluate(static_cast<const float*>(X), static_cast<const float*>(y), static_cast<const float*>(theta), rows, m,
             d, B, static_cast<float*>(grad), static_cast<float*>(loss));
}

void linreg_fit(const void* X, const void* y, int64_t n, int64_t d, int64_t B, const void* theta0, const double* lr,
                const int64_t* seed, int method, int64_t steps, int64_t batch, double beta1, double beta2,
                double eps, void* thetas, void* losses, int64_t* indices, void* state, const LinregQuadratic* quad,
                bool f64) {
  if (f64)
    fit_all(static_cast<const double*>(X), static_cast<const double*>(y), n, d, B,
            static_cast<const double*>(theta0), lr, seed, method, steps, batch, beta1, beta2, eps,
            static_cast<double*>(thetas), static_cast<double*>(losses), indices, static_cast<double*>(state), quad);
  else
    fit_all(static_cast<const float*>(X), static_cast<const float*>(y), n, d, B, static_cast<const float*>(theta0),
            lr, seed, method, steps, batch, beta1, beta2, eps, static_cast<float*>(thetas),
            static_cast<float*>(losses), indices, static_cast<float*>(state), quad);
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include <cstring>

#include "core/checks.h"

OX_ISA_DECLARE(void, linreg_eval, (const void*, const void*, const void*, const int64_t*, int64_t, int64_t, int64_t,
                                   void*, void*, bool))
OX_ISA_DECLARE(void, linreg_fit, (const void*, const void*, int64_t, int64_t, int64_t, const void*, const double*,
                                  const int64_t*, int, int64_t, int64_t, double, double, double, void*, void*,
                                  int64_t*, void*, const LinregQuadratic*, bool))

namespace ox {

void linreg_check(const char* op, const View& X, const View& y, const View& theta, const View* rows,
                  const View& out, bool is_grad) {
  check_dtype(op, "X", X, {DType::f32, DType::f64});
  check_rank(op, "X", X, 2);
  check_contiguous(op, "X", X);
  check_numel_fits(op, "X", X);
  const int64_t n = X.shape[0], d = X.shape[1];
  check_like(op, "y", y, "X", X);
  check_shape(op, "y", y, {n});
  check_like(op, "theta", theta, "X", X);
  check_rank_between(op, "theta", theta, 1, 2);
  if (theta.size(-1) != d + 1)
    value_error(op, ": argument 'theta' must have d+1 = ", d + 1, " entries in its last dimension (X has d = ",
                d, " columns), got shape ", shape_str(theta));
  if (rows) {
    check_same_device(op, "rows", *rows, "X", X);
    check_dtype(op, "rows", *rows, {DType::i64});
    check_rank(op, "rows", *rows, 1);
    check_contiguous(op, "rows", *rows);
  }
  const int64_t m = rows ? rows->shape[0] : n;
  if (m == 0) value_error(op, ": ", rows ? "argument 'rows' is empty" : "argument 'X' has no rows",
                          "; the mean over no samples is undefined");
  if (is_grad) {
    if (theta.ndim == 1) check_output(op, "out", out, X, {d + 1});
    else check_output(op, "out", out, X, {theta.shape[0], d + 1});
  } else {
    if (theta.ndim == 1) check_output(op, "out", out, X, {});
    else check_output(op, "out", out, X, {theta.shape[0]});
  }
  if (rows && rows->device == Device::cpu) {
    const int64_t* r = rows->ptr<int64_t>();
    for (int64_t j = 0; j < m; ++j)
      if (r[j] < 0 || r[j] >= n)
        value_error(op, ": argument 'rows' holds index ", r[j], " at position ", j, ", outside [0, ", n, ")");
  }
}

void linreg_grad_cpu(const View& X, const View& y, const View& theta, const View* rows, const View& grad) {
  const int64_t B = theta.ndim == 2 ? theta.shape[0] : 1;
  const int64_t m = rows ? rows->shape[0] : X.shape[0];
  if (B == 0) return;
  OX_ISA_DISPATCH(linreg_eval, X.data, y.data, theta.data, rows ? rows->ptr<int64_t>() : nullptr, m, X.shape[1], B,
                  grad.data, static_cast<void*>(nullptr), X.dtype == DType::f64);
}

void linreg_loss_cpu(const View& X, const View& y, const View& theta, const View& loss) {
  const int64_t B = theta.ndim == 2 ? theta.shape[0] : 1;
  if (B == 0) return;
  OX_ISA_DISPATCH(linreg_eval, X.data, y.data, theta.data, static_cast<const int64_t*>(nullptr), X.shape[0],
                  X.shape[1], B, static_cast<void*>(nullptr), loss.data, X.dtype == DType::f64);
}

FitMethod parse_fit_method(const char* name) {
  if (!std::strcmp(name, "gd")) return FitMethod::gd;
  if (!std::strcmp(name, "sgd")) return FitMethod::sgd;
  if (!std::strcmp(name, "minibatch")) return FitMethod::minibatch;
  if (!std::strcmp(name, "adam")) return FitMethod::adam;
  value_error("linreg fit: argument 'method' must be one of 'gd', 'sgd', 'minibatch', 'adam', got '", name, "'");
}

template <class T> static void check_finite(const char* arg, const View& v) {
  const T* p = v.ptr<T>();
  const int64_t count = v.numel();
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(p[i]))
      value_error("linreg fit: argument '", arg, "' holds a non-finite value (", p[i], ") at flat index ", i,
                  "; remove or impute NaN/Inf before fitting");
}

void linreg_fit_check(const FitArgs& a, const FitParams& p) {
  const char* op = "linreg fit";
  check_dtype(op, "X", a.X, {DType::f32, DType::f64});
  check_rank(op, "X", a.X, 2);
  check_contiguous(op, "X", a.X);
  check_numel_fits(op, "X", a.X);
  const int64_t n = a.X.shape[0], d = a.X.shape[1];
  check_like(op, "y", a.y, "X", a.X);
  check_shape(op, "y", a.y, {n});
  check_like(op, "theta0", a.theta0, "X", a.X);
  check_rank(op, "theta0", a.theta0, 2);
  if (a.theta0.shape[1] != d + 1)
    value_error(op, ": argument 'theta0' must have d+1 = ", d + 1, " entries (X has d = ", d,
                " columns), got shape ", shape_str(a.theta0));
  const int64_t B = a.theta0.shape[0];
  check_same_device(op, "lr", a.lr, "X", a.X);
  check_dtype(op, "lr", a.lr, {DType::f64});
  check_shape(op, "lr", a.lr, {B});
  check_contiguous(op, "lr", a.lr);
  check_same_device(op, "seed", a.seed, "X", a.X);
  check_dtype(op, "seed", a.seed, {DType::i64});
  check_shape(op, "seed", a.seed, {B});
  check_contiguous(op, "seed", a.seed);
  if (p.steps < 0 || p.steps > (int64_t(1) << 40))
    value_error(op, ": argument 'steps' must be in [0, 2^40], got ", p.steps);
  if (n == 0) value_error(op, ": argument 'X' has no rows; there is nothing to fit");
  if (p.method != FitMethod::gd) {
    if (p.batch < 1) value_error(op, ": argument 'batch_size' must be >= 1, got ", p.batch);
    if (p.batch > n)
      value_error(op, ": argument 'batch_size' (", p.batch, ") exceeds the number of rows of X (", n,
                  "); a mini-batch draws distinct rows");
  }
  if (!(p.beta1 >= 0 && p.beta1 < 1)) value_error(op, ": argument 'betas'[0] must be in [0, 1), got ", p.beta1);
  if (!(p.beta2 >= 0 && p.beta2 < 1)) value_error(op, ": argument 'betas'[1] must be in [0, 1), got ", p.beta2);
  if (!(p.eps >= 0)) value_error(op, ": argument 'eps' must be >= 0, got ", p.eps);
  check_output(op, "thetas", a.thetas, a.X, {B, p.steps + 1, d + 1});
  check_output(op, "losses", a.losses, a.X, {B, p.steps + 1});
  check_same_device(op, "indices", a.indices, "X", a.X);
  check_dtype(op, "indices", a.indices, {DType::i64});
  check_shape(op, "indices", a.indices, {B, p.steps, p.batch});
  if (a.indices.numel() > 0) check_contiguous(op, "indices", a.indices);  // gd draws none
  check_writable(op, "indices", a.indices);
  check_output(op, "state", a.state, a.X, {B, 2, d + 1});
  if (a.X.device == Device::cpu) {
    if (a.X.dtype == DType::f64) {
      check_finite<double>("X", a.X);
      check_finite<double>("y", a.y);
    } else {
      check_finite<float>("X", a.X);
      check_finite<float>("y", a.y);
    }
    const double* lr = a.lr.ptr<double>();
    for (int64_t b = 0; b < B; ++b)
      if (!std::isfinite(lr[b])) value_error(op, ": argument 'lr' holds a non-finite value at index ", b);
  }
}

void linreg_fit_cpu(const FitArgs& a, const FitParams& p) {
  const int64_t B = a.theta0.shape[0];
  if (B == 0) return;
  std::optional<LinregQuadratic> quad;
  if (linreg_quadratic_pays(a.X.shape[0], a.X.shape[1], p.steps)) quad = linreg_quadratic_build(a.X, a.y);
  OX_ISA_DISPATCH(linreg_fit, a.X.data, a.y.data, a.X.shape[0], a.X.shape[1], B, a.theta0.data,
                  a.lr.ptr<double>(), a.seed.ptr<int64_t>(), static_cast<int>(p.method), p.steps, p.batch, p.beta1,
                  p.beta2, p.eps, a.thetas.data, a.losses.data, a.indices.ptr<int64_t>(), a.state.data,
                  quad ? &*quad : nullptr, a.X.dtype == DType::f64);
}

}  // namespace ox
#endif
