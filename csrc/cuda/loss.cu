#include "core/cuda_check.h"
#include "cuda/device_math.cuh"
#include "loss.h"
#include "loss_targets.h"

namespace ox {
namespace {

constexpr int kThreads = 256;  // 8 warps per block, one row per warp
constexpr int kWarps = kThreads / 32;

template <class T> __device__ inline T warp_max(T v) {  // NaN is skipped here and propagates through e^{x−m}
  for (int o = 16; o > 0; o /= 2) {
    const T u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  return v;
}

// Row statistics of C values at stride `inner`: lse = m + log Σ e^{x−m}.
template <class T> __device__ inline T row_lse(const T* x, int64_t C, int64_t inner) {
  const int lane = threadIdx.x & 31;
  T m = x[0];
  for (int64_t j = lane; j < C; j += 32) m = x[j * inner] > m ? x[j * inner] : m;
  m = warp_max(m);
  T s = 0;
  for (int64_t j = lane; j < C; j += 32) s += exp_(x[j * inner] - m);
  return m + log_(warp_sum(s));
}

unsigned row_blocks(int64_t rows) {
  const int64_t b = (rows + kWarps - 1) / kWarps;
  return static_cast<unsigned>(b < 65535 ? b : 65535);  // grid-stride over rows beyond that
}

// The rows' targets in loss.h's general form: class indices or probabilities, with class
// weights or without.
template <class T> struct RowTargets {
  const int64_t* index;  // (N,) class targets, or nullptr for probabilities
  const T* probs;        // (N, C) class probabilities, or nullptr
  const T* weight;       // (C,) class weights, or nullptr (all 1)
  int64_t C, ignore;
  T keep, smooth;  // 1 − ε, ε/C
  bool smoothing;  // ε ≠ 0

  __device__ T w(int64_t j) const { return weight ? weight[j] : T(1); }
  __device__ bool ignored(int64_t i) const { return index && index[i] == ignore; }
  __device__ bool out_of_range(int64_t i) const { return index && !ignored(i) && (index[i] < 0 || index[i] >= C); }
  // b_ij (loss_targets.h): for class targets the smoothing part plus, at j = t, (1 − ε) w_t.
  __device__ T b(int64_t i, int64_t j) const {
    if (probs) return probability_coefficient(w(j), probs[i * C + j], keep, smooth);
    return smooth * w(j) + (j == index[i] ? keep * w(j) : T(0));
  }
  // What 'mean' divides by, row i's share: w_{t_i} (0 if ignored or out of range), 1 for probabilities.
  __device__ double divisor_share(int64_t i) const {
    return index ? class_target_divisor_share(index[i], ignore, C, weight) : 1.0;
  }
};

template <class T> struct RowTerms {
  T lse, mass, bx;  // lse_i, A_i = Σ_j b_ij, Σ_j b_ij x_ij
};

// One warp: the terms of row i (neither ignored nor out of range) of ℓ_i = A_i lse_i − Σ_j b_ij x_ij.
template <class T> __device__ RowTerms<T> row_terms(const T* xi, int64_t i, const RowTargets<T>& tg) {
  const int lane = threadIdx.x & 31;
  const int64_t C = tg.C;
  T m = xi[0];
  for (int64_t j = lane; j < C; j += 32) m = xi[j] > m ? xi[j] : m;
  m = warp_max(m);
  // Per lane: Σ e^{x−m}; probabilities: Σ b and Σ b x; class targets: Σ w and (only when ε ≠ 0:
  // with a −inf logit, a masked class, 0·(−inf) would make the loss NaN) Σ w x.
  T s = 0, mass = 0, bx = 0;
  for (int64_t j = lane; j < C; j += 32) {
    const T v = xi[j];
    s += exp_(v - m);
    if (tg.probs) {
      const T b = tg.b(i, j);
      mass += b;
      bx += b * v;
    } else {
      if (tg.weight) mass += tg.weight[j];
      if (tg.smoothing) bx += tg.w(j) * v;
    }
  }
  RowTerms<T> r{m + log_(warp_sum(s)), warp_sum(mass), warp_sum(bx)};
  if (tg.index) {
    const int64_t t = tg.index[i];
    const T wt = tg.w(t);
    r.mass = tg.weight ? class_target_mass(wt, r.mass, tg.keep, tg.smooth) : T(1);
    r.bx = tg.keep * wt * xi[t] + (tg.smoothing ? tg.smooth * r.bx : T(0));
  }
  return r;
}

// ℓ_i per row into `dst` (the output for 'none', else the workspace): 0 where ignored, NaN for
// a class outside [0, C).
template <class T> __global__ void ce_rows_kernel(const T* x, RowTargets<T> tg, int64_t N, T* dst) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int64_t i = blockIdx.x * int64_t(kWarps) + warp; i < N; i += int64_t(gridDim.x) * kWarps) {
    if (tg.ignored(i) || tg.out_of_range(i)) {  // the same for the whole warp
      if (lane == 0) dst[i] = tg.ignored(i) ? T(0) : T(NAN);
      continue;
    }
    const RowTerms<T> r = row_terms(x + i * tg.C, i, tg);
    if (lane == 0) dst[i] = r.mass * r.lse - r.bx;
  }
}

// One block, in double and a fixed order: the divisor of 'mean' (Σ_i divisor_share(i)) into
// *divisor when given, and Σ ℓ_i (÷ the divisor if mean) into *loss when given.
template <class T>
__global__ void ce_sums_kernel(const T* row_loss, RowTargets<T> tg, int64_t N, bool mean, T* loss, T* divisor) {
  __shared__ double sums[kThreads];
  __shared__ double shares[kThreads];
  double s = 0, d = 0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) {
    if (row_loss) s += static_cast<double>(row_loss[i]);
    d += tg.divisor_share(i);
  }
  sums[threadIdx.x] = s;
  shares[threadIdx.x] = d;
  __syncthreads();
  for (int k = kThreads / 2; k > 0; k /= 2) {
    if (threadIdx.x < k) {
      sums[threadIdx.x] += sums[threadIdx.x + k];
      shares[threadIdx.x] += shares[threadIdx.x + k];
    }
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  if (loss) loss[0] = static_cast<T>(mean ? sums[0] / shares[0] : sums[0]);
  if (divisor) divisor[0] = static_cast<T>(shares[0]);
}

// dx_ij = s_i (A_i e^{x_ij − lse_i} − b_ij); s_i = g_i (none), g (sum), g / divisor (mean);
// 0 where ignored, NaN for a class outside [0, C).
template <class T>
__global__ void ce_backward_kernel(const T* g, const T* x, RowTargets<T> tg, int64_t N, int reduction,
                                   const T* divisor, T* dx) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t C = tg.C;
  for (int64_t i = blockIdx.x * int64_t(kWarps) + warp; i < N; i += int64_t(gridDim.x) * kWarps) {
    const T* xi = x + i * C;
    T* di = dx + i * C;
    if (tg.ignored(i) || tg.out_of_range(i)) {
      const T fill = tg.ignored(i) ? T(0) : T(NAN);
      for (int64_t j = lane; j < C; j += 32) di[j] = fill;
      continue;
    }
    const RowTerms<T> r = row_terms(xi, i, tg);
    const T s = reduction == 0 ? g[i] : (reduction == 2 ? g[0] : g[0] / divisor[0]);
    for (int64_t j = lane; j < C; j += 32) di[j] = s * (r.mass * exp_(xi[j] - r.lse) - tg.b(i, j));
  }
}

