"""torch ops for relu and sigmoid: oxkernels::relu, oxkernels::sigmoid and their
backward ops (custom ops with fake impls and autograd), plus the lean eager path
(`relu`, `sigmoid` here) that the public functions and modules use.

Both backwards take the forward OUTPUT y: relu's dx = g·[y > 0], sigmoid's
dx = g·y·(1 − y); so only y is saved.
"""
import torch

from .. import _C
from ._glue import (call_backward, cuda_stream, dispatcher_op, first_order, increment_version, lean_apply,
                    register_autograd, use_custom_op)



_CHANNELS_LAST = torch.channels_last


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself when row-major or channels_last (the kernels run over any dense layout as a
    flat array, and empty_like gives the output the same strides, as torch's own element-wise
    ops do), else a row-major copy."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=_CHANNELS_LAST)):
        return x
    return x.contiguous()


def _like(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad in y's layout (the backward kernels read both as one flat array)."""
    if (grad.is_contiguous() and y.is_contiguous()) or grad.stride() == y.stride():  # the first test is cheaper
        return grad
    return torch.empty_like(y).copy_(grad)


def _define(name: str, forward_kernel, backward_kernel):
    """Registers oxkernels::<name> and oxkernels::<name>_backward, and returns
    (custom op, autograd.Function) for one activation."""

    @torch.library.custom_op(f"oxkernels::{name}_backward", mutates_args=())
    def backward_op(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = _dense(y)
        out = torch.empty_like(y)
        backward_kernel(_like(grad, y), y, out, cuda_stream(y))
        return out

    @backward_op.register_fake
    def _(grad, y):
        return torch.empty_like(_dense(y))

    @torch.library.custom_op(f"oxkernels::{name}", mutates_args=())
    def forward_op(x: torch.Tensor) -> torch.Tensor:
        x = _dense(x)
        out = torch.empty_like(x)
        forward_kernel(x, out, cuda_stream(x))
        return out

    @forward_op.register_fake
    def _(x):
        return torch.empty_like(_dense(x))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return call_backward(backward_op, grad, y)

    register_autograd(forward_op, backward, setup_context)

    class EagerFn(torch.autograd.Function):
        """Same kernels without the custom-op dispatch (≈ 4 µs cheaper per call).
        Outputs come from empty_like (≈ 1 µs; torch.empty(shape, dtype=, device=)
        is ≈ 3 µs)."""

        @staticmethod
        def forward(ctx, x):
            x = _dense(x)  # another layout is read through a row-major copy
            out = torch.empty_like(x)  # x's strides
            forward_kernel(x, out, cuda_stream(x))
            ctx.save_for_backward(out)
            return out

        @staticmethod
        @first_order(name)
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            out = torch.empty_like(y)  # y is dense: out has its strides
            backward_kernel(_like(grad, y), y, out, cuda_stream(y))
            return out

    EagerFn.__name__ = f"{name.capitalize()}Function"
    return forward_op, EagerFn


relu_op, _ReluFn = _define("relu", _C.relu, _C.relu_backward)
sigmoid_op, _SigmoidFn = _define("sigmoid", _C.sigmoid, _C.sigmoid_backward)


class _ReluInPlaceFn(_ReluFn):
    """relu_(x): the kernel writes max(x, 0) over x (element-wise, so reading and writing
    one buffer is safe). mark_dirty bumps x's version, so autograd still refuses a leaf
    that requires grad and notices a tensor some other op saved being overwritten, as for
    torch.relu_. The backward is relu's: it reads the result, which x now holds."""

    @staticmethod
    def forward(ctx, x):
        _C.relu(x, x, cuda_stream(x))
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x


# The eager entry points, written out per op (no shared helper: every Python
# call and attribute lookup is ≈ 0.1 µs on a path whose kernels take ~10 µs).
_grad_enabled = torch.is_grad_enabled
_relu_apply = lean_apply(_ReluFn)
_sigmoid_apply = lean_apply(_SigmoidFn)
_relu_inplace_apply = lean_apply(_ReluInPlaceFn)


def relu(x: torch.Tensor) -> torch.Tensor:
    if use_custom_op(x):
        return dispatcher_op(relu_op)(x)
    if x.requires_grad and _grad_enabled():
        return _relu_apply(x)
    x = _dense(x)  # no autograd needed: the kernel directly
    out = torch.empty_like(x)
    _C.relu(x, out, cuda_stream(x))
    return out


def relu_(x: torch.Tensor) -> torch.Tensor:
    """relu(x) written over x, returning x (torch.relu_, nn.ReLU(inplace=True))."""
    if use_custom_op(x) or not x.is_contiguous():  # the functional op, copied back: same effect
        return x.copy_(relu(x))
    if x.requires_grad and _grad_enabled():
        return _relu_inplace_apply(x)
    _C.relu(x, x, cuda_stream(x))
    increment_version(x)  # as any in-place op: a graph that saved x must notice the change
    return x


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    if use_custom_op(x):
        return dispatcher_op(sigmoid_op)(x)
    if x.requires_grad and _grad_enabled():
        return _sigmoid_apply(x)
    x = _dense(x)
    out = torch.empty_like(x)
    _C.sigmoid(x, out, cuda_stream(x))
    return out
