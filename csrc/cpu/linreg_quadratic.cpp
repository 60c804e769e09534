// Builds the quadratic form of linreg_quadratic.h. Not per ISA: the work is our GEMM's and the
// linreg kernels', which dispatch themselves.
#include "core/isa.h"

#if OX_ISA_IS_scalar
#include <algorithm>
#include <cmath>

#include "gemm.h"
#include "linreg_quadratic.h"

OX_ISA_DECLARE(void, linreg_eval, (const void*, const void*, const void*, const int64_t*, int64_t, int64_t, int64_t,
                                   void*, void*, bool))

namespace ox {

// A = (1/n) Σᵢ x̃ᵢx̃ᵢᵀ, x̃ᵢ = [xᵢ, 1]: blocks of rows widened to float64 with their 1, each block's
// product added in block order (our GEMM sums in a fixed order whatever the thread count).
template <class T> static void accumulate_gram(const T* X, int64_t n, int64_t d, double* A) {
  const int64_t dim = d + 1, rows = std::max<int64_t>(256, 65536 / dim);
  std::vector<double> block(static_cast<size_t>(std::min(rows, n) * dim));
  for (int64_t i0 = 0; i0 < n; i0 += rows) {
    const int64_t r = std::min(rows, n - i0);
    for (int64_t i = 0; i < r; ++i) {
      const T* xi = X + (i0 + i) * d;
      double* bi = block.data() + i * dim;
      for (int64_t c = 0; c < d; ++c) bi[c] = static_cast<double>(xi[c]);
      bi[d] = 1.0;
    }
    GemmArgs g;
    g.M = g.N = dim;
    g.K = r;
    g.A = block.data();  // blockᵀ: A[m, k] = block[k, m]
    g.a_rs = 1;
    g.a_cs = dim;
    g.B = block.data();
    g.b_rs = dim;
    g.b_cs = 1;
    g.C = A;
    g.c_rs = dim;
    g.alpha = 1.0 / static_cast<double>(n);
    g.beta = i0 == 0 ? 0.0 : 1.0;
    gemm_cpu(g, DType::f64);
  }
}

// L with A + λI = LLᵀ (linreg_quadratic.h); false if a pivot is not positive.
static bool cholesky(const std::vector<double>& A, int64_t dim, double lambda, std::vector<double>& L) {
  L.assign(A.size(), 0.0);
  for (int64_t j = 0; j < dim; ++j) {
    for (int64_t i = j; i < dim; ++i) {
      const double s = cholesky_partial(A.data(), L.data(), dim, lambda, i, j);
      if (i == j) {
        if (!(s > 0)) return false;
        L[j * dim + j] = std::sqrt(s);
      } else {
        L[i * dim + j] = s / L[j * dim + j];
      }
    }
  }
  return true;
}

// The factor of A, or of A plus the first ridge that has one.
static bool factor(const LinregQuadratic& q, std::vector<double>& L) {
  double diag = 0;
  for (int64_t i = 0; i < q.dim; ++i) diag = std::max(diag, q.A[i * q.dim + i]);
  for (int attempt = 0; attempt < kRidgeAttempts; ++attempt)
    if (cholesky(q.A, q.dim, ridge_scale(attempt) * diag, L)) return true;
  return false;
}

// θ̂ by up to two Newton steps from 0, θ ← θ − A⁻¹∇f(θ) (the second corrects the first's
// rounding), each kept only if it lowers f; f(θ̂) and ĝ by a direct pass over X.
template <class T> static void reference_point(const View& X, const View& y, LinregQuadratic& q) {
  const int64_t n = X.shape[0], d = X.shape[1], dim = q.dim;
  const bool f64 = X.dtype == DType::f64;
  auto evaluate = [&](const std::vector<T>& theta, std::vector<T>& grad, T& loss) {
    OX_ISA_DISPATCH(linreg_eval, X.data, y.data, static_cast<const void*>(theta.data()),
                    static_cast<const int64_t*>(nullptr), n, d, int64_t(1), static_cast<void*>(grad.data()),
                    static_cast<void*>(&loss), f64);
  };
  std::vector<T> theta(dim, T(0)), grad(dim), next(dim), next_grad(dim);
  T loss, next_loss;
  evaluate(theta, grad, loss);
  std::vector<double> L;
  if (factor(q, L)) {
    for (int newton = 0; newton < 2; ++newton) {
      std::vector<double> step(grad.begin(), grad.end());
      cholesky_solve(L.data(), dim, step.data());
      for (int64_t c = 0; c < dim; ++c) next[c] = static_cast<T>(static_cast<double>(theta[c]) - step[c]);
      evaluate(next, next_grad, next_loss);
      if (!(next_loss < loss)) break;
      theta.swap(next);
      grad.swap(next_grad);
      loss = next_loss;
    }
  }
  q.theta_ref.assign(theta.begin(), theta.end());
  q.g_ref.assign(grad.begin(), grad.end());
  q.f_ref = static_cast<double>(loss);
}

LinregQuadratic linreg_quadratic_build(const View& X, const View& y) {
  LinregQuadratic q;
  const int64_t n = X.shape[0], d = X.shape[1];
  q.dim = d + 1;
  q.A.resize(static_cast<size_t>(q.dim * q.dim));
  if (X.dtype == DType::f64) {
    accumulate_gram(X.ptr<double>(), n, d, q.A.data());
    reference_point<double>(X, y, q);
  } else {
    accumulate_gram(X.ptr<float>(), n, d, q.A.data());
    reference_point<float>(X, y, q);
  }
  return q;
}

}  // namespace ox
#endif
