"""2-D convolution (NCHW, zero padding, groups = 1, dilation = 1) and the fused
conv → bias → ReLU → max-pool block; formulas in csrc/conv.h.

NumPy arrays in: the native kernels directly (forward, and the backward
functions below). torch tensors in: differentiable, CPU or CUDA — the custom ops
`torch.ops.oxkernels.conv2d` / `conv2d_relu_maxpool2d` under torch.compile, an
autograd.Function over the same kernels in eager mode (less dispatch overhead).
"""
from .. import _C
from .._arrays import NUMPY, array_kind, dense, empty, int_pair, stream_of

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_relu_maxpool2d",
    "conv2d_relu_maxpool2d_backward",
]


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """(size + 2·padding − kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _out_hw(x, weight, stride, padding):
    return (
        max(conv_output_size(x.shape[2], weight.shape[2], stride[0], padding[0]), 0),
        max(conv_output_size(x.shape[3], weight.shape[3], stride[1], padding[1]), 0),
    )


def _check_geometry(op, x, weight, stride, padding, unbatched=False):
    """What must hold before output shapes can be computed; the rest is checked in C++.
    unbatched: the op also takes one image (C, H, W) (handled before this check)."""
    if min(stride) < 1:
        raise ValueError(f"{op}: argument 'stride' must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"{op}: argument 'padding' must be >= 0, got {padding}")
    if len(x.shape) != 4:
        ranks = "3 or 4 dimensions ((C, H, W) or (N, C, H, W))" if unbatched else "4 dimensions (N, C, H, W)"
        raise ValueError(f"{op}: argument 'x' must have {ranks}, got shape {tuple(x.shape)}")
    if len(weight.shape) != 4:
        raise ValueError(
            f"{op}: argument 'weight' must have 4 dimensions (O, C, KH, KW), got shape {tuple(weight.shape)}"
        )


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """y[n,o,i,j] = bias[o] + Σ_{c,kh,kw} x[n,c,i·sh−ph+kh, j·sw−pw+kw] · weight[o,c,kh,kw].

    x: (N, C, H, W), or one image (C, H, W); weight: (O, C, KH, KW); bias: (O,) or None;
    stride, padding: int or (h, w) pair. float32 (CPU, CUDA) or float64 (CPU). Returns
    (N, O, OH, OW) (or (O, OH, OW)) of the same kind; torch tensors get autograd."""
    op = "conv2d"
    kind = array_kind(op, x=x, weight=weight, bias=bias)
    if len(x.shape) == 3:
        return conv2d(x[None], weight, bias, stride, padding)[0]
    stride, padding = int_pair(op, "stride", stride), int_pair(op, "padding", padding)
    _check_geometry(op, x, weight, stride, padding, unbatched=True)
    if kind != NUMPY:
        from .._torch.conv import eager_conv2d

        return eager_conv2d(x, weight, bias, list(stride), list(padding))
    x, weight, bias = dense(x), dense(weight), dense(bias)
    y = empty(x, (x.shape[0], weight.shape[0], *_out_hw(x, weight, stride, padding)))
    _C.conv2d(x, weight, bias, *stride, *padding, y, stream_of(x))
    return y


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, needs=(True, True, True)):
    """(∂L/∂x, ∂L/∂weight, ∂L/∂bias) from grad_out = ∂L/∂y; entries whose `needs`
    flag is False are None. Arrays of one kind (NumPy, or torch without autograd)."""
    op = "conv2d_backward"
    kind = array_kind(op, grad_out=grad_out, x=x, weight=weight)
    stride, padding = int_pair(op, "stride", stride), int_pair(op, "padding", padding)
    _check_geometry(op, x, weight, stride, padding)
    grad_out, x, weight = dense(grad_out), dense(x), dense(weight)
    gx = empty(x, tuple(x.shape)) if needs[0] else None
    gw = empty(x, tuple(weight.shape)) if needs[1] else None
    gb = empty(x, (weight.shape[0],)) if needs[2] else None
    _C.conv2d_backward(grad_out, x, weight, *stride, *padding, gx, gw, gb, stream_of(x),
                       _grad_workspace(kind, x, weight, stride, padding, needs))
    return gx, gw, gb


def conv2d_relu_maxpool2d(x, weight, bias=None, stride=1, padding=0, pool=2, return_indices=False):
    """max_pool2d(relu(conv2d(x, weight, bias, stride, padding)), pool) as one op
    (pool × pool windows, stride pool, floor mode; first maximum wins, NaN propagates).

    With return_indices, also the uint8 position r·pool + s of the chosen element in
    each window (255 where ReLU passes no gradient) that the backward needs. x may be one
    image (C, H, W), as in conv2d."""
    op = "conv2d_relu_maxpool2d"
    kind = array_kind(op, x=x, weight=weight, bias=bias)
    if len(x.shape) == 3:
        out = conv2d_relu_maxpool2d(x[None], weight, bias, stride, padding, pool, return_indices)
        return (out[0][0], out[1][0]) if return_indices else out[0]
    stride, padding = int_pair(op, "stride", stride), int_pair(op, "padding", padding)
    pool = _int(op, "pool", pool)
    _check_geometry(op, x, weight, stride, padding, unbatched=True)
    if not 1 <= pool <= 15:
        raise ValueError(f"{op}: argument 'pool' must be in [1, 15], got {pool}")
    if kind != NUMPY:
        from .._torch.conv import eager_conv2d_relu_maxpool2d

        out, idx = eager_conv2d_relu_maxpool2d(x, weight, bias, list(stride), list(padding), pool)
        return (out, idx) if return_indices else out
    x, weight, bias = dense(x), dense(weight), dense(bias)
    oh, ow = _out_hw(x, weight, stride, padding)
    shape = (x.shape[0], weight.shape[0], max(oh, 0) // pool, max(ow, 0) // pool)
    out = empty(x, shape)
    idx = empty(x, shape, dtype="uint8")
    _C.conv2d_relu_maxpool2d(x, weight, bias, *stride, *padding, pool, out, idx, stream_of(x))
    return (out, idx) if return_indices else out


def conv2d_relu_maxpool2d_backward(grad_out, indices, x, weight, stride=1, padding=0, pool=2,
                                   needs=(True, True, True)):
    """(∂L/∂x, ∂L/∂weight, ∂L/∂bias) of the fused block from the pooled gradient and
    the indices its forward returned; entries whose `needs` flag is False are None."""
    op = "conv2d_relu_maxpool2d_backward"
    kind = array_kind(op, grad_out=grad_out, indices=indices, x=x, weight=weight)
    stride, padding = int_pair(op, "stride", stride), int_pair(op, "padding", padding)
    pool = _int(op, "pool", pool)
    _check_geometry(op, x, weight, stride, padding)
    grad_out, indices, x, weight = dense(grad_out), dense(indices), dense(x), dense(weight)
    gx = empty(x, tuple(x.shape)) if needs[0] else None
    gw = empty(x, tuple(weight.shape)) if needs[1] else None
    gb = empty(x, (weight.shape[0],)) if needs[2] else None
    _C.conv2d_relu_maxpool2d_backward(grad_out, indices, x, weight, *stride, *padding, pool, gx, gw, gb,
                                      stream_of(x), _grad_workspace(kind, x, weight, stride, padding, needs, True))
    return gx, gw, gb


def _grad_workspace(kind, x, weight, stride, padding, needs, fused=False):
    """The CUDA scratch of a backward (torch tensors only; NumPy arrays are on the CPU)."""
    if kind == NUMPY:
        return None
    from .._torch.conv import grad_workspace

    return grad_workspace(x, weight, stride, padding, needs, fused)


def _int(op, name, value) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{op}: argument '{name}' must be an int, got {value!r}")
    return int(value.__index__())
