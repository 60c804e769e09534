// Linear regression on x̃ = [x, 1], θ = [w, b]:
//   f(θ)  = 1/(2m) Σ_{i∈S} (θᵀx̃ᵢ − yᵢ)²
//   ∇f(θ) = 1/m    Σ_{i∈S} (θᵀx̃ᵢ − yᵢ) x̃ᵢ
// S is every row of X, or the row indices `rows` (m = len(rows)).
// theta is (d+1,) or a batch (B, d+1): B results from one pass over X.
#pragma once
#include <cstdint>

#include "core/view.h"

namespace ox {

// Validation shared by the CPU and CUDA entries; out is (d+1,)/(B, d+1) for grad, ()/(B,) for loss.
void linreg_check(const char* op, const View& X, const View& y, const View& theta, const View* rows,
                  const View& out, bool is_grad);

void linreg_grad_cpu(const View& X, const View& y, const View& theta, const View* rows, const View& grad);
void linreg_grad_cuda(const View& X, const View& y, const View& theta, const View* rows, const View& grad,
                      uintptr_t stream);

}  // namespace ox
