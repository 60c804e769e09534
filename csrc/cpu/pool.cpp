#include "pool.h"
#include "pool_window.h"

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

// The taps of every output row and column, computed once per call.
// (Taps is this ISA build's own type, so that the std::vector code is not one weak symbol shared
// with the other builds; see core/host_device.h.)
struct Taps : PoolTaps {};
struct Windows {
  std::vector<Taps> rows, cols;
  explicit Windows(const PoolGeometry& g) {
    for (int64_t i = 0; i < g.ho; ++i) rows.push_back(Taps{pool_taps(i, g.sh, g.ph, g.kh, g.dh, g.h)});
    for (int64_t j = 0; j < g.wo; ++j) cols.push_back(Taps{pool_taps(j, g.sw, g.pw, g.kw, g.dw, g.w)});
  }
};

// Any window: the maximum of its taps inside the plane under torch's rule, −inf for none.
// (Starting from −inf gives the value torch's scan from the first tap gives.)
template <class T> static void fwd_plane(const T* x, T* y, const PoolGeometry& g, const Windows& win) {
  const int64_t dh = g.dh, w = g.w, dw = g.dw;  // in registers across the stores to y (measured: 19 %)
  for (int64_t i = 0; i < g.ho; ++i) {
    const PoolTaps& r = win.rows[i];
    for (int64_t j = 0; j < g.wo; ++j) {
      const PoolTaps& c = win.cols[j];
      // Branch-free: the ordered maximum (maxss), and apart from it the last NaN, which wins.
      T m = -std::numeric_limits<T>::infinity(), nan = 0;
      bool any_nan = false;
      for (int64_t a = r.first; a < r.end; ++a) {
        const T* row = x + (r.start + a * dh) * w + c.start;
        for (int64_t b = c.first; b < c.end; ++b) {
          const T v = row[b * dw];
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
template <class T> static void fwd_plane_2x2(const T* x, T* y, const PoolGeometry& g) {
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

// Any window, with the winners' offsets in the plane (return_indices; −1 where no tap is inside).
template <class T>
static void fwd_plane_indices(const T* x, T* y, int64_t* idx, const PoolGeometry& g, const Windows& win) {
  for (int64_t i = 0; i < g.ho; ++i)
    for (int64_t j = 0; j < g.wo; ++j) {
      const int64_t pos = window_argmax(x, g, win.rows[i], win.cols[j]);
      y[i * g.wo + j] = pos < 0 ? -std::numeric_limits<T>::infinity() : x[pos];
      idx[i * g.wo + j] = pos;
    }
}

// Any window: zero the plane, then add each dy at its window's arg-max (none: no gradient), in
// window order so that overlapping windows accumulate deterministically.
template <class T> static void bwd_plane(const T* dy, const T* x, T* dx, const PoolGeometry& g, const Windows& win) {
  std::memset(dx, 0, sizeof(T) * g.h * g.w);
  for (int64_t i = 0; i < g.ho; ++i)
    for (int64_t j = 0; j < g.wo; ++j) {
      const int64_t pos = window_argmax(x, g, win.rows[i], win.cols[j]);
      if (pos >= 0) dx[pos] += dy[i * g.wo + j];
    }
}

// 2×2, stride 2: every covered element is written once (dy or 0); rows and
// columns outside every window (odd H or W) are zeroed.
template <class T> static void bwd_plane_2x2(const T* dy, const T* x, T* dx, const PoolGeometry& g) {
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
static bool is_2x2(const PoolGeometry& g) {
  return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 && g.dh == 1 && g.dw == 1 &&
         2 * g.ho <= g.h && 2 * g.wo <= g.w;
}

template <class T> static void fwd(const T* x, T* y, int64_t* idx, const PoolGeometry& g) {
  const bool fast = is_2x2(g) && !idx;
  const Windows win(fast ? PoolGeometry{} : g);
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

template <class T> static void bwd(const T* dy, const T* x, T* dx, const PoolGeometry& g) {
  const bool fast = is_2x2(g);
  const Windows win(fast ? PoolGeometry{} : g);
  const int64_t in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  const int64_t grain = in_plane >= kGrain ? 1 : kGrain / in_plane;
  parallel_for(g.planes, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      if (fast) bwd_plane_2x2(dy + p * out_plane, x + p * in_plane, dx + p * in_plane, g);
      else bwd_plane(dy + p * out_plane, x + p * in_plane, dx + p * in_plane, g, win);
    }
  });
}

void max_pool2d_fwd(const void* x, void* y, int64_t* idx, const PoolGeometry& g, bool f64) {
  if (f64) fwd(static_cast<const double*>(x), static_cast<double*>(y), idx, g);
  else fwd(static_cast<const float*>(x), static_cast<float*>(y), idx, g);
}

void max_pool2d_bwd(const void* dy, const void* x, void* dx, const PoolGeometry& g, bool f64) {
  if (f64) bwd(static_cast<const double*>(dy), static_cast<const double*>(x), static_cast<double*>(dx), g);
  else bwd(static_cast<const float*>(dy), static_cast<const float*>(x), static_cast<float*>(dx), g);
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include "core/checks.h"

OX_ISA_DECLARE(void, max_pool2d_fwd, (const void*, void*, int64_t*, const PoolGeometry&, bool))
OX_ISA_DECLARE(void, max_pool2d_bwd, (const void*, const void*, void*, const PoolGeometry&, bool))

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

void max_pool2d_check_indices(const char* op, const View& indices, const View& y) {
  check_same_device(op, "indices", indices, "out", y);
  check_dtype(op, "indices", indices, {DType::i64});
  check_same_shape(op, "indices", indices, y);
  check_contiguous(op, "indices", indices);
  check_writable(op, "indices", indices);
}

// Always the baseline (SSE2) build: on the AMD EPYC this was tuned on, GCC's
// AVX2 / AVX-512 vectorisations of the stride-2 window loops (permutes, masked
// epilogues) measured 10–40× slower than the SSE2 code (e.g. 2x2 backward on
// (64,6,28,28): 2.7 ms AVX-512, 0.11 ms AVX2, 0.07–0.15 ms SSE2; forward
// 1.0 ms AVX-512 vs 0.05 ms). Revisit with hand-written intrinsics.
void max_pool2d_forward_cpu(const View& x, const Pool2d& p, const View& y, const View* indices) {
  ::ox::scalar::max_pool2d_fwd(x.data, y.data, indices ? indices->ptr<int64_t>() : nullptr, pool_geometry(x, p),
                               x.dtype == DType::f64);
}

void max_pool2d_backward_cpu(const View& dy, const View& x, const Pool2d& p, const View& dx) {
  ::ox::scalar::max_pool2d_bwd(dy.data, x.data, dx.data, pool_geometry(x, p), x.dtype == DType::f64);
}

}  // namespace ox
#endif
