// What the CUDA files of the linreg family share: the one-pass evaluation (linreg.cu) and the
// quadratic form of f built on the device (linreg_form.cu), both used by fit (linreg_fit.cu).
#pragma once
#include <cstdint>

#include "core/cuda_check.h"
#include "core/view.h"

namespace ox {

// f and/or ∇f at theta ((d+1,) or (B, d+1), X's dtype, on X's device) over all rows or `rows`, into
// grad / loss (either may be null); workspace: linreg_cuda_workspace_numel(m, d, B) float64 entries.
template <class T>
void linreg_evaluate_cuda(const View& X, const View& y, const View& theta, const View* rows, T* grad, T* loss,
                          const View& workspace, cudaStream_t stream, const char* op);

// f(θ) = f̂ + ĝᵀe + ½eᵀAe, ∇f(θ) = ĝ + Ae, e = θ − θ̂ (linreg_quadratic.h), all float64 on the device.
struct QuadraticFormDevice {
  const double* A;  // dim × dim, row-major
  const double* theta_ref;
  const double* g_ref;
  const double* f_ref;  // one value
  int64_t dim;
};

// float64 entries of workspace that quadratic_form_build_cuda needs for X of shape (n, d).
int64_t quadratic_form_workspace_numel(int64_t n, int64_t d);

// The same form as linreg_quadratic_build on the CPU, built on `stream` without a host sync: A by a
// tiled X̃ᵀX̃, θ̂ by the same Newton steps from 0. workspace: float64 on X's device, of at least
// quadratic_form_workspace_numel entries (the caller checks it); the returned pointers point into
// it, so it must outlive the kernels that read them.
template <class T>
QuadraticFormDevice quadratic_form_build_cuda(const View& X, const View& y, const View& workspace, cudaStream_t stream);

}  // namespace ox
