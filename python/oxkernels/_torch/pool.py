"""torch ops for max pooling: oxkernels::max_pool2d and
oxkernels::max_pool2d_backward (custom ops with fake impls and autograd), plus
the lean eager path `max_pool2d` used by the public function and the module.

Backward recomputes each window's arg-max from the saved input x instead of
saving indices: x is alive anyway in the course networks (the ReLU before the
pool saves it as its output), so this costs no memory, keeps the forward a single
write of y, and the recomputation (a max over 4 values) is cheaper than writing
and re-reading an index tensor.
"""
import torch

from .. import _C
from ..ops.pool import out_shape
from ._glue import call_backward, cuda_stream, dispatcher_op, first_order, lean_apply, register_autograd, use_custom_op


# A window is the 9-tuple (kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode) of ops.pool.window.
def _forward(x, w, with_indices=False):
    """The pooled x, and with_indices also the int64 offsets of the elements taken."""
    x = x.contiguous()
    shape = out_shape(x.shape, w)  # (0,) for arguments the C++ checks refuse by name
    out = x.new_empty(shape)
    indices = x.new_empty(shape, dtype=torch.int64) if with_indices else None
    _C.max_pool2d(x, out, *w, cuda_stream(x), indices)
    return (out, indices) if with_indices else out


def _backward(grad, x, w):
    x = x.contiguous()
    out = torch.empty_like(x)
    _C.max_pool2d_backward(grad.contiguous(), x, out, *w, cuda_stream(x))
    return out


@torch.library.custom_op("oxkernels::max_pool2d_backward", mutates_args=())
def max_pool2d_backward_op(grad: torch.Tensor, x: torch.Tensor, kh: int, kw: int, sh: int, sw: int, ph: int = 0,
                           pw: int = 0, dh: int = 1, dw: int = 1, ceil_mode: bool = False) -> torch.Tensor:
    return _backward(grad, x, (kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode))


@max_pool2d_backward_op.register_fake
def _(grad, x, kh, kw, sh, sw, ph=0, pw=0, dh=1, dw=1, ceil_mode=False):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("oxkernels::max_pool2d", mutates_args=())
def max_pool2d_op(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int, ph: int = 0, pw: int = 0, dh: int = 1,
                  dw: int = 1, ceil_mode: bool = False) -> torch.Tensor:
    return _forward(x, (kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode))


def _fake_out(x, w):
    shape = out_shape(x.shape, w)
    torch._check(shape != (0,) and x.dim() in (3, 4),
                 lambda: f"max_pool2d: invalid input shape {tuple(x.shape)} for window {w}")
    return x.new_empty(shape)


@max_pool2d_op.register_fake
def _(x, kh, kw, sh, sw, ph=0, pw=0, dh=1, dw=1, ceil_mode=False):
    return _fake_out(x, (kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode))


@torch.library.custom_op("oxkernels::max_pool2d_with_indices", mutates_args=())
def max_pool2d_with_indices_op(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int, ph: int = 0, pw: int = 0,
                               dh: int = 1, dw: int = 1, ceil_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """max_pool2d and the int64 offsets of the elements it took (return_indices)."""
    return _forward(x, (kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode), with_indices=True)


@max_pool2d_with_indices_op.register_fake
def _(x, kh, kw, sh, sw, ph=0, pw=0, dh=1, dw=1, ceil_mode=False):
    out = _fake_out(x, (kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode))
    return out, out.new_empty(out.shape, dtype=torch.int64)


def _setup_context(ctx, inputs, output):
    x, *ctx.window = inputs
    ctx.save_for_backward(x)


def _op_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    grad_x = call_backward(max_pool2d_backward_op, grad.contiguous(), x, *ctx.window)
    return (grad_x,) + (None,) * len(ctx.window)


register_autograd(max_pool2d_op, _op_backward, _setup_context)


def _with_indices_setup_context(ctx, inputs, output):
    _setup_context(ctx, inputs, output)
    ctx.mark_non_differentiable(output[1])


def _with_indices_op_backward(ctx, grad, grad_indices):
    return _op_backward(ctx, grad)


register_autograd(max_pool2d_with_indices_op, _with_indices_op_backward, _with_indices_setup_context)


class _MaxPool2dFn(torch.autograd.Function):
    """Same kernels without the custom-op dispatch, for eager mode."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.window = w
        ctx.save_for_backward(x)
        return _forward(x, w)

    @staticmethod
    @first_order("max_pool2d")
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _backward(grad, x, ctx.window), None


class _MaxPool2dWithIndicesFn(torch.autograd.Function):
    """return_indices in eager mode: the indices are an output autograd does not differentiate;
    the backward recomputes the winners from x as without them."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.window = w
        ctx.save_for_backward(x)
        out, indices = _forward(x, w, with_indices=True)
        ctx.mark_non_differentiable(indices)
        return out, indices

    @staticmethod
    @first_order("max_pool2d")
    def backward(ctx, grad, grad_indices):
        (x,) = ctx.saved_tensors
        return _backward(grad, x, ctx.window), None


_grad_enabled = torch.is_grad_enabled
_apply = lean_apply(_MaxPool2dFn)
_apply_with_indices = lean_apply(_MaxPool2dWithIndicesFn)


def max_pool2d(x: torch.Tensor, w: tuple) -> torch.Tensor:
    """max_pool2d of x over window w (ops.pool.window's tuple)."""
    if use_custom_op(x):
        return dispatcher_op(max_pool2d_op)(x, *w)
    if x.requires_grad and _grad_enabled():
        return _apply(x, w)
    return _forward(x, w)


def max_pool2d_with_indices(x: torch.Tensor, w: tuple):
    """(max_pool2d of x over window w, the int64 offsets of the elements taken)."""
    if use_custom_op(x):
        return dispatcher_op(max_pool2d_with_indices_op)(x, *w)
    if x.requires_grad and _grad_enabled():
        return _apply_with_indices(x, w)
    return _forward(x, w, with_indices=True)
