"""torch ops for the loss family: oxkernels::cross_entropy, softmax,
log_softmax and their backward ops (custom ops with fake impls and autograd),
plus lean eager paths used by the public functions and CrossEntropyLoss.

The cross_entropy custom op (what torch.compile sees) saves only its inputs: backward
recomputes the row log-sum-exp fused with the gradient. So does the eager path on CUDA. On
the CPU the eager path computes the gradient for an incoming grad of 1 in the forward pass
instead and only scales it in backward: one kernel call instead of two for fwd+bwd, whose
per-call overhead dominates at the course's sizes (N ≤ 1024, C = 10). reduction is passed
to the kernels as an int: 0 = none, 1 = mean, 2 = sum.
"""
from typing import Optional

import torch

from .. import _C
from ._glue import (call_backward, cuda_stream, dispatcher_op, first_order, lean_apply, register_autograd,
                    use_custom_op)

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}



def _workspace(logits: torch.Tensor):
    """CUDA scratch (per-row losses / the valid-target count); None on the CPU."""
    if not logits.is_cuda:
        return None
    n = logits.shape[0] if logits.dim() == 2 else 1
    return torch.empty(max(n, 1), dtype=logits.dtype, device=logits.device)


def _loss_shape(logits, reduction):
    return (logits.shape[0],) if reduction == 0 and logits.dim() == 2 else ()


def _contiguous_or_none(t):
    return None if t is None else t.contiguous()


def _ce_forward(logits, target, reduction, label_smoothing, ignore_index, weight=None):
    logits, target = logits.contiguous(), target.contiguous()
    out = torch.empty(_loss_shape(logits, reduction), dtype=logits.dtype, device=logits.device)
    _C.cross_entropy(logits, target, out, reduction, label_smoothing, ignore_index, _workspace(logits),
                     cuda_stream(logits), None, _contiguous_or_none(weight))
    return out


def _ce_backward(grad, logits, target, reduction, label_smoothing, ignore_index, weight=None):
    logits, target = logits.contiguous(), target.contiguous()
    out = torch.empty_like(logits)  # cheaper than torch.empty(shape, dtype=, device=)
    _C.cross_entropy_backward(grad.contiguous(), logits, target, out, reduction, label_smoothing, ignore_index,
                              _workspace(logits), cuda_stream(logits), _contiguous_or_none(weight))
    return out


