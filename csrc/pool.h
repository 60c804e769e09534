// 2-D max pooling, no padding, floor mode, dilation 1:
//   y[p, i, j] = max_{a<kH, b<kW} x[p, i·sH + a, j·sW + b]     for every plane p (N·C planes)
//   Ho = ⌊(H − kH)/sH⌋ + 1,  Wo = ⌊(W − kW)/sW⌋ + 1
// Ties and special values follow torch's CPU kernel: the window is scanned in
// row-major order and a value replaces the current maximum when it is greater
// or NaN, so y is NaN if any entry is NaN, the gradient goes to the FIRST of
// equal maxima, to the LAST NaN, and to the first entry of an all −inf window.
// Backward recomputes that position from x (nothing is saved by the forward):
//   dx[p, pos(i, j)] += dy[p, i, j]   (overlapping windows accumulate).
// x is (N, C, H, W) or (C, H, W), contiguous; float32 (CPU/CUDA) or float64.
#pragma once
#include <cstdint>

#include "core/view.h"

namespace ox {

struct Pool2d {
  int64_t kh, kw, sh, sw;
};

// Checks the arguments; returns the output height and width.
void max_pool2d_check(const char* op, const View& x, const Pool2d& p, int64_t* ho, int64_t* wo);
// Checks y (forward output) against x.
void max_pool2d_check_out(const char* op, const char* arg, const View& y, const View& x, int64_t ho, int64_t wo);

void max_pool2d_forward_cpu(const View& x, const Pool2d& p, const View& y);
void max_pool2d_backward_cpu(const View& dy, const View& x, const Pool2d& p, const View& dx);
void max_pool2d_forward_cuda(const View& x, const Pool2d& p, const View& y, uintptr_t stream);
void max_pool2d_backward_cuda(const View& dy, const View& x, const Pool2d& p, const View& dx, uintptr_t stream);

}  // namespace ox
