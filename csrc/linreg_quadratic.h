// fit over all rows by the quadratic form of f (CPU).
//
// f is quadratic in θ: for any reference point θ̂, with e = θ − θ̂ and A = (1/n) Σᵢ x̃ᵢx̃ᵢᵀ,
//   f(θ) = f(θ̂) + ĝᵀe + ½ eᵀAe,    ∇f(θ) = ĝ + Ae,    ĝ = ∇f(θ̂)          (exact)
// One pass over X builds A and three more evaluate f and ∇f on the way to θ̂ (Newton steps from 0);
// after that, f and ∇f over all rows cost O((d+1)²) per step instead of a pass over X. θ̂ sits at
// (or near) the minimiser, so f(θ̂) and ĝ carry a direct pass's precision, and ½eᵀAe (A ⪰ 0) sums
// terms of one sign: the loss falls to the floor a direct pass reaches, not to rounding of
// terms of the size of ‖y‖² (the cancellation of the textbook form ½θᵀAθ − θᵀc + ½‖y‖²/n).
// Everything here is float64, for float32 data too (f and ∇f rounded to the data's dtype).
#pragma once
#include <cstdint>
#include <vector>

#include "core/host_device.h"
#include "core/view.h"

namespace ox {

struct LinregQuadratic {
  int64_t dim = 0;  // d + 1
  std::vector<double> A;  // dim × dim, row-major
  std::vector<double> theta_ref, g_ref;
  double f_ref = 0;
};

// Whether the form pays for a fit of `steps` steps: A (dim ≤ 512) is at most 2 MB, a step's
// O(dim²) must undercut a pass's O(n·dim), and the build must cost less than the passes it saves:
// measured on the 2-core AVX-512 machine (float32 X, n = 10⁶, d = 100: a fit of 28 steps took
// 0.39–0.44 s by passes, one of 29 by the form 0.41–0.83 s over the session) it takes as long as
// ≈ dim/4 to dim/3 passes, plus the three on the way to θ̂.
inline bool linreg_quadratic_pays(int64_t n, int64_t d, int64_t steps) {
  const int64_t dim = d + 1;
  return dim <= 512 && dim <= n && steps >= dim / 3 + 4;
}

// ---- building blocks shared with the CUDA build (cuda/linreg_form.cu) -------------------------

// The Cholesky factor L of A + λI (dim × dim, row-major, lower) is found column by column; entry
// (i ≥ j) of column j needs only columns < j:
//   s = A[i,j] + λ·[i = j] − Σ_{k<j} L[i,k]·L[j,k],    L[j,j] = √s (s > 0 required),  L[i,j] = s / L[j,j].
OX_HD double cholesky_partial(const double* A, const double* L, int64_t dim, double lambda, int64_t i, int64_t j) {
  double s = A[i * dim + j] + (i == j ? lambda : 0.0);
  for (int64_t k = 0; k < j; ++k) s -= L[i * dim + k] * L[j * dim + k];
  return s;
}

// b ← (L Lᵀ)⁻¹ b: L z = b forward, then Lᵀ x = z backward.
OX_HD void cholesky_solve(const double* L, int64_t dim, double* b) {
  for (int64_t i = 0; i < dim; ++i) {
    for (int64_t k = 0; k < i; ++k) b[i] -= L[i * dim + k] * b[k];
    b[i] /= L[i * dim + i];
  }
  for (int64_t i = dim - 1; i >= 0; --i) {
    for (int64_t k = i + 1; k < dim; ++k) b[i] -= L[k * dim + i] * b[k];
    b[i] /= L[i * dim + i];
  }
}

// Collinear columns make A singular: its factor is then that of A + λI, with the smallest
// λ = ridge_scale(attempt)·max Aᵢᵢ that has one. Any θ̂ keeps the form exact; a near-minimiser
// only keeps its precision.
constexpr int kRidgeAttempts = 4;
OX_HD double ridge_scale(int attempt) { return attempt == 0 ? 0.0 : attempt == 1 ? 1e-12 : attempt == 2 ? 1e-9 : 1e-6; }

// X (n, d), y (n,): contiguous CPU arrays, float32 or float64, checked by the caller.
LinregQuadratic linreg_quadratic_build(const View& X, const View& y);

// f(θ), and ∇f(θ) into grad unless null; e: dim doubles of scratch. The loss, a mean of
// squares, is clamped at 0 (rounding could take the sum of the terms just below it).
template <class T>
static inline T linreg_quadratic_eval(const LinregQuadratic& q, const T* theta, T* grad, double* e) {
  const int64_t k = q.dim;
  for (int64_t c = 0; c < k; ++c) e[c] = static_cast<double>(theta[c]) - q.theta_ref[c];
  double linear = 0, quadratic = 0;
  for (int64_t r = 0; r < k; ++r) {
    const double* Ar = q.A.data() + r * k;
    double ae = 0;
    for (int64_t c = 0; c < k; ++c) ae += Ar[c] * e[c];
    if (grad) grad[r] = static_cast<T>(q.g_ref[r] + ae);
    linear += q.g_ref[r] * e[r];
    quadratic += e[r] * ae;
  }
  const double f = q.f_ref + linear + 0.5 * quadratic;
  return static_cast<T>(f > 0 ? f : 0);
}

}  // namespace ox
