#include "activation.h"
#include "core/cuda_check.h"
#include "cuda/device_math.cuh"

namespace ox {
namespace {

constexpr int kThreads = 256;

template <class T> __global__ void forward_kernel(bool relu, const T* x, T* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = relu ? relu1(x[i]) : sigmoid1(x[i]);
}

// relu: dx = y > 0 ? g : 0 (g where y is NaN); sigmoid: dx = g·y·(1 − y).
template <class T> __global__ void backward_kernel(bool relu, const T* g, const T* y, T* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = relu ? (y[i] <= T(0) ? T(0) : g[i]) : g[i] * y[i] * (T(1) - y[i]);
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 ? b : 65535);  // grid-stride loops cover the rest
}

}  // namespace

void activation_forward_cuda(Activation act, const View& x, const View& y, uintptr_t stream) {
  const int64_t n = x.numel();
  if (n == 0) return;
  const bool a = act == Activation::relu;
  if (x.dtype == DType::f64)
    forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(a, x.ptr<double>(), y.ptr<double>(), n);
  else
    forward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(a, x.ptr<float>(), y.ptr<float>(), n);
  cuda_check_launch(act == Activation::relu ? "relu" : "sigmoid");
}

void activation_backward_cuda(Activation act, const View& g, const View& y, const View& dx, uintptr_t stream) {
  const int64_t n = g.numel();
  if (n == 0) return;
  const bool a = act == Activation::relu;
  if (g.dtype == DType::f64)
    backward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(a, g.ptr<double>(), y.ptr<double>(),
                                                                      dx.ptr<double>(), n);
  else
    backward_kernel<<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(a, g.ptr<float>(), y.ptr<float>(),
                                                                      dx.ptr<float>(), n);
  cuda_check_launch(act == Activation::relu ? "relu_backward" : "sigmoid_backward");
}

}  // namespace ox
