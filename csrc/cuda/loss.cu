#include "core/cuda_check.h"
#include "cuda/device_math.cuh"
#include "loss.h"

namespace ox {
namespace {

constexpr int kThreads = 256;  // 8 warps per block, one row per warp
constexpr int kWarps = kThreads / 32;

template <class T> __device__ inline T warp_sum(T v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class T> __device__ inline T warp_max(T v) {  // NaN is skipped here and propagates through e^{x−m}
  for (int o = 16; o > 0; o /= 2) {
    const T u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  return v;
}

// Row statistics of C values at stride `inner`: lse = m + log Σ e^{x−m}, and Σ x.
template <class T> __device__ inline void row_lse(const T* x, int64_t C, int64_t inner, T* lse, T* sum_x) {
  const int lane = threadIdx.x & 31;
  T m = x[0];
  for (int64_t j = lane; j < C; j += 32) m = x[j * inner] > m ? x[j * inner] : m;
  m = warp_max(m);
  T s = 0, sx = 0;
  for (int64_t j = lane; j < C; j += 32) {
    s += exp_(x[j * inner] - m);
    sx += x[j * inner];
  }
  *lse = m + log_(warp_sum(s));
  *sum_x = warp_sum(sx);
}

unsigned row_blocks(int64_t rows) {
  const int64_t b = (rows + kWarps - 1) / kWarps;
  return static_cast<unsigned>(b < 65535 ? b : 65535);  // grid-stride over rows beyond that
}

// ℓ_i per row into `dst` (the output for 'none', else the workspace); NaN for an invalid target.
template <class T>
__global__ void ce_rows_kernel(const T* x, const int64_t* t, int64_t N, int64_t C, T keep, T smooth, bool smoothing,
                               int64_t ignore, T* dst) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int64_t i = blockIdx.x * int64_t(kWarps) + warp; i < N; i += int64_t(gridDim.x) * kWarps) {
    const T* xi = x + i * C;
    T lse, sum_x;
    row_lse(xi, C, 1, &lse, &sum_x);
    if (lane == 0) {
      const int64_t ti = t[i];
      T l = 0;
      // As on the CPU, the smoothing term only when ε ≠ 0: with a −inf logit (a masked class)
      // Σx is −inf, and 0·(−inf) would make the loss NaN.
      if (ti != ignore) l = (ti < 0 || ti >= C) ? T(NAN) : lse - keep * xi[ti] - (smoothing ? smooth * sum_x : T(0));
      dst[i] = l;
    }
  }
}

// One block: Σ ℓ_i (in double, fixed order) and, for 'mean', ÷ #valid targets.
template <class T>
__global__ void ce_reduce_kernel(const T* row_loss, const int64_t* t, int64_t N, int64_t ignore, bool mean, T* out) {
  __shared__ double sums[kThreads];
  __shared__ double counts[kThreads];
  double s = 0, c = 0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) {
    s += static_cast<double>(row_loss[i]);
    c += t[i] != ignore;
  }
  sums[threadIdx.x] = s;
  counts[threadIdx.x] = c;
  __syncthreads();
  for (int k = kThreads / 2; k > 0; k /= 2) {
    if (threadIdx.x < k) {
      sums[threadIdx.x] += sums[threadIdx.x + k];
      counts[threadIdx.x] += counts[threadIdx.x + k];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = static_cast<T>(mean ? sums[0] / counts[0] : sums[0]);
}

// One block: count of targets ≠ ignore_index into dst[0] (for the 'mean' backward).
template <class T> __global__ void count_valid_kernel(const int64_t* t, int64_t N, int64_t ignore, T* dst) {
  __shared__ int64_t counts[kThreads];
  int64_t c = 0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) c += t[i] != ignore;
  counts[threadIdx.x] = c;
  __syncthreads();
  for (int k = kThreads / 2; k > 0; k /= 2) {
    if (threadIdx.x < k) counts[threadIdx.x] += counts[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) dst[0] = static_cast<T>(counts[0]);
}

// dx_ij = s_i (e^{x_ij − lse_i} − (1−ε)[j = t_i] − ε/C); s_i from the reduction, 0 if ignored.
template <class T>
__global__ void ce_backward_kernel(const T* g, const T* x, const int64_t* t, int64_t N, int64_t C, T keep, T smooth,
                                   int64_t ignore, int reduction, const T* count, T* dx) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int64_t i = blockIdx.x * int64_t(kWarps) + warp; i < N; i += int64_t(gridDim.x) * kWarps) {
    const T* xi = x + i * C;
    T* di = dx + i * C;
    const int64_t ti = t[i];
    if (ti == ignore) {
      for (int64_t j = lane; j < C; j += 32) di[j] = 0;
      continue;
    }
    T lse, sum_x;
    row_lse(xi, C, 1, &lse, &sum_x);
    T s = reduction == 0 ? g[i] : (reduction == 2 ? g[0] : g[0] / count[0]);
    if (ti < 0 || ti >= C) s = T(NAN);
    for (int64_t j = lane; j < C; j += 32) di[j] = s * (exp_(xi[j] - lse) - (j == ti ? keep : T(0)) - smooth);
  }
}

// softmax / log_softmax rows of the (outer, C, inner) view, one warp per row.
template <class T> __global__ void softmax_kernel(const T* x, int64_t outer, int64_t C, int64_t inner, bool log, T* y) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int64_t q = blockIdx.x * int64_t(kWarps) + warp; q < outer * inner; q += int64_t(gridDim.x) * kWarps) {
    const int64_t base = (q / inner) * C * inner + q % inner;
    T lse, sum_x;
    row_lse(x + base, C, inner, &lse, &sum_x);
    for (int64_t j = lane; j < C; j += 32) {
      const T z = x[base + j * inner] - lse;
      y[base + j * inner] = log ? z : exp_(z);
    }
  }
}

