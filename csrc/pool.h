// 2-D max pooling with torch's arguments (padding, dilation, ceil_mode):
//   y[p, i, j] = max over the window's entries inside the plane of
//                x[p, i·sH − pH + a·dH, j·sW − pW + b·dW]      a < kH, b < kW
// for every plane p (N·C planes); padded positions take no part (torch pads with −inf).
//   Ho = ⌊(H + 2pH − dH(kH − 1) − 1)/sH⌋ + 1 (⌈⌉ with ceil_mode, less 1 if the last window
//   would start past the plane and its right padding), the same for Wo.
// Ties and special values follow torch's CPU kernel: the window is scanned in
// row-major order and a value replaces the current maximum when it is greater
// or NaN, so y is NaN if any entry is NaN, the gradient goes to the FIRST of
// equal maxima, to the LAST NaN, and to the first entry of an all −inf window.
// (A window with no entry inside the plane, possible only with dilation, gives −inf
// and takes no gradient.)
// Backward recomputes that position from x (nothing is saved by the forward):
//   dx[p, pos(i, j)] += dy[p, i, j]   (overlapping windows accumulate).
// x is (N, C, H, W) or (C, H, W), contiguous; float32 (CPU/CUDA) or float64.
#pragma once
#include <cstdint>

#include "core/view.h"

namespace ox {

struct Pool2d {
  int64_t kh, kw, sh, sw;
  int64_t ph = 0, pw = 0, dh = 1, dw = 1;
  bool ceil_mode = false;
};

// Output extent along one axis (the formula above); arguments already checked.
inline int64_t pool_out_size(int64_t in, int64_t k, int64_t s, int64_t pad, int64_t dil, bool ceil_mode) {
  const int64_t span = in + 2 * pad - dil * (k - 1) - 1;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  if (ceil_mode && (out - 1) * s >= in + pad) --out;
  return out;
}

// Checks the arguments; returns the output height and width.
void max_pool2d_check(const char* op, const View& x, const Pool2d& p, int64_t* ho, int64_t* wo);
// Checks y (forward output) against x.
void max_pool2d_check_out(const char* op, const char* arg, const View& y, const View& x, int64_t ho, int64_t wo);

// return_indices: int64 of y's shape, each entry the flat offset in its (H, W) plane of the
// element y took (torch's indices), −1 for a window with no tap inside the plane.
void max_pool2d_check_indices(const char* op, const View& indices, const View& y);

void max_pool2d_forward_cpu(const View& x, const Pool2d& p, const View& y, const View* indices = nullptr);
void max_pool2d_backward_cpu(const View& dy, const View& x, const Pool2d& p, const View& dx);
void max_pool2d_forward_cuda(const View& x, const Pool2d& p, const View& y, const View* indices, uintptr_t stream);
void max_pool2d_backward_cuda(const View& dy, const View& x, const Pool2d& p, const View& dx, uintptr_t stream);

}  // namespace ox