// softmax / log_softmax rows of the (outer, C, inner) view, one warp per row.
template <class T> __global__ void softmax_kernel(const T* x, int64_t outer, int64_t C, int64_t inner, bool log, T* y) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int64_t q = blockIdx.x * int64_t(kWarps) + warp; q < outer * inner; q += int64_t(gridDim.x) * kWarps) {
    const int64_t base = (q / inner) * C * inner + q % inner;
    const T lse = row_lse(x + base, C, inner);
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

template <class T> RowTargets<T> row_targets(const View& target, const CrossEntropy& ce, int64_t C) {
  const bool probs = is_probability_target(target);
  return RowTargets<T>{probs ? nullptr : target.ptr<int64_t>(),
                       probs ? target.ptr<T>() : nullptr,
                       ce.weight ? ce.weight->ptr<T>() : nullptr,
                       C,
                       ce.ignore_index,
                       T(1 - ce.label_smoothing),
                       T(ce.label_smoothing / static_cast<double>(C)),
                       ce.label_smoothing != 0};
}

template <class T>
void ce_forward(const View& logits, const View& target, const CrossEntropy& ce, const View& out, const View& ws,
                cudaStream_t s) {
  const int64_t N = logits.ndim == 2 ? logits.shape[0] : 1, C = logits.size(-1);
  const RowTargets<T> tg = row_targets<T>(target, ce, C);
  T* rows = ce.reduction == Reduction::none ? out.ptr<T>() : ws.ptr<T>();
  if (N > 0) {
    ce_rows_kernel<<<row_blocks(N), kThreads, 0, s>>>(logits.ptr<T>(), tg, N, rows);
    cuda_check_launch("cross_entropy");
  }
  if (ce.reduction != Reduction::none) {
    ce_sums_kernel<<<1, kThreads, 0, s>>>(rows, tg, N, ce.reduction == Reduction::mean, out.ptr<T>(),
                                          static_cast<T*>(nullptr));
    cuda_check_launch("cross_entropy (reduce)");
  }
}

template <class T>
void ce_backward(const View& grad, const View& logits, const View& target, const CrossEntropy& ce, const View& dx,
                 const View& ws, cudaStream_t s) {
  const int64_t N = logits.ndim == 2 ? logits.shape[0] : 1, C = logits.size(-1);
  if (N == 0) return;
  const RowTargets<T> tg = row_targets<T>(target, ce, C);
  if (ce.reduction == Reduction::mean) {
    ce_sums_kernel<<<1, kThreads, 0, s>>>(static_cast<const T*>(nullptr), tg, N, true, static_cast<T*>(nullptr),
                                          ws.ptr<T>());
    cuda_check_launch("cross_entropy_backward (divisor)");
  }
  ce_backward_kernel<<<row_blocks(N), kThreads, 0, s>>>(grad.ptr<T>(), logits.ptr<T>(), tg, N,
                                                        static_cast<int>(ce.reduction), ws.ptr<T>(), dx.ptr<T>());
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
