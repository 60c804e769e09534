// Softmax, log-softmax and the fused softmax cross-entropy loss.
//
// Row i of logits x (C classes), lse_i = m_i + log Σ_j e^{x_ij − m_i}, m_i = max_j x_ij:
//   log_softmax: y_ij = x_ij − lse_i          softmax: y_ij = e^{x_ij − lse_i}
//   backward:    dx = g − e^{y} Σ_j g_j       dx = y ⊙ (g − Σ_j g_j y_j)
// Cross-entropy, as torch's, in one general form: row i's target gives a mass A_i and a
// vector b_i, and
//   ℓ_i = A_i lse_i − Σ_j b_ij x_ij,     ∂ℓ_i/∂x_ij = A_i softmax_ij − b_ij.
// With class weights w (1 when absent) and label smoothing ε:
//   class target t_i:  b_ij = (1−ε) w_t [j = t_i] + (ε/C) w_j,  A_i = Σ_j b_ij;  ℓ_i = 0 where t_i = ignore_index
//   probabilities q_i: b_ij = w_j ((1−ε) q_ij + ε/C),          A_i = Σ_j b_ij
// (so ℓ_i = −Σ_j b_ij log softmax_ij). Reduction none: ℓ;  sum: Σ ℓ_i;  mean: Σ ℓ_i divided by
// Σ_{i not ignored} w_{t_i} for class targets (the count without weights; NaN if none), by N for
// probabilities (torch's rules). The gradient is s_i ∂ℓ_i/∂x_i with s_i = g_i (none), g (sum),
// g / that divisor (mean), 0 if ignored.
// logits (N, C) or (C,) contiguous float32/float64; target (N,) or () int64, or probabilities of the
// logits' shape and dtype; weight (C,) of the logits' dtype.
#pragma once
#include <cstdint>

#include "core/view.h"

namespace ox {

enum class Reduction : int { none = 0, mean = 1, sum = 2 };

struct CrossEntropy {
  Reduction reduction;
  double label_smoothing;
  int64_t ignore_index;
  const View* weight = nullptr;  // class weights (C,), or none
};

// Probability targets: a floating target (torch reads those as class probabilities).
bool is_probability_target(const View& target);

// Shapes, dtypes and devices; on the CPU also the target values.
void cross_entropy_check(const char* op, const View& logits, const View& target, const CrossEntropy& ce);
void cross_entropy_check_out(const char* op, const View& out, const View& logits, const CrossEntropy& ce);

// With dx, the forward also writes ∂(Σ or mean or each ℓ)/∂x for an incoming grad of 1, i.e. what
// cross_entropy_backward_cpu writes for g = 1 (bit for bit), in the same pass over the logits:
// autograd saves it and its backward is dx · g.
void cross_entropy_forward_cpu(const View& logits, const View& target, const CrossEntropy& ce, const View& out,
                               const View* dx = nullptr);
void cross_entropy_backward_cpu(const View& grad, const View& logits, const View& target, const CrossEntropy& ce,
                                const View& dx);
// CUDA: workspace is scratch of the logits' dtype with at least max(N, 1) elements.
// Targets are not validated on the device (that would need a host sync): a row
// whose target is outside [0, C) and not ignore_index gives a NaN loss and NaN gradient.
void cross_entropy_forward_cuda(const View& logits, const View& target, const CrossEntropy& ce, const View& out,
                                const View& workspace, uintptr_t stream);
void cross_entropy_backward_cuda(const View& grad, const View& logits, const View& target, const CrossEntropy& ce,
                                 const View& dx, const View& workspace, uintptr_t stream);

// softmax / log_softmax over dimension `dim` (already normalised to [0, ndim)).
void softmax_check(const char* op, const View& x, int dim, const View& out);
void softmax_forward_cpu(const View& x, int dim, bool log, const View& y);
void softmax_backward_cpu(const View& g, const View& y, int dim, bool log, const View& dx);
void softmax_forward_cuda(const View& x, int dim, bool log, const View& y, uintptr_t stream);
void softmax_backward_cuda(const View& g, const View& y, int dim, bool log, const View& dx, uintptr_t stream);

}  // namespace ox
