// conv2d and the fused conv → ReLU → max-pool block on the CPU (formulas in conv.h):
// argument checks and the dispatch to the kernels of the active instruction set.
//
// The kernels are direct convolutions vectorised along output rows (or along output
// channels for narrow layers), over zero-padded, column-phase-split copies of the
// input; backward sums over fixed blocks of images, so results do not depend on the
// thread count. Files:
//   conv_simd.h      aligned scratch, padded phase-split image buffers (vectors: simd.h);
//   conv_tiles.h     forward tile kernels (also ∂L/∂x's) and the 2×2 pooling rule;
//   conv_forward.cpp forward and fused forward (method described there);
//   conv_backward.cpp ∂L/∂x, ∂L/∂w, ∂L/∂b, dense and from the pooled gradient;
//   conv_k5.{h,cpp}  the conv1 kernels (5×5, pool 2, narrow rows; AVX-512).
// Like every csrc/cpu file this one is compiled once per instruction set; only its
// scalar copy holds the code below.
#include "conv.h"
#include "core/isa.h"

#if OX_ISA_IS_scalar
#include <algorithm>
#include <limits>

#include "core/checks.h"

OX_ISA_DECLARE(void, conv_fwd, (const ConvShape&, const void*, const void*, const void*, void*, bool))
OX_ISA_DECLARE(void, conv_bwd,
               (const ConvShape&, const void*, const uint8_t*, int64_t, const void*, const void*, void*, void*,
                void*, bool))
OX_ISA_DECLARE(void, conv_pool_fwd,
               (const ConvShape&, int64_t, const void*, const void*, const void*, void*, uint8_t*, bool))

namespace ox {

ConvShape conv2d_check(const char* op, const View& x, const View& w, const View* b, int64_t sh, int64_t sw,
                       int64_t ph, int64_t pw) {
  check_dtype(op, "x", x, {DType::f32, DType::f64});
  check_rank(op, "x", x, 4);
  check_contiguous(op, "x", x);
  check_numel_fits(op, "x", x);
  check_like(op, "weight", w, "x", x);
  check_rank(op, "weight", w, 4);
  if (b) {
    check_like(op, "bias", *b, "x", x);
    check_shape(op, "bias", *b, {w.shape[0]});
  }
  if (w.shape[1] != x.shape[1])
    value_error(op, ": argument 'weight' has ", w.shape[1], " input channels (shape ", shape_str(w),
                ") but 'x' has ", x.shape[1], " channels (shape ", shape_str(x), ")");
  constexpr int64_t kMaxStep = int64_t(1) << 31;  // stride, padding: the padded sizes stay exact below
  if (sh < 1 || sw < 1 || sh > kMaxStep || sw > kMaxStep)
    value_error(op, ": argument 'stride' must be in [1, 2^31], got (", sh, ", ", sw, ")");
  if (ph < 0 || pw < 0 || ph > kMaxStep || pw > kMaxStep)
    value_error(op, ": argument 'padding' must be in [0, 2^31], got (", ph, ", ", pw, ")");
  if (w.shape[2] < 1 || w.shape[3] < 1)
    value_error(op, ": argument 'weight' must have a kernel of at least 1x1, got shape ", shape_str(w));
  const int64_t Hp = x.shape[2] + 2 * ph, Wp = x.shape[3] + 2 * pw;
  // The kernels hold padded images of max(C, O) channels for a block of images, in float64 at
  // most: its byte count must be an int64 (else its size wraps, and the buffer is too small).
  const __int128 padded_bytes = static_cast<__int128>(std::max(x.shape[1], w.shape[0])) * Hp * Wp * 16 * 8;
  if (padded_bytes > std::numeric_limits<int64_t>::max())
    value_error(op, ": the padded input (", Hp, ", ", Wp, ") of argument 'x' with its padding (", ph, ", ", pw,
                ") is too large to hold");
  if (w.shape[2] > Hp || w.shape[3] > Wp)
    value_error(op, ": kernel size (", w.shape[2], ", ", w.shape[3], ") of argument 'weight' is larger than the "
                "padded input (", Hp, ", ", Wp, ") of argument 'x'");
  ConvShape s{x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0], w.shape[2], w.shape[3], sh, sw, ph, pw,
              0, 0};
  s.OH = (Hp - s.KH) / sh + 1;
  s.OW = (Wp - s.KW) / sw + 1;
  return s;
}

void conv2d_forward_cpu(const ConvShape& s, const View& x, const View& w, const View* b, const View& y) {
  OX_ISA_DISPATCH(conv_fwd, s, x.data, w.data, b ? b->data : nullptr, y.data, x.dtype == DType::f64);
}

void conv2d_backward_cpu(const ConvShape& s, const View& gy, const View& x, const View& w, const View* gx,
                         const View* gw, const View* gb) {
  OX_ISA_DISPATCH(conv_bwd, s, gy.data, nullptr, 1, x.data, w.data, gx ? gx->data : nullptr,
                  gw ? gw->data : nullptr, gb ? gb->data : nullptr, x.dtype == DType::f64);
}

void conv2d_relu_maxpool2d_forward_cpu(const ConvShape& s, int64_t pool, const View& x, const View& w,
                                       const View* b, const View& out, const View& idx) {
  OX_ISA_DISPATCH(conv_pool_fwd, s, pool, x.data, w.data, b ? b->data : nullptr, out.data, idx.ptr<uint8_t>(),
                  x.dtype == DType::f64);
}

void conv2d_relu_maxpool2d_backward_cpu(const ConvShape& s, int64_t pool, const View& gout, const View& idx,
                                        const View& x, const View& w, const View* gx, const View* gw,
                                        const View* gb) {
  // The kernels use each index as an offset into the window: one outside it (not the forward's
  // output) would send a gradient outside the image. (CUDA compares positions instead: safe.)
  const uint8_t* k = idx.ptr<uint8_t>();
  for (int64_t i = 0, n = idx.numel(); i < n; ++i)
    if (k[i] != kPoolNoGrad && k[i] >= pool * pool)
      value_error("conv2d_relu_maxpool2d_backward: argument 'indices' holds ", int(k[i]), " at flat position ", i,
                  "; a window of ", pool, "x", pool, " has positions 0 to ", pool * pool - 1, " (or ",
                  int(kPoolNoGrad), " for no gradient), as the forward returns them");
  OX_ISA_DISPATCH(conv_bwd, s, gout.data, idx.ptr<uint8_t>(), pool, x.data, w.data, gx ? gx->data : nullptr,
                  gw ? gw->data : nullptr, gb ? gb->data : nullptr, x.dtype == DType::f64);
}

}  // namespace ox
#endif