// softmax: dx = y (g − Σ g y);  log_softmax: dx = g − e^{y} Σ g.
template <class T>
__global__ void softmax_backward_kernel(const T* g, const T* y, int64_t outer, int64_t C, int64_t inner, bool log,
                                        T* dx) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int64_t q = blockIdx.x * int64_t(kWarps) + warp; q < outer * inner; q += int64_t(gridDim.x) * kWarps) {
    const int64_t base = (q / inner) * C * inner + q % inner;
    T dot = 0;
    for (int64_t j = lane; j < C; j += 32) dot += log ? g[base + j * inner] : g[base + j * inner] * y[base + j * inner];
    dot = warp_sum(dot);
    for (int64_t j = lane; j < C; j += 32) {
      const int64_t k = base + j * inner;
      dx[k] = log ? g[k] - exp_(y[k]) * dot : y[k] * (g[k] - dot);
    }
  }
}

template <class T>
void ce_forward(const View& logits, const View& target, const CrossEntropy& ce, const View& out, const View& ws,
                cudaStream_t s) {
  const int64_t N = logits.ndim == 2 ? logits.shape[0] : 1, C = logits.size(-1);
  const T keep = T(1 - ce.label_smoothing), smooth = T(ce.label_smoothing / static_cast<double>(C));
  T* rows = ce.reduction == Reduction::none ? out.ptr<T>() : ws.ptr<T>();
  if (N > 0) {
    ce_rows_kernel<<<row_blocks(N), kThreads, 0, s>>>(logits.ptr<T>(), target.ptr<int64_t>(), N, C, keep, smooth,
                                                      ce.label_smoothing != 0, ce.ignore_index, rows);
    cuda_check_launch("cross_entropy");
  }
  if (ce.reduction != Reduction::none) {
    ce_reduce_kernel<<<1, kThreads, 0, s>>>(rows, target.ptr<int64_t>(), N, ce.ignore_index,
                                            ce.reduction == Reduction::mean, out.ptr<T>());
    cuda_check_launch("cross_entropy (reduce)");
  }
}

