// Linear regression on x̃ = [x, 1], θ = [w, b]:
//   f(θ)  = 1/(2m) Σ_{i∈S} (θᵀx̃ᵢ − yᵢ)²
//   ∇f(θ) = 1/m    Σ_{i∈S} (θᵀx̃ᵢ − yᵢ) x̃ᵢ
// S is every row of X, or the row indices `rows` (m = len(rows)).
// theta is (d+1,) or a batch (B, d+1): B results from one pass over X.
//
// fit runs a whole optimisation natively (GD, SGD, mini-batch SGD, Adam) for
// B trajectories at once (one learning rate and seed each). A fit long enough to pay for it
// takes f and ∇f over all rows from f's quadratic form (linreg_quadratic.h) instead of a pass
// over X per step (on CUDA: cuda/linreg_form.cu).
#pragma once
#include <cstdint>

#include "core/view.h"

namespace ox {

// Validation shared by the CPU and CUDA entries; out is (d+1,)/(B, d+1) for grad, ()/(B,) for loss.
void linreg_check(const char* op, const View& X, const View& y, const View& theta, const View* rows,
                  const View& out, bool is_grad);

void linreg_grad_cpu(const View& X, const View& y, const View& theta, const View* rows, const View& grad);
void linreg_loss_cpu(const View& X, const View& y, const View& theta, const View& loss);

// CUDA: workspace is a float64 array of at least linreg_cuda_workspace_numel(m, d, B) entries
// (allocated by the caller on X's device). Row indices on the device are not range-checked on
// the host (that would need a sync): a row outside [0, n) makes every result NaN.
int64_t linreg_cuda_workspace_numel(int64_t m, int64_t d, int64_t B);
void linreg_grad_cuda(const View& X, const View& y, const View& theta, const View* rows, const View& grad,
                      const View& workspace, uintptr_t stream);
void linreg_loss_cuda(const View& X, const View& y, const View& theta, const View& loss, const View& workspace,
                      uintptr_t stream);

// ---- fit ------------------------------------------------------------------------------------
enum class FitMethod : int { gd = 0, sgd = 1, minibatch = 2, adam = 3 };

struct FitParams {
  FitMethod method = FitMethod::gd;
  int64_t steps = 0;
  int64_t batch = 0;  // rows drawn per step: 0 for gd (all rows), 1 for sgd, batch_size otherwise
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

// X (n, d), y (n,), theta0 (B, d+1), lr (B,) float64, seed (B,) int64 — lr/seed on X's device.
// Outputs: thetas (B, steps+1, d+1), losses (B, steps+1), indices (B, steps, batch) int64,
// state (B, 2, d+1) of X's dtype (Adam's moments; scratch for the other methods);
// workspace: float64 on X's device, linreg_fit_cuda_workspace_numel entries (CUDA only).
struct FitArgs {
  View X, y, theta0, lr, seed, thetas, losses, indices, state;
  View workspace;  // data == nullptr when not given
};

FitMethod parse_fit_method(const char* name);
void linreg_fit_check(const FitArgs& a, const FitParams& p);
void linreg_fit_cpu(const FitArgs& a, const FitParams& p);
void linreg_fit_cuda(const FitArgs& a, const FitParams& p, uintptr_t stream);
// float64 entries of the CUDA fit's workspace (0: none): the quadratic form when it pays, and the
// residuals of each step's rows for d+1 > 4 unless gd takes all from the form. batch as in FitParams.
int64_t linreg_fit_cuda_workspace_numel(int64_t n, int64_t d, int64_t B, int64_t steps, FitMethod method,
                                        int64_t batch);

// Draws `count` distinct rows of [0, n) for (seed, step) by Floyd's algorithm, driven by the
// counter-based RNG of core/rng.h; the CUDA kernel draws the same sequence. Defined inline in
// linreg_sample.h so both compilers see the one definition.

}  // namespace ox