@torch.library.custom_op("oxkernels::cross_entropy_backward", mutates_args=())
def cross_entropy_backward_op(grad: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, reduction: int,
                              label_smoothing: float, ignore_index: int,
                              weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _ce_backward(grad, logits, target, reduction, label_smoothing, ignore_index, weight)


@cross_entropy_backward_op.register_fake
def _(grad, logits, target, reduction, label_smoothing, ignore_index, weight=None):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.custom_op("oxkernels::cross_entropy", mutates_args=())
def cross_entropy_op(logits: torch.Tensor, target: torch.Tensor, reduction: int, label_smoothing: float,
                     ignore_index: int, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    return _ce_forward(logits, target, reduction, label_smoothing, ignore_index, weight)


@cross_entropy_op.register_fake
def _(logits, target, reduction, label_smoothing, ignore_index, weight=None):
    return logits.new_empty(_loss_shape(logits, reduction))


def _ce_setup(ctx, inputs, output):
    logits, target, ctx.reduction, ctx.label_smoothing, ctx.ignore_index, weight = inputs
    ctx.save_for_backward(logits, target, weight)


def _ce_op_backward(ctx, grad):
    logits, target, weight = ctx.saved_tensors
    dx = call_backward(cross_entropy_backward_op, grad.contiguous(), logits, target, ctx.reduction,
                       ctx.label_smoothing, ctx.ignore_index, weight)
    return dx, None, None, None, None, None


register_autograd(cross_entropy_op, _ce_op_backward, _ce_setup)


class _CrossEntropyFn(torch.autograd.Function):
    """Eager path, without the custom-op dispatch. On the CPU the forward kernel also writes
    the gradient for an incoming grad of 1 in the same pass over the logits (csrc/loss.h), so
    backward is a scale by the incoming gradient g: dx = G · g (G · g[:, None] for 'none').
    On CUDA the backward kernels run in backward and read g on the device: computing G in the
    forward took a fill and two kernels there, and the scale one more launch here."""

    @staticmethod
    def forward(ctx, logits, target, reduction, label_smoothing, ignore_index, weight):
        if logits.is_cuda:
            out = _ce_forward(logits, target, reduction, label_smoothing, ignore_index, weight)
            grad = None
        else:
            dense_logits = logits.contiguous()  # a row-major copy of another layout (logits itself is saved)
            out = logits.new_empty(_loss_shape(logits, reduction))  # (new_/empty_like: cheaper than torch.empty)
            grad = torch.empty_like(dense_logits)
            _C.cross_entropy(dense_logits, target.contiguous(), out, reduction, label_smoothing, ignore_index, None,
                             0, grad, _contiguous_or_none(weight))
        ctx.grad = grad  # not an input or output of the node: no reference cycle, no version check needed
        ctx.args = (reduction, label_smoothing, ignore_index)
        ctx.save_for_backward(logits, target, weight)
        return out

    @staticmethod
    @first_order("cross_entropy")
    def backward(ctx, g):
        grad = ctx.grad
        if grad is None:  # CUDA, or handed out by an earlier backward of this graph (retain_graph)
            logits, target, weight = ctx.saved_tensors
            return _ce_backward(g, logits, target, *ctx.args, weight), None, None, None, None, None
        if g.dim() == 0:
            if g.item() == 1.0:  # the usual loss.backward(): G is the answer (a CPU tensor here)
                ctx.grad = None  # hand it over: the caller may modify it in place
                return grad, None, None, None, None, None
            return grad * g, None, None, None, None, None
        return grad * g.unsqueeze(-1), None, None, None, None, None


_ce_apply = lean_apply(_CrossEntropyFn)


def class_indices(target):
    """Class targets as the int64 the kernels read: uint8 ones (torch accepts them too, and
    MNIST's labels are bytes) are widened; anything else (floating targets are class
    probabilities) goes to the kernel's checks."""
    return target.long() if target.dtype == torch.uint8 else target


def _refuse_grad_of(name):
    """Our backward gives ∂/∂logits only: a probability target or a weight that requires grad
    would silently get none."""
    if torch.is_grad_enabled():
        raise NotImplementedError(f"cross_entropy: gradients with respect to argument '{name}' are not "
                                  "implemented (only the logits'); pass it detached, or use "
                                  "torch.nn.functional.cross_entropy")


def cross_entropy(logits, target, reduction: int, label_smoothing: float, ignore_index: int, weight=None):
    target = class_indices(target)
    if target.requires_grad:
        _refuse_grad_of("target")
    if weight is not None and weight.requires_grad:
        _refuse_grad_of("weight")
    if use_custom_op(logits):
        return dispatcher_op(cross_entropy_op)(logits, target, reduction, label_smoothing, ignore_index, weight)
    if logits.requires_grad and torch.is_grad_enabled():
        return _ce_apply(logits, target, reduction, label_smoothing, ignore_index, weight)
    return _ce_forward(logits, target, reduction, label_smoothing, ignore_index, weight)


def _define_softmax(name: str, forward_kernel, backward_kernel):
    @torch.library.custom_op(f"oxkernels::{name}_backward", mutates_args=())
    def backward_op(grad: torch.Tensor, y: torch.Tensor, dim: int) -> torch.Tensor:
        grad, y = grad.contiguous(), y.contiguous()
        out = torch.empty_like(y)
        backward_kernel(grad, y, dim, out, cuda_stream(y))
        return out

    @backward_op.register_fake
    def _(grad, y, dim):
        return torch.empty_like(y, memory_format=torch.contiguous_format)

    @torch.library.custom_op(f"oxkernels::{name}", mutates_args=())
    def forward_op(x: torch.Tensor, dim: int) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        forward_kernel(x, dim, out, cuda_stream(x))
        return out

    @forward_op.register_fake
    def _(x, dim):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def setup_context(ctx, inputs, output):
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)

    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return call_backward(backward_op, grad.contiguous(), y, ctx.dim), None

    register_autograd(forward_op, backward, setup_context)

    class EagerFn(torch.autograd.Function):
        """Same kernels without the custom-op dispatch, for eager mode."""

        @staticmethod
        def forward(ctx, x, dim):
            x = x.contiguous()
            out = torch.empty_like(x)
            forward_kernel(x, dim, out, cuda_stream(x))
            ctx.dim = dim
            ctx.save_for_backward(out)
            return out

        @staticmethod
        @first_order(name)
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            out = torch.empty_like(y)
            backward_kernel(grad.contiguous(), y, ctx.dim, out, cuda_stream(y))
            return out, None

    def apply(x, dim):
        if use_custom_op(x):
            return dispatcher_op(forward_op)(x, dim)
        if x.requires_grad and torch.is_grad_enabled():
            return EagerFn.apply(x, dim)
        x = x.contiguous()
        out = torch.empty_like(x)
        forward_kernel(x, dim, out, cuda_stream(x))
        return out

    return forward_op, apply


softmax_op, softmax = _define_softmax("softmax", _C.softmax, _C.softmax_backward)
log_softmax_op, log_softmax = _define_softmax("log_softmax", _C.log_softmax, _C.log_softmax_backward)
