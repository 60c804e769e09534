// 2-D convolution (NCHW, zero padding, groups = 1, dilation = 1) and the fused
// conv → bias → ReLU → P×P max-pool block of the course's CNN.
//
//   y[n,o,i,j] = b[o] + Σ_{c,kh,kw} x[n, c, i·sh − ph + kh, j·sw − pw + kw] · w[o,c,kh,kw]
//   OH = (H + 2ph − KH)/sh + 1,  OW = (W + 2pw − KW)/sw + 1   (floor)
//
// Backward, with g = ∂L/∂y:
//   ∂L/∂b[o]          = Σ_{n,i,j} g[n,o,i,j]
//   ∂L/∂w[o,c,kh,kw]  = Σ_{n,i,j} g[n,o,i,j] · x[n, c, i·sh − ph + kh, j·sw − pw + kw]
//   ∂L/∂x[n,c,h,v]    = Σ_{o,kh,kw} ĝ[n,o, h + ph − kh, v + pw − kw] · w[o,c,kh,kw]
// where ĝ is g with (sh−1, sw−1) zeros inserted between its rows/columns (a
// stride-1 correlation of the dilated, padded g with the flipped kernel).
//
// Fused block (pool P, stride P, floor mode, as torch's max_pool2d):
//   out[n,o,p,q] = max over the P×P window of relu(y), first maximum wins, NaN propagates;
//   idx[n,o,p,q] = position k = r·P + s of the chosen element in its window when the chosen
//                  y is not ≤ 0 (ReLU passes the gradient), else 255 (no gradient).
#pragma once
#include <cstdint>

#include "core/host_device.h"
#include "core/view.h"

namespace ox {

struct ConvShape {
  int64_t N, C, H, W;    // input
  int64_t O, KH, KW;     // weight (O, C, KH, KW)
  int64_t sh, sw, ph, pw;
  int64_t OH, OW;        // output
};

constexpr uint8_t kPoolNoGrad = 255;

// Validation shared by the CPU and CUDA entries; returns the shape with OH, OW.
// grad_y: optional, must have the output shape; pool > 0 checks the fused block.
ConvShape conv2d_check(const char* op, const View& x, const View& w, const View* b, int64_t sh, int64_t sw,
                       int64_t ph, int64_t pw);

// y = conv2d(x, w, b); b may be null.
void conv2d_forward_cpu(const ConvShape& s, const View& x, const View& w, const View* b, const View& y);
// Any of gx, gw, gb may be null (not wanted).
void conv2d_backward_cpu(const ConvShape& s, const View& gy, const View& x, const View& w, const View* gx,
                         const View* gw, const View* gb);
// out, idx: (N, O, OH/pool, OW/pool); idx uint8.
void conv2d_relu_maxpool2d_forward_cpu(const ConvShape& s, int64_t pool, const View& x, const View& w,
                                       const View* b, const View& out, const View& idx);
void conv2d_relu_maxpool2d_backward_cpu(const ConvShape& s, int64_t pool, const View& gout, const View& idx,
                                        const View& x, const View& w, const View* gx, const View* gw,
                                        const View* gb);

// CUDA ∂L/∂w, ∂L/∂b: the batch is summed in G groups of consecutive images (so that
// small layers still fill the GPU), then the G partial sums are added in group order;
// G depends on the shape alone. A group's sums are split over blocks of
// kConvGradOutChannels output channels × one (c, kh) row of kernel taps. With G > 1 the
// backward needs a workspace of x's dtype holding G·(O·C·KH·KW + O) elements.
constexpr int64_t kConvGradOutChannels = 8;
OX_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t conv2d_grad_blocks_per_group_cuda(const ConvShape& s) {
  return ceil_div(s.O, kConvGradOutChannels) * s.C * s.KH;
}
inline int64_t conv2d_grad_groups_cuda(const ConvShape& s) {
  // about 8 blocks per SM of an H100, each thread summing at least 8 (image, pixel) terms
  constexpr int64_t kTargetBlocks = 1024, kMinSummedPerBlock = 2048;
  const int64_t blocks = conv2d_grad_blocks_per_group_cuda(s), summed = s.N * s.OH * s.OW;
  int64_t groups = blocks > 0 ? ceil_div(kTargetBlocks, blocks) : 1;
  if (groups > summed / kMinSummedPerBlock) groups = summed / kMinSummedPerBlock;
  if (groups > s.N) groups = s.N;
  return groups > 1 ? groups : 1;
}
inline int64_t conv2d_grad_workspace_cuda(const ConvShape& s) {
  const int64_t groups = conv2d_grad_groups_cuda(s);
  return groups > 1 ? groups * (s.O * s.C * s.KH * s.KW + s.O) : 0;
}
// The fused block's CUDA backward (any gradient wanted) also holds the dense ∂L/∂y
// (N·O·OH·OW elements) at the front of its workspace.
inline int64_t conv2d_relu_maxpool2d_grad_workspace_cuda(const ConvShape& s) {
  return s.N * s.O * s.OH * s.OW + conv2d_grad_workspace_cuda(s);
}

void conv2d_forward_cuda(const ConvShape& s, const View& x, const View& w, const View* b, const View& y,
                         uintptr_t stream);
void conv2d_backward_cuda(const ConvShape& s, const View& gy, const View& x, const View& w, const View* gx,
                          const View* gw, const View* gb, const View* workspace, uintptr_t stream);
void conv2d_relu_maxpool2d_forward_cuda(const ConvShape& s, int64_t pool, const View& x, const View& w,
                                        const View* b, const View& out, const View& idx, uintptr_t stream);
void conv2d_relu_maxpool2d_backward_cuda(const ConvShape& s, int64_t pool, const View& gout, const View& idx,
                                         const View& x, const View& w, const View* gx, const View* gw,
                                         const View* gb, const View* workspace, uintptr_t stream);

}  // namespace ox
