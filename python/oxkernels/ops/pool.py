"""2-D max pooling (no padding, floor mode), forward and backward.

    y[n, c, i, j] = max_{a<kH, b<kW} x[n, c, i·sH + a, j·sW + b]

Ties, −inf and NaN follow torch: NaN wins the window, the gradient goes to the
first of equal maxima (the last NaN). Torch tensors in: differentiable.
"""
from .. import _C
from .._arrays import TORCH, array_kind, dense, empty, int_pair, stream_of

__all__ = ["max_pool2d", "max_pool2d_backward"]


def _geometry(op, kernel_size, stride):
    kh, kw = int_pair(op, "kernel_size", kernel_size)
    sh, sw = (kh, kw) if stride is None else int_pair(op, "stride", stride)
    return kh, kw, sh, sw


def _out_shape(x, kh, kw, sh, sw):
    if len(x.shape) < 2 or min(kh, kw, sh, sw) < 1 or x.shape[-2] < kh or x.shape[-1] < kw:
        return (0,)  # invalid: the C++ checks raise a clear error
    return (*x.shape[:-2], (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1)


# Set on the first torch tensor: torch.Tensor and the eager torch entry point, so
# that the common call (a plain tensor, an int window, no stride) skips the
# argument parsing and array_kind (≈ 2 µs); everything else takes the checked path.
_Tensor = None
_eager = None


def max_pool2d(x, kernel_size, stride=None):
    """Max pooling of x (N, C, H, W) or (C, H, W); kernel_size and stride are ints or
    pairs, stride defaults to kernel_size. Output (…, ⌊(H−kH)/sH⌋+1, ⌊(W−kW)/sW⌋+1)."""
    global _Tensor, _eager
    if type(x) is _Tensor and type(kernel_size) is int and stride is None and kernel_size >= 1:
        return _eager(x, kernel_size, kernel_size, kernel_size, kernel_size)
    kh, kw, sh, sw = _geometry("max_pool2d", kernel_size, stride)
    if array_kind("max_pool2d", x=x) == TORCH:
        import torch

        from .._torch import pool

        _Tensor, _eager = torch.Tensor, pool.max_pool2d
        return pool.max_pool2d(x, kh, kw, sh, sw)
    x = dense(x)
    out = empty(x, _out_shape(x, kh, kw, sh, sw))
    _C.max_pool2d(x, out, kh, kw, sh, sw, 0)
    return out


def max_pool2d_backward(grad, x, kernel_size, stride=None):
    """Gradient of max_pool2d with respect to x, given the gradient of its output."""
    kh, kw, sh, sw = _geometry("max_pool2d_backward", kernel_size, stride)
    array_kind("max_pool2d_backward", grad=grad, x=x)
    grad, x = dense(grad), dense(x)
    out = empty(x, x.shape)
    _C.max_pool2d_backward(grad, x, out, kh, kw, sh, sw, stream_of(x))
    return out
