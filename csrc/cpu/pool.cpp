#include "pool.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "core/isa.h"
#include "core/threading.h"

namespace ox {
namespace OX_ISA {

// Input elements per parallel task (whole planes are never split).
constexpr int64_t kGrain = 16384;

// torch's rule for the running maximum: take v when it is greater or NaN.
template <class T> static inline bool takes_over(T v, T m) { return v > m || v != v; }

struct Geometry {
  int64_t planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw;
};

// The window taps inside the plane along one axis: offsets start + t·dil for t in [first, end).
struct Taps {
  int64_t start, first, end;
};

static Taps taps(int64_t out_index, int64_t stride, int64_t pad, int64_t k, int64_t dil, int64_t extent) {
  const int64_t start = out_index * stride - pad;
  const int64_t first = start < 0 ? (-start + dil - 1) / dil : 0;
  const int64_t past = extent - 1 - start;  // the last tap t must have start + t·dil <= extent − 1
  const int64_t end = past < 0 ? 0 : (past / dil + 1 < k ? past / dil + 1 : k);
  return Taps{start, first, end > first ? end : first};
}

// The taps of every output row and column, computed once per call.
struct Windows {
  std::vector<Taps> rows, cols;
  explicit Windows(const Geometry& g) {
    for (int64_t i = 0; i < g.ho; ++i) rows.push_back(taps(i, g.sh, g.ph, g.kh, g.dh, g.h));
    for (int64_t j = 0; j < g.wo; ++j) cols.push_back(taps(j, g.sw, g.pw, g.kw, g.dw, g.w));
  }
};

// Any window: the maximum of its taps inside the plane under torch's rule, −inf for none.
// (Starting from −inf gives the value torch's scan from the first tap gives.)
template <class T> static void fwd_plane(const T* x, T* y, const Geometry& g, const Windows& win) {
  for (int64_t i = 0; i < g.ho; ++i) {
    const Taps& r = win.rows[i];
    for (int64_t j = 0; j < g.wo; ++j) {
      const Taps& c = win.cols[j];
      // Branch-free: the ordered maximum (maxss), and apart from it the last NaN, which wins.
      T m = -std::numeric_limits<T>::infinity(), nan = 0;
      bool any_nan = false;
      for (int64_t a = r.first; a < r.end; ++a) {
        const T* row = x + (r.start + a * g.dh) * g.w + c.start;
        for (int64_t b = c.first; b < c.end; ++b) {
          const T v = row[b * g.dw];
          m = v > m ? v : m;
          nan = v != v ? v : nan;
          any_nan |= v != v;
        }
      }
      y[i * g.wo + j] = any_nan ? nan : m;
    }
  }
}

// 2×2 windows, stride 2 (the course's pool): branch-free so it vectorises.
template <class T> static void fwd_plane_2x2(const T* x, T* y, const Geometry& g) {
  for (int64_t i = 0; i < g.ho; ++i) {
    const T* r0 = x + 2 * i * g.w;
    const T* r1 = r0 + g.w;
    T* out = y + i * g.wo;
    for (int64_t j = 0; j < g.wo; ++j) {
      T m = r0[2 * j];
      const T b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
      m = takes_over(b, m) ? b : m;
      m = takes_over(c, m) ? c : m;
      m = takes_over(d, m) ? d : m;
      out[j] = m;
    }
  }
}

// Offset in the plane of the window's winner under torch's scan from its first tap inside the
// plane, −1 when no tap is inside. Branch-free, as the forward: the first strict maximum of
// the ordered values, unless a NaN is present, then the last NaN (what the single scan picks).
template <class T> static inline int64_t window_argmax(const T* x, const Geometry& g, const Taps& r, const Taps& c) {
  if (r.first == r.end || c.first == c.end) return -1;
  int64_t pos = (r.start + r.first * g.dh) * g.w + c.start + c.first * g.dw, nan_pos = -1;
  T m = x[pos];
  for (int64_t a = r.first; a < r.end; ++a) {
    const int64_t row = (r.start + a * g.dh) * g.w + c.start;
    for (int64_t b = c.first; b < c.end; ++b) {
      const int64_t q = row + b * g.dw;
      const T v = x[q];
      const bool greater = v > m;
      m = greater ? v : m;
      pos = greater ? q : pos;
      nan_pos = v != v ? q : nan_pos;
    }
  }
  return nan_pos >= 0 ? nan_pos : pos;
}

// Any window, with the winners' offsets in the plane (return_indices; −1 where no tap is inside).
template <class T>
static void fwd_plane_indices(const T* x, T* y, int64_t* idx, const Geometry& g, const Windows& win) {
  for (int64_t i = 0; i < g.ho; ++i)
    for (int64_t j = 0; j < g.wo; ++j) {
      const int64_t pos = window_argmax(x, g, win.rows[i], win.cols[j]);
      y[i * g.wo + j] = pos < 0 ? -std::numeric_limits<T>::infinity() : x[pos];
      idx[i * g.wo + j] = pos;
    }
}

// Any window: zero the plane, then add each dy at its window's arg-max (none: no gradient), in
// window order so that overlapping windows accumulate deterministically.
template <class T> static void bwd_plane(const T* dy, const T* x, T* dx, const Geometry& g, const Windows& win) {
  std::memset(dx, 0, sizeof(T) * g.h * g.w);
  for (int64_t i = 0; i < g.ho; ++i)
    for (int64_t j = 0; j < g.wo; ++j) {
      const int64_t pos = window_argmax(x, g, win.rows[i], win.cols[j]);
      if (pos >= 0) dx[pos] += dy[i * g.wo + j];
    }
}

// 2×2, stride 2: every covered element is written once (dy or 0); rows and
// columns outside every window (odd H or W) are zeroed.
template <class T> static void bwd_plane_2x2(const T* dy, const T* x, T* dx, const Geometry& g) {
  for (int64_t i = 0; i < g.ho; ++i) {
    const T* r0 = x + 2 * i * g.w;
    const T* r1 = r0 + g.w;
    T* d0 = dx + 2 * i * g.w;
    T* d1 = d0 + g.w;
    const T* gr = dy + i * g.wo;
    for (int64_t j = 0; j < g.wo; ++j) {
      const T a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
      // k = position of the winner in window order, as a T so that every select
      // has the lanes of T (branch-free: this loop vectorises).
      const bool tb = takes_over(b, a);
      T m = tb ? b : a, k = tb ? T(1) : T(0);
      const bool tc = takes_over(c, m);
      m = tc ? c : m;
      k = tc ? T(2) : k;
      k = takes_over(d, m) ? T(3) : k;
      const T v = gr[j];
      d0[2 * j] = k == T(0) ? v : T(0);
      d0[2 * j + 1] = k == T(1) ? v : T(0);
      d1[2 * j] = k == T(2) ? v : T(0);
      d1[2 * j + 1] = k == T(3) ? v : T(0);
    }
    if (g.w & 1) d0[g.w - 1] = d1[g.w - 1] = T(0);
  }
  if (g.h & 1) std::memset(dx + (g.h - 1) * g.w, 0, sizeof(T) * g.w);
}

// The course's window: 2×2, stride 2, no padding or dilation, every window inside the plane.
static bool is_2x2(const Geometry& g) {
  return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 && g.dh == 1 && g.dw == 1 &&
         2 * g.ho <= g.h && 2 * g.wo <= g.w;
}

template <class T> static void fwd(const T* x, T* y, int64_t* idx, const Geometry& g) {
  const bool fast = is_2x2(g) && !idx;
  const Windows win(fast ? Geometry{} : g);
  const int64_t in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  const int64_t grain = in_plane >= kGrain ? 1 : kGrain / in_plane;
  parallel_for(g.planes, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      if (idx) fwd_plane_indices(x + p * in_plane, y + p * out_plane, idx + p * out_plane, g, win);
      else if (fast) fwd_plane_2x2(x + p * in_plane, y + p * out_plane, g);
      else fwd_plane(x + p * in_plane, y + p * out_plane, g, win);
    }
  });
}

