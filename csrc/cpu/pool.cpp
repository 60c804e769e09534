#include "pool.h"

#include <cstdint>
#include <cstring>

#include "core/isa.h"
#include "core/threading.h"

namespace ox {
namespace OX_ISA {

// Input elements per parallel task (whole planes are never split).
constexpr int64_t kGrain = 16384;

// torch's rule for the running maximum: take v when it is greater or NaN.
template <class T> static inline bool takes_over(T v, T m) { return v > m || v != v; }

struct Geometry {
  int64_t planes, h, w, ho, wo, kh, kw, sh, sw;
};

// Any window: y = max over the window, scanned row-major.
template <class T> static void fwd_plane(const T* x, T* y, const Geometry& g) {
  for (int64_t i = 0; i < g.ho; ++i)
    for (int64_t j = 0; j < g.wo; ++j) {
      const T* win = x + i * g.sh * g.w + j * g.sw;
      T m = win[0];
      for (int64_t a = 0; a < g.kh; ++a)
        for (int64_t b = 0; b < g.kw; ++b) {
          const T v = win[a * g.w + b];
          m = takes_over(v, m) ? v : m;
        }
      y[i * g.wo + j] = m;
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

// Any window: zero the plane, then add each dy at its window's arg-max (in
// window order, so overlapping windows accumulate deterministically).
template <class T> static void bwd_plane(const T* dy, const T* x, T* dx, const Geometry& g) {
  std::memset(dx, 0, sizeof(T) * g.h * g.w);
  for (int64_t i = 0; i < g.ho; ++i)
    for (int64_t j = 0; j < g.wo; ++j) {
      const int64_t base = i * g.sh * g.w + j * g.sw;
      int64_t pos = base;
      T m = x[base];
      for (int64_t a = 0; a < g.kh; ++a)
        for (int64_t b = 0; b < g.kw; ++b) {
          const int64_t q = base + a * g.w + b;
          if (takes_over(x[q], m)) { m = x[q]; pos = q; }
        }
      dx[pos] += dy[i * g.wo + j];
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

template <class T> static void fwd(const T* x, T* y, const Geometry& g) {
  const bool is_2x2 = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2;
  const int64_t in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  const int64_t grain = in_plane >= kGrain ? 1 : kGrain / in_plane;
  parallel_for(g.planes, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      if (is_2x2) fwd_plane_2x2(x + p * in_plane, y + p * out_plane, g);
      else fwd_plane(x + p * in_plane, y + p * out_plane, g);
    }
  });
}

template <class T> static void bwd(const T* dy, const T* x, T* dx, const Geometry& g) {
  const bool is_2x2 = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2;
  const int64_t in_plane = g.h * g.w, out_plane = g.ho * g.wo;
  const int64_t grain = in_plane >= kGrain ? 1 : kGrain / in_plane;
  parallel_for(g.planes, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      if (is_2x2) bwd_plane_2x2(dy + p * out_plane, x + p * in_plane, dx + p * in_plane, g);
      else bwd_plane(dy + p * out_plane, x + p * in_plane, dx + p * in_plane, g);
    }
  });
}

void max_pool2d_fwd(const void* x, void* y, const int64_t* geom, bool f64) {
  const Geometry g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7], geom[8]};
  if (f64) fwd(static_cast<const double*>(x), static_cast<double*>(y), g);
  else fwd(static_cast<const float*>(x), static_cast<float*>(y), g);
}

void max_pool2d_bwd(const void* dy, const void* x, void* dx, const int64_t* geom, bool f64) {
  const Geometry g{geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7], geom[8]};
  if (f64) bwd(static_cast<const double*>(dy), static_cast<const double*>(x), static_cast<double*>(dx), g);
  else bwd(static_cast<const float*>(dy), static_cast<const float*>(x), static_cast<float*>(dx), g);
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include "core/checks.h"

OX_ISA_DECLARE(void, max_pool2d_fwd, (const void*, void*, const int64_t*, bool))
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
  const int64_t h = x.size(-2), w = x.size(-1);
  if (h < p.kh || w < p.kw)
    value_error(op, ": argument 'kernel_size' (", p.kh, ", ", p.kw, ") is larger than the input plane (", h,
                ", ", w, ") of 'x' with shape ", shape_str(x));
  *ho = (h - p.kh) / p.sh + 1;
  *wo = (w - p.kw) / p.sw + 1;
}

void max_pool2d_check_out(const char* op, const char* arg, const View& y, const View& x, int64_t ho, int64_t wo) {
  if (x.ndim == 4) check_output(op, arg, y, x, {x.shape[0], x.shape[1], ho, wo});
  else check_output(op, arg, y, x, {x.shape[0], ho, wo});
}

static void geometry(const View& x, const Pool2d& p, int64_t* g) {
  const int64_t h = x.size(-2), w = x.size(-1);
  g[0] = x.ndim == 4 ? x.shape[0] * x.shape[1] : x.shape[0];
  g[1] = h;
  g[2] = w;
  g[3] = (h - p.kh) / p.sh + 1;
  g[4] = (w - p.kw) / p.sw + 1;
  g[5] = p.kh;
  g[6] = p.kw;
  g[7] = p.sh;
  g[8] = p.sw;
}

// Always the baseline (SSE2) build: on the AMD EPYC this was tuned on, GCC's
// AVX2 / AVX-512 vectorisations of the stride-2 window loops (permutes, masked
// epilogues) measured 10–40× slower than the SSE2 code (e.g. 2x2 backward on
// (64,6,28,28): 2.7 ms AVX-512, 0.11 ms AVX2, 0.07–0.15 ms SSE2; forward
// 1.0 ms AVX-512 vs 0.05 ms). Revisit with hand-written intrinsics.
void max_pool2d_forward_cpu(const View& x, const Pool2d& p, const View& y) {
  int64_t g[9];
  geometry(x, p, g);
  ::ox::scalar::max_pool2d_fwd(x.data, y.data, g, x.dtype == DType::f64);
}

void max_pool2d_backward_cpu(const View& dy, const View& x, const Pool2d& p, const View& dx) {
  int64_t g[9];
  geometry(x, p, g);
  ::ox::scalar::max_pool2d_bwd(dy.data, x.data, dx.data, g, x.dtype == DType::f64);
}

}  // namespace ox
#endif
