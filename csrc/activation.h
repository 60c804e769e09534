// Elementwise activations, forward and backward.
//   relu:    y = max(x, 0)  (NaN stays NaN)     dx = g · [y > 0]   (0 at x = 0, as torch; g where y is NaN)
//   sigmoid: y = 1 / (1 + e^{−x})               dx = g · y · (1 − y)   (from the output)
// Arrays of any shape, contiguous, float32 (CPU/CUDA) or float64 (CPU/CUDA).
#pragma once
#include <cstdint>

#include "core/activation_kind.h"
#include "core/view.h"

namespace ox {


// Checks x and out (same shape/dtype/device, contiguous, out writable).
void activation_check(const char* op, const View& x, const View& out);
// Checks g, y and out for a backward call.
void activation_backward_check(const char* op, const View& g, const View& y, const View& out);

void activation_forward_cpu(Activation act, const View& x, const View& y);
void activation_backward_cpu(Activation act, const View& g, const View& y, const View& dx);
void activation_forward_cuda(Activation act, const View& x, const View& y, uintptr_t stream);
void activation_backward_cuda(Activation act, const View& g, const View& y, const View& dx, uintptr_t stream);

}  // namespace ox
