#include "core/cuda_check.h"
#include "linreg.h"

namespace ox {
namespace {

// One block per output entry grad[b, c]; rows reduced in a fixed order.
template <class T>
__global__ void grad_entry_kernel(const T* X, const T* y, const T* theta, const int64_t* rows, int64_t m,
                                  int64_t d, T* grad) {
  const int64_t b = blockIdx.y, c = blockIdx.x, stride = d + 1;
  const T* th = theta + b * stride;
  T acc = 0;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    const int64_t i = rows ? rows[j] : j;
    const T* x = X + i * d;
    T r = th[d] - y[i];
    for (int64_t k = 0; k < d; ++k) r += th[k] * x[k];
    acc += r * (c < d ? x[c] : T(1));
  }
  __shared__ T part[256];
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad[b * stride + c] = part[0] / static_cast<T>(m);
}

}  // namespace

void linreg_grad_cuda(const View& X, const View& y, const View& theta, const View* rows, const View& grad,
                      uintptr_t stream) {
  const int64_t B = theta.ndim == 2 ? theta.shape[0] : 1;
  const int64_t m = rows ? rows->shape[0] : X.shape[0], d = X.shape[1];
  dim3 grid(static_cast<unsigned>(d + 1), static_cast<unsigned>(B));
  const int64_t* r = rows ? rows->ptr<int64_t>() : nullptr;
  if (X.dtype == DType::f64)
    grad_entry_kernel<<<grid, 256, 0, as_stream(stream)>>>(X.ptr<double>(), y.ptr<double>(), theta.ptr<double>(),
                                                          r, m, d, grad.ptr<double>());
  else
    grad_entry_kernel<<<grid, 256, 0, as_stream(stream)>>>(X.ptr<float>(), y.ptr<float>(), theta.ptr<float>(),
                                                          r, m, d, grad.ptr<float>());
  cuda_check_launch("linreg_grad");
}

}  // namespace ox