template <class T> static void bwd(const T* dy, const T* x, T* dx, const Geometry& g) {
  const bool fast = is_2x2(g);
  const Windows win(fast ? Geometry{} : g);
  const int64_t in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  const int64_t grain = in_plane >= kGrain ? 1 : kGrain / in_plane;
  parallel_for(g.planes, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      if (fast) bwd_plane_2x2(dy + p * out_plane, x + p * in_plane, dx + p * in_plane, g);
      else bwd_plane(dy + p * out_plane, x + p * in_plane, dx + p * in_plane, g, win);
    }
  });
}

void max_pool2d_fwd(const void* x, void* y, int64_t* idx, const int64_t* geom, bool f64) {
  const Geometry g{geom[0], geom[1], geom[2],  geom[3],  geom[4],  geom[5], geom[6],
                   geom[7], geom[8], geom[9], geom[10], geom[11], geom[12]};
  if (f64) fwd(static_cast<const double*>(x), static_cast<double*>(y), idx, g);
  else fwd(static_cast<const float*>(x), static_cast<float*>(y), idx, g);
}

void max_pool2d_bwd(const void* dy, const void* x, void* dx, const int64_t* geom, bool f64) {
  const Geometry g{geom[0], geom[1], geom[2],  geom[3],  geom[4],  geom[5], geom[6],
                   geom[7], geom[8], geom[9], geom[10], geom[11], geom[12]};
  if (f64) bwd(static_cast<const double*>(dy), static_cast<const double*>(x), static_cast<double*>(dx), g);
  else bwd(static_cast<const float*>(dy), static_cast<const float*>(x), static_cast<float*>(dx), g);
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include "core/checks.h"

OX_ISA_DECLARE(void, max_pool2d_fwd, (const void*, void*, int64_t*, const int64_t*, bool))
OX_ISA_DECLARE(void, max_pool2d_bwd, (const void*, const void*, void*, const int64_t*, bool))

namespace ox {

void max_pool2d_check(const char* op, const View& x, const Pool2d& p, int64_t* ho, int64_t* wo) {
  check_dtype(op, "x", x, {DType::f32, DType::f64});
  check_rank_between(op, "x", x, 3, 4);
  check_contiguous(op, "x", x);
  check_numel_fits(op, "x", x);
  if (p.kh < 1 || p.kw < 1)
    value_error(op, ": argument 'kernel_size' must be positive, got (", p.kh, ", ", p.kw, ")");
  if (p.sh < 1 || p.sw < 1)
    value_error(op, ": argument 'stride' must be positive, got (", p.sh, ", ", p.sw, ")");
  if (p.dh < 1 || p.dw < 1)
    value_error(op, ": argument 'dilation' must be positive, got (", p.dh, ", ", p.dw, ")");
  if (p.ph < 0 || p.pw < 0 || 2 * p.ph > p.kh || 2 * p.pw > p.kw)  // torch's limit: pad <= kernel_size / 2
    value_error(op, ": argument 'padding' must be in [0, kernel_size / 2] (kernel_size (", p.kh, ", ", p.kw,
                ")), got (", p.ph, ", ", p.pw, ")");
  if (p.kh > (int64_t(1) << 30) || p.kw > (int64_t(1) << 30) || p.dh > (int64_t(1) << 30) ||
      p.dw > (int64_t(1) << 30))
    value_error(op, ": argument 'kernel_size' or 'dilation' is too large");
  const int64_t h = x.size(-2), w = x.size(-1);
  if (p.dh * (p.kh - 1) + 1 > h + 2 * p.ph || p.dw * (p.kw - 1) + 1 > w + 2 * p.pw) {
    const bool plain = p.ph == 0 && p.pw == 0 && p.dh == 1 && p.dw == 1;
    value_error(op, ": argument 'kernel_size' (", p.kh, ", ", p.kw, ") is larger than the input plane (", h, ", ", w,
                ") of 'x' with shape ", shape_str(x),
                plain ? "" : cat(" padded by (", p.ph, ", ", p.pw, ") at dilation (", p.dh, ", ", p.dw, ")"));
  }
  *ho = pool_out_size(h, p.kh, p.sh, p.ph, p.dh, p.ceil_mode);
  *wo = pool_out_size(w, p.kw, p.sw, p.pw, p.dw, p.ceil_mode);
}

void max_pool2d_check_out(const char* op, const char* arg, const View& y, const View& x, int64_t ho, int64_t wo) {
  if (x.ndim == 4) check_output(op, arg, y, x, {x.shape[0], x.shape[1], ho, wo});
  else check_output(op, arg, y, x, {x.shape[0], ho, wo});
}

static void geometry(const View& x, const Pool2d& p, int64_t* g) {
  const int64_t h = x.size(-2), w = x.size(-1);
  const int64_t values[13] = {x.ndim == 4 ? x.shape[0] * x.shape[1] : x.shape[0],
                              h,
                              w,
                              pool_out_size(h, p.kh, p.sh, p.ph, p.dh, p.ceil_mode),
                              pool_out_size(w, p.kw, p.sw, p.pw, p.dw, p.ceil_mode),
                              p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw};
  std::memcpy(g, values, sizeof(values));
}

// Always the baseline (SSE2) build: on the AMD EPYC this was tuned on, GCC's
// AVX2 / AVX-512 vectorisations of the stride-2 window loops (permutes, masked
// epilogues) measured 10–40× slower than the SSE2 code (e.g. 2x2 backward on
// (64,6,28,28): 2.7 ms AVX-512, 0.11 ms AVX2, 0.07–0.15 ms SSE2; forward
// 1.0 ms AVX-512 vs 0.05 ms). Revisit with hand-written intrinsics.
void max_pool2d_check_indices(const char* op, const View& indices, const View& y) {
  check_same_device(op, "indices", indices, "out", y);
  check_dtype(op, "indices", indices, {DType::i64});
  check_same_shape(op, "indices", indices, y);
  check_contiguous(op, "indices", indices);
  check_writable(op, "indices", indices);
}

void max_pool2d_forward_cpu(const View& x, const Pool2d& p, const View& y, const View* indices) {
  int64_t g[13];
  geometry(x, p, g);
  ::ox::scalar::max_pool2d_fwd(x.data, y.data, indices ? indices->ptr<int64_t>() : nullptr, g,
                               x.dtype == DType::f64);
}

void max_pool2d_backward_cpu(const View& dy, const View& x, const Pool2d& p, const View& dx) {
  int64_t g[13];
  geometry(x, p, g);
  ::ox::scalar::max_pool2d_bwd(dy.data, x.data, dx.data, g, x.dtype == DType::f64);
}

}  // namespace ox
#endif
