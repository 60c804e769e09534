#include "linreg.h"

#include <cstdint>

#include "core/isa.h"
#include "core/threading.h"

namespace ox {
namespace OX_ISA {

// grad[b] = 1/m Σ_i r_ib x̃_i with r_ib = θ_bᵀx̃_i − y_i, over a fixed split of
// the rows into at most kBlocks blocks (partials summed in block order, so the
// result does not depend on the thread count).
template <class T>
static void grad_kernel(const T* X, const T* y, const T* theta, const int64_t* rows, int64_t m,
                        int64_t d, int64_t B, T* grad) {
  constexpr int64_t kBlocks = 64;
  const int64_t stride = d + 1;
  int64_t block = (m + kBlocks - 1) / kBlocks;
  if (block < 256) block = 256;
  const int64_t nblocks = (m + block - 1) / block;
  T* partial = new T[nblocks * B * stride]();
  for_each_block(m, block, [&](int64_t k, int64_t begin, int64_t end) {
    T* acc = partial + k * B * stride;
    for (int64_t j = begin; j < end; ++j) {
      const int64_t i = rows ? rows[j] : j;
      const T* x = X + i * d;
      for (int64_t b = 0; b < B; ++b) {
        const T* th = theta + b * stride;
        T r = th[d] - y[i];
        for (int64_t c = 0; c < d; ++c) r += th[c] * x[c];
        T* g = acc + b * stride;
        for (int64_t c = 0; c < d; ++c) g[c] += r * x[c];
        g[d] += r;
      }
    }
  });
  const T scale = T(1) / static_cast<T>(m);
  for (int64_t e = 0; e < B * stride; ++e) {
    T s = 0;
    for (int64_t k = 0; k < nblocks; ++k) s += partial[k * B * stride + e];
    grad[e] = s * scale;
  }
  delete[] partial;
}

void linreg_grad(const void* X, const void* y, const void* theta, const int64_t* rows, int64_t m,
                 int64_t d, int64_t B, void* grad, bool f64) {
  if (f64)
    grad_kernel(static_cast<const double*>(X), static_cast<const double*>(y),
                static_cast<const double*>(theta), rows, m, d, B, static_cast<double*>(grad));
  else
    grad_kernel(static_cast<const float*>(X), static_cast<const float*>(y),
                static_cast<const float*>(theta), rows, m, d, B, static_cast<float*>(grad));
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include "core/checks.h"

OX_ISA_DECLARE(void, linreg_grad, (const void*, const void*, const void*, const int64_t*, int64_t, int64_t,
                                   int64_t, void*, bool))

namespace ox {

void linreg_check(const char* op, const View& X, const View& y, const View& theta, const View* rows,
                  const View& out, bool is_grad) {
  check_dtype(op, "X", X, {DType::f32, DType::f64});
  check_rank(op, "X", X, 2);
  check_contiguous(op, "X", X);
  const int64_t n = X.shape[0], d = X.shape[1];
  check_like(op, "y", y, "X", X);
  check_shape(op, "y", y, {n});
  check_like(op, "theta", theta, "X", X);
  check_rank_between(op, "theta", theta, 1, 2);
  if (theta.size(-1) != d + 1)
    value_error(op, ": argument 'theta' must have d+1 = ", d + 1, " entries in its last dimension (X has d = ",
                d, " columns), got shape ", shape_str(theta));
  if (rows) {
    check_same_device(op, "rows", *rows, "X", X);
    check_dtype(op, "rows", *rows, {DType::i64});
    check_rank(op, "rows", *rows, 1);
    check_contiguous(op, "rows", *rows);
  }
  const int64_t m = rows ? rows->shape[0] : n;
  if (m == 0) value_error(op, ": ", rows ? "argument 'rows' is empty" : "argument 'X' has no rows",
                          "; the mean over no samples is undefined");
  if (is_grad) {
    if (theta.ndim == 1) check_output(op, "out", out, X, {d + 1});
    else check_output(op, "out", out, X, {theta.shape[0], d + 1});
  } else {
    if (theta.ndim == 1) check_output(op, "out", out, X, {});
    else check_output(op, "out", out, X, {theta.shape[0]});
  }
  if (rows && rows->device == Device::cpu) {
    const int64_t* r = rows->ptr<int64_t>();
    for (int64_t j = 0; j < m; ++j)
      if (r[j] < 0 || r[j] >= n)
        value_error(op, ": argument 'rows' holds index ", r[j], " at position ", j, ", outside [0, ", n, ")");
  }
}

void linreg_grad_cpu(const View& X, const View& y, const View& theta, const View* rows, const View& grad) {
  const int64_t B = theta.ndim == 2 ? theta.shape[0] : 1;
  const int64_t m = rows ? rows->shape[0] : X.shape[0];
  OX_ISA_DISPATCH(linreg_grad, X.data, y.data, theta.data, rows ? rows->ptr<int64_t>() : nullptr, m,
                  X.shape[1], B, grad.data, X.dtype == DType::f64);
}

}  // namespace ox
#endif