template <class T>
void ce_backward(const View& grad, const View& logits, const View& target, const CrossEntropy& ce, const View& dx,
                 const View& ws, cudaStream_t s) {
  const int64_t N = logits.ndim == 2 ? logits.shape[0] : 1, C = logits.size(-1);
  if (N == 0) return;
  const T keep = T(1 - ce.label_smoothing), smooth = T(ce.label_smoothing / static_cast<double>(C));
  if (ce.reduction == Reduction::mean) {
    count_valid_kernel<<<1, kThreads, 0, s>>>(target.ptr<int64_t>(), N, ce.ignore_index, ws.ptr<T>());
    cuda_check_launch("cross_entropy_backward (count)");
  }
  ce_backward_kernel<<<row_blocks(N), kThreads, 0, s>>>(grad.ptr<T>(), logits.ptr<T>(), target.ptr<int64_t>(), N, C,
                                                        keep, smooth, ce.ignore_index, static_cast<int>(ce.reduction),
                                                        ws.ptr<T>(), dx.ptr<T>());
  cuda_check_launch("cross_entropy_backward");
}

void split_dims(const View& x, int dim, int64_t* outer, int64_t* C, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int i = 0; i < dim; ++i) *outer *= x.shape[i];
  for (int i = dim + 1; i < x.ndim; ++i) *inner *= x.shape[i];
  *C = x.shape[dim];
}

}  // namespace

void cross_entropy_forward_cuda(const View& logits, const View& target, const CrossEntropy& ce, const View& out,
                                const View& workspace, uintptr_t stream) {
  if (logits.dtype == DType::f64) ce_forward<double>(logits, target, ce, out, workspace, as_stream(stream));
  else ce_forward<float>(logits, target, ce, out, workspace, as_stream(stream));
}

void cross_entropy_backward_cuda(const View& grad, const View& logits, const View& target, const CrossEntropy& ce,
                                 const View& dx, const View& workspace, uintptr_t stream) {
  if (logits.dtype == DType::f64) ce_backward<double>(grad, logits, target, ce, dx, workspace, as_stream(stream));
  else ce_backward<float>(grad, logits, target, ce, dx, workspace, as_stream(stream));
}

void softmax_forward_cuda(const View& x, int dim, bool log, const View& y, uintptr_t stream) {
  int64_t outer, C, inner;
  split_dims(x, dim, &outer, &C, &inner);
  if (outer * C * inner == 0) return;
  if (x.dtype == DType::f64)
    softmax_kernel<<<row_blocks(outer * inner), kThreads, 0, as_stream(stream)>>>(x.ptr<double>(), outer, C, inner,
                                                                                  log, y.ptr<double>());
  else
    softmax_kernel<<<row_blocks(outer * inner), kThreads, 0, as_stream(stream)>>>(x.ptr<float>(), outer, C, inner,
                                                                                  log, y.ptr<float>());
  cuda_check_launch(log ? "log_softmax" : "softmax");
}

void softmax_backward_cuda(const View& g, const View& y, int dim, bool log, const View& dx, uintptr_t stream) {
  int64_t outer, C, inner;
  split_dims(g, dim, &outer, &C, &inner);
  if (outer * C * inner == 0) return;
  if (g.dtype == DType::f64)
    softmax_backward_kernel<<<row_blocks(outer * inner), kThreads, 0, as_stream(stream)>>>(
        g.ptr<double>(), y.ptr<double>(), outer, C, inner, log, dx.ptr<double>());
  else
    softmax_backward_kernel<<<row_blocks(outer * inner), kThreads, 0, as_stream(stream)>>>(
        g.ptr<float>(), y.ptr<float>(), outer, C, inner, log, dx.ptr<float>());
  cuda_check_launch(log ? "log_softmax_backward" : "softmax_backward");
}

}  // namespace ox
