"""2-D max pooling with torch's arguments (padding, dilation, ceil_mode), forward and backward.

    y[n, c, i, j] = max over the taps inside the plane of
                    x[n, c, i·sH − pH + a·dH, j·sW − pW + b·dW]     a < kH, b < kW

(padded positions take no part, as torch pads with −inf). Ties, −inf and NaN follow
torch: NaN wins the window, the gradient goes to the first of equal maxima (the last
NaN). Torch tensors in: differentiable.
"""
import numpy as np

from .. import _C
from .._arrays import TORCH, array_kind, dense, empty, int_pair, stream_of

__all__ = ["max_pool2d", "max_pool2d_backward"]


def window(op, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode) from torch's arguments; stride None → kernel_size."""
    kh, kw = int_pair(op, "kernel_size", kernel_size)
    sh, sw = (kh, kw) if stride is None else int_pair(op, "stride", stride)
    ph, pw = int_pair(op, "padding", padding)
    dh, dw = int_pair(op, "dilation", dilation)
    return kh, kw, sh, sw, ph, pw, dh, dw, bool(ceil_mode)


def _out_size(extent, k, s, pad, dil, ceil_mode):
    """⌊(extent + 2·pad − dil·(k−1) − 1)/s⌋ + 1 (⌈⌉ with ceil_mode, less one if the last window
    would start past the plane and its padding), as torch; csrc/pool.h has the same formula."""
    span = extent + 2 * pad - dil * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= extent + pad:
        out -= 1
    return out


def out_shape(shape, w):
    """The output shape for input `shape` and window w, or (0,) for arguments the C++ checks
    refuse (they name the problem)."""
    kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode = w
    if len(shape) < 2 or min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0 or 2 * ph > kh or 2 * pw > kw:
        return (0,)
    h, wd = shape[-2], shape[-1]
    if dh * (kh - 1) + 1 > h + 2 * ph or dw * (kw - 1) + 1 > wd + 2 * pw:
        return (0,)
    return (*shape[:-2], _out_size(h, kh, sh, ph, dh, ceil_mode), _out_size(wd, kw, sw, pw, dw, ceil_mode))


# Set on the first torch tensor: torch.Tensor and the eager torch entry point, so
# that the common call (a plain tensor, an int window, nothing else) skips the
# argument parsing and array_kind (≈ 2 µs); everything else takes the checked path.
_Tensor = None
_eager = None


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling of x (N, C, H, W) or (C, H, W) with torch.nn.functional.max_pool2d's
    arguments: kernel_size, stride, padding and dilation are ints or pairs, stride defaults to
    kernel_size, padding is at most half the kernel. With return_indices, also the int64 flat
    offset in its (H, W) plane of each output's element, as torch (−1 for a window whose taps
    all fall in the padding)."""
    global _Tensor, _eager
    if type(x) is _Tensor and type(kernel_size) is int and stride is None and kernel_size >= 1 and \
            padding == 0 and dilation == 1 and not ceil_mode and not return_indices:
        return _eager(x, (kernel_size, kernel_size, kernel_size, kernel_size, 0, 0, 1, 1, False))
    w = window("max_pool2d", kernel_size, stride, padding, dilation, ceil_mode)
    if array_kind("max_pool2d", x=x) == TORCH:
        import torch

        from .._torch import pool

        _Tensor, _eager = torch.Tensor, pool.max_pool2d
        return pool.max_pool2d_with_indices(x, w) if return_indices else pool.max_pool2d(x, w)
    x = dense(x)
    shape = out_shape(x.shape, w)
    out = empty(x, shape)
    indices = empty(x, shape, dtype=np.int64) if return_indices else None
    _C.max_pool2d(x, out, *w, 0, indices)
    return (out, indices) if return_indices else out


def max_pool2d_backward(grad, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Gradient of max_pool2d with respect to x, given the gradient of its output."""
    w = window("max_pool2d_backward", kernel_size, stride, padding, dilation, ceil_mode)
    array_kind("max_pool2d_backward", grad=grad, x=x)
    grad, x = dense(grad), dense(x)
    out = empty(x, x.shape)
    _C.max_pool2d_backward(grad, x, out, *w, stream_of(x))
    return out
