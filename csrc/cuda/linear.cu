// Linear layer on CUDA: products in gemm_cuda (bias/act epilogue, act'(y) prologue);
// db[n] = Σ_r dy[r, n] · act'(y[r, n]) here, rows summed in a fixed order.
#include "core/cuda_check.h"
#include "linear.h"

namespace ox {
namespace {

constexpr int COLS = 32, ROW_GROUPS = 8;

// Block (32 columns × 8 row groups): thread (c, r) sums rows r, r+8, ... in order,
// then the 8 partials of a column are added in group order.
template <class T>
__global__ void bias_grad_kernel(const T* dy, const T* y, Activation act, int64_t R, int64_t N, T* db) {
  __shared__ T part[ROW_GROUPS][COLS];
  const int c = threadIdx.x, r = threadIdx.y;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * COLS + c;
  T s = T(0);
  if (n < N)
    for (int64_t row = r; row < R; row += ROW_GROUPS) {
      T v = dy[row * N + n];
      if (act == Activation::relu) v = y[row * N + n] > T(0) ? v : T(0);
      else if (act == Activation::sigmoid) { const T o = y[row * N + n]; v *= o * (T(1) - o); }
      s += v;
    }
  part[r][c] = s;
  __syncthreads();
  if (r == 0 && n < N) {
    T total = T(0);
    for (int k = 0; k < ROW_GROUPS; ++k) total += part[k][c];
    db[n] = total;
  }
}

int64_t rows_of(const View& x) {
  int64_t r = 1;
  for (int i = 0; i + 1 < x.ndim; ++i) r *= x.shape[i];
  return r;
}

}  // namespace

void linear_cuda(const View& x, const View& w, const View* bias, Activation act, const View& y, uintptr_t stream,
                 const View* workspace) {
  gemm_cuda(linear_forward_gemm(x, w, bias, act, y), x.dtype, stream, workspace ? workspace->data : nullptr);
}

void linear_backward_cuda(const View& dy, const View& x, const View& w, const View* y, Activation act,
                          const View* dx, const View* dw, const View* db, uintptr_t stream, const View* workspace) {
  void* ws = workspace ? workspace->data : nullptr;  // the two products run in stream order: one workspace
  if (dx) gemm_cuda(linear_grad_x_gemm(dy, w, y, act, *dx), x.dtype, stream, ws);
  if (dw) gemm_cuda(linear_grad_w_gemm(dy, x, y, act, *dw), x.dtype, stream, ws);
  if (db) {
    const int64_t N = w.shape[0], R = rows_of(dy);
    if (N == 0) return;
    const dim3 block(COLS, ROW_GROUPS), grid(static_cast<unsigned>((N + COLS - 1) / COLS));
    const void* yd = act != Activation::none ? y->data : nullptr;
    if (x.dtype == DType::f64)
      bias_grad_kernel<<<grid, block, 0, as_stream(stream)>>>(dy.ptr<double>(), static_cast<const double*>(yd), act,
                                                              R, N, db->ptr<double>());
    else
      bias_grad_kernel<<<grid, block, 0, as_stream(stream)>>>(dy.ptr<float>(), static_cast<const float*>(yd), act, R,
                                                              N, db->ptr<float>());
    cuda_check_launch("linear_backward (bias grad)");
  }
}

}  // namespace ox
