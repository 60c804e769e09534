#include "core/cuda_check.h"
#include "pool.h"

namespace ox {
namespace {

constexpr int kThreads = 256;

struct Geometry {
  int64_t planes, h, w, ho, wo, kh, kw, sh, sw;
};

// torch's rule, as on the CPU: v replaces the running maximum when greater or NaN.
template <class T> __device__ inline bool takes_over(T v, T m) { return v > m || v != v; }

// Offset (within the plane) of the window's winner: row-major scan from its first entry.
template <class T> __device__ inline int64_t window_argmax(const T* plane, const Geometry& g, int64_t i, int64_t j) {
  const int64_t base = i * g.sh * g.w + j * g.sw;
  int64_t pos = base;
  T m = plane[base];
  for (int64_t a = 0; a < g.kh; ++a)
    for (int64_t b = 0; b < g.kw; ++b) {
      const int64_t q = base + a * g.w + b;
      if (takes_over(plane[q], m)) { m = plane[q]; pos = q; }
    }
  return pos;
}

// One thread per output element.
template <class T> __global__ void forward_kernel(const T* x, T* y, Geometry g) {
  const int64_t total = g.planes * g.ho * g.wo;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = o / (g.ho * g.wo), r = o % (g.ho * g.wo);
    const T* plane = x + p * g.h * g.w;
    y[o] = plane[window_argmax(plane, g, r / g.wo, r % g.wo)];
  }
}

// One thread per input element: gathers dy over the windows that contain it and
// chose it (recomputed), in window order; no atomics, deterministic, and the
// same summation order as the CPU kernel.
template <class T> __global__ void backward_kernel(const T* dy, const T* x, T* dx, Geometry g) {
  const int64_t total = g.planes * g.h * g.w;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / (g.h * g.w), q = e % (g.h * g.w);
    const int64_t hh = q / g.w, ww = q % g.w;
    const T* plane = x + p * g.h * g.w;
    const T* grad = dy + p * g.ho * g.wo;
    // windows i with i·sh ≤ hh < i·sh + kh, i.e. ⌈(hh−kh+1)/sh⌉ ≤ i ≤ ⌊hh/sh⌋
    const int64_t i0 = hh >= g.kh ? (hh - g.kh + g.sh) / g.sh : 0, i1 = min(hh / g.sh, g.ho - 1);
    const int64_t j0 = ww >= g.kw ? (ww - g.kw + g.sw) / g.sw : 0, j1 = min(ww / g.sw, g.wo - 1);
    T acc = 0;
    for (int64_t i = i0; i <= i1; ++i)
      for (int64_t j = j0; j <= j1; ++j)
        if (window_argmax(plane, g, i, j) == q) acc += grad[i * g.wo + j];
    dx[e] = acc;
  }
}

Geometry geometry(const View& x, const Pool2d& p) {
  const int64_t h = x.size(-2), w = x.size(-1);
  return Geometry{x.ndim == 4 ? x.shape[0] * x.shape[1] : x.shape[0], h, w, (h - p.kh) / p.sh + 1,
                  (w - p.kw) / p.sw + 1, p.kh, p.kw, p.sh, p.sw};
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 ? b : 65535);
}

}  // namespace

void max_pool2d_forward_cuda(const View& x, const Pool2d& p, const View& y, uintptr_t stream) {
  const Geometry g = geometry(x, p);
  const int64_t n = g.planes * g.ho * g.wo;
  if (n == 0) return;
  if (x.dtype == DType::f64)
    forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(x.ptr<double>(), y.ptr<double>(), g);
  else
    forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(x.ptr<float>(), y.ptr<float>(), g);
  cuda_check_launch("max_pool2d");
}

void max_pool2d_backward_cuda(const View& dy, const View& x, const Pool2d& p, const View& dx, uintptr_t stream) {
  const Geometry g = geometry(x, p);
  const int64_t n = g.planes * g.h * g.w;
  if (n == 0) return;
  if (x.dtype == DType::f64)
    backward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(dy.ptr<double>(), x.ptr<double>(),
                                                                      dx.ptr<double>(), g);
  else
    backward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(dy.ptr<float>(), x.ptr<float>(),
                                                                      dx.ptr<float>(), g);
  cuda_check_launch("max_pool2d_backward");
}

}  // namespace ox
