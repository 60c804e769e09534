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
from ._glue import call_backward, cuda_stream, dispatcher_op, first_order, lean_apply, register_autograd, use_custom_op



def _out_shape(x, kh, kw, sh, sw):
    h, w = x.shape[-2], x.shape[-1]
    return (*x.shape[:-2], (h - kh) // sh + 1, (w - kw) // sw + 1)


def _valid(x, kh, kw, sh, sw) -> bool:
    return x.dim() >= 2 and min(kh, kw, sh, sw) >= 1 and x.shape[-2] >= kh and x.shape[-1] >= kw


def _forward(x, kh, kw, sh, sw):
    x = x.contiguous()
    if _valid(x, kh, kw, sh, sw):
        out = x.new_empty(_out_shape(x, kh, kw, sh, sw))
    else:  # the C++ checks name the problem
        out = x.new_empty(0)
    _C.max_pool2d(x, out, kh, kw, sh, sw, cuda_stream(x))
    return out


def _backward(grad, x, kh, kw, sh, sw):
    x = x.contiguous()
    out = torch.empty_like(x)
    _C.max_pool2d_backward(grad.contiguous(), x, out, kh, kw, sh, sw, cuda_stream(x))
    return out


@torch.library.custom_op("oxkernels::max_pool2d_backward", mutates_args=())
def max_pool2d_backward_op(grad: torch.Tensor, x: torch.Tensor, kh: int, kw: int, sh: int, sw: int) -> torch.Tensor:
    return _backward(grad, x, kh, kw, sh, sw)


@max_pool2d_backward_op.register_fake
def _(grad, x, kh, kw, sh, sw):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("oxkernels::max_pool2d", mutates_args=())
def max_pool2d_op(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int) -> torch.Tensor:
    return _forward(x, kh, kw, sh, sw)


@max_pool2d_op.register_fake
def _(x, kh, kw, sh, sw):
    torch._check(_valid(x, kh, kw, sh, sw) and x.dim() in (3, 4),
                 lambda: f"max_pool2d: invalid input shape {tuple(x.shape)} for kernel ({kh}, {kw}), stride ({sh}, {sw})")
    return x.new_empty(_out_shape(x, kh, kw, sh, sw))


def _setup_context(ctx, inputs, output):
    x, ctx.kh, ctx.kw, ctx.sh, ctx.sw = inputs
    ctx.save_for_backward(x)


def _op_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    grad_x = call_backward(max_pool2d_backward_op, grad.contiguous(), x, ctx.kh, ctx.kw, ctx.sh, ctx.sw)
    return grad_x, None, None, None, None


register_autograd(max_pool2d_op, _op_backward, _setup_context)


class _MaxPool2dFn(torch.autograd.Function):
    """Same kernels without the custom-op dispatch, for eager mode."""

    @staticmethod
    def forward(ctx, x, kh, kw, sh, sw):
        ctx.geometry = (kh, kw, sh, sw)
        ctx.save_for_backward(x)
        return _forward(x, kh, kw, sh, sw)

    @staticmethod
    @first_order("max_pool2d")
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _backward(grad, x, *ctx.geometry), None, None, None, None


_grad_enabled = torch.is_grad_enabled
_apply = lean_apply(_MaxPool2dFn)


def max_pool2d(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int) -> torch.Tensor:
    if use_custom_op(x):
        return dispatcher_op(max_pool2d_op)(x, kh, kw, sh, sw)
    if x.requires_grad and _grad_enabled():
        return _apply(x, kh, kw, sh, sw)
    return _forward(x, kh, kw, sh, sw)
