// The target coefficients of loss.h's general cross-entropy form, shared by the CPU and CUDA
// kernels (w: class weights, 1 when absent; keep = 1 − ε; smooth = ε/C):
//   class probabilities q_i:  b_ij = w_j (keep q_ij + smooth)
//   class target t_i:         A_i = Σ_j b_ij = keep w_t + smooth Σ_j w_j
// and a class-target row's share of what 'mean' divides by: w_t.
#pragma once
#include <cstdint>

#include "core/host_device.h"

namespace ox {

template <class T> OX_HD T probability_coefficient(T w_j, T q_ij, T keep, T smooth) {
  return w_j * (keep * q_ij + smooth);
}

template <class T> OX_HD T class_target_mass(T w_t, T weight_sum, T keep, T smooth) {
  return keep * w_t + smooth * weight_sum;
}

// w_t (1 without weights); 0 for t = ignore_index, and for t outside [0, C) (possible on CUDA,
// which does not check targets: that row's loss is NaN anyway).
template <class T> OX_HD double class_target_divisor_share(int64_t t, int64_t ignore, int64_t C, const T* weight) {
  if (t == ignore || t < 0 || t >= C) return 0.0;
  return weight ? static_cast<double>(weight[t]) : 1.0;
}

}  // namespace ox
