#include <math_constants.h>

#include "core/cuda_check.h"
#include "pool.h"
#include "pool_window.h"

namespace ox {
namespace {

constexpr int kThreads = 256;

// Offset in the plane of output (i, j)'s winner (pool_window.h), −1 when no tap is inside.
template <class T> __device__ inline int64_t argmax_at(const T* plane, const PoolGeometry& g, int64_t i, int64_t j) {
  return window_argmax(plane, g, pool_taps(i, g.sh, g.ph, g.kh, g.dh, g.h), pool_taps(j, g.sw, g.pw, g.kw, g.dw, g.w));
}

// Output indices i whose window can hold input row hh: i·s − pad ≤ hh ≤ i·s − pad + dil(k − 1).
__device__ inline void windows_over(int64_t hh, int64_t s, int64_t pad, int64_t k, int64_t dil, int64_t out,
                                    int64_t* lo, int64_t* hi) {
  const int64_t n = hh + pad - dil * (k - 1);
  *lo = n > 0 ? (n + s - 1) / s : 0;
  *hi = min((hh + pad) / s, out - 1);
}

// One thread per output element; with idx, also the winner's offset in its plane (−1: none).
template <class T> __global__ void forward_kernel(const T* x, T* y, int64_t* idx, PoolGeometry g) {
  const int64_t total = g.planes * g.ho * g.wo;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = o / (g.ho * g.wo), r = o % (g.ho * g.wo);
    const T* plane = x + p * g.h * g.w;
    const int64_t pos = argmax_at(plane, g, r / g.wo, r % g.wo);
    y[o] = pos < 0 ? -CUDART_INF_F : plane[pos];
    if (idx) idx[o] = pos;
  }
}

// One thread per input element: gathers dy over the windows that contain it and
// chose it (recomputed), in window order; no atomics, deterministic, and the
// same summation order as the CPU kernel.
template <class T> __global__ void backward_kernel(const T* dy, const T* x, T* dx, PoolGeometry g) {
  const int64_t total = g.planes * g.h * g.w;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / (g.h * g.w), q = e % (g.h * g.w);
    const int64_t hh = q / g.w, ww = q % g.w;
    const T* plane = x + p * g.h * g.w;
    const T* grad = dy + p * g.ho * g.wo;
    int64_t i0, i1, j0, j1;
    windows_over(hh, g.sh, g.ph, g.kh, g.dh, g.ho, &i0, &i1);
    windows_over(ww, g.sw, g.pw, g.kw, g.dw, g.wo, &j0, &j1);
    T acc = 0;
    for (int64_t i = i0; i <= i1; ++i)
      for (int64_t j = j0; j <= j1; ++j)
        if (argmax_at(plane, g, i, j) == q) acc += grad[i * g.wo + j];
    dx[e] = acc;
  }
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 ? b : 65535);
}

}  // namespace

void max_pool2d_forward_cuda(const View& x, const Pool2d& p, const View& y, const View* indices, uintptr_t stream) {
  const PoolGeometry g = pool_geometry(x, p);
  const int64_t n = g.planes * g.ho * g.wo;
  if (n == 0) return;
  int64_t* idx = indices ? indices->ptr<int64_t>() : nullptr;
  if (x.dtype == DType::f64)
    forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(x.ptr<double>(), y.ptr<double>(), idx, g);
  else
    forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(x.ptr<float>(), y.ptr<float>(), idx, g);
  cuda_check_launch("max_pool2d");
}

void max_pool2d_backward_cuda(const View& dy, const View& x, const Pool2d& p, const View& dx, uintptr_t stream) {
  const PoolGeometry g = pool_geometry(x, p);
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
