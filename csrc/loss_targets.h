// The target coefficients of loss.h's general cross-entropy form, shared by the CPU and CUDA
// kernels (w: class weights, 1 when absent; keep = 1 − ε; smooth = ε/C):
//   class probabilities q_i:  b_ij = w_j (keep q_ij + smooth)
//   class target t_i:         A_i = Σ_j b_ij = keep w_t + smooth Σ_j w_j
#pragma once

#include "core/host_device.h"

namespace ox {

template <class T> OX_HD T probability_coefficient(T w_j, T q_ij, T keep, T smooth) {
  return w_j * (keep * q_ij + smooth);
}

template <class T> OX_HD T class_target_mass(T w_t, T weight_sum, T keep, T smooth) {
  return keep * w_t + smooth * weight_sum;
}

}  // namespace ox
