"""torch ops of the linear family: oxkernels::linear and oxkernels::linear_backward
(custom ops with fake impls and autograd, what torch.compile sees), plus an eager fast
path through a torch.autograd.Function that calls the same _C kernels (a custom op
costs several µs of dispatch per call, comparable to a whole small layer)."""
import math
from typing import Optional

import torch

from .. import _C
from ._glue import (call_backward, cuda_stream, dispatcher_op, first_order, lean_apply, register_autograd,
                    use_custom_op)

Tensor = torch.Tensor


def _act(activation: str):
    return None if activation == "none" else activation


def gemm_workspace(like: Tensor, *products):
    """CUDA scratch for the split-K sums of these (M, N, K) products (csrc/gemm.h); None when
    none needs it (and on the CPU)."""
    if not like.is_cuda:
        return None
    n = max((_C.gemm_cuda_workspace(*mnk) for mnk in products), default=0)
    return like.new_empty((n,)) if n else None


def _workspace(x, weight, forward=False, need_x=False, need_weight=False):
    """The scratch of the layer's products: y = x Wᵀ (R×N×K), dx = dz W (R×K×N), dW = dzᵀ x (N×K×R)."""
    if not x.is_cuda or x.dim() < 1 or weight.dim() != 2:
        return None  # a bad shape: the kernel's checks say what is wrong
    R, (N, K) = math.prod(x.shape[:-1]), weight.shape
    return gemm_workspace(x, *([(R, N, K)] if forward else []), *([(R, K, N)] if need_x else []),
                          *([(N, K, R)] if need_weight else []))


def _forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str) -> Tensor:
    x = x.contiguous()
    bias = bias.contiguous() if bias is not None else None
    out = torch.empty((*x.shape[:-1], weight.shape[0] if weight.dim() >= 1 else 1), dtype=x.dtype,
                      device=x.device)
    _C.linear(x, weight.contiguous(), bias, out, _act(activation), cuda_stream(x), _workspace(x, weight, forward=True))
    return out


def _backward(grad_out, x, weight, out, activation, need_x, need_weight, need_bias):
    grad_out = grad_out.contiguous()
    dx = torch.empty_like(x) if need_x else None
    dw = torch.empty_like(weight) if need_weight else None
    db = torch.empty(weight.shape[0], dtype=x.dtype, device=x.device) if need_bias else None
    _C.linear_backward(grad_out, x, weight, out, _act(activation), dx, dw, db, cuda_stream(x),
                       _workspace(x, weight, need_x=need_x, need_weight=need_weight))
    return dx, dw, db


@torch.library.custom_op("oxkernels::linear", mutates_args=())
def linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str) -> Tensor:
    """act(x weightᵀ + bias); activation is "none", "relu" or "sigmoid"."""
    return _forward(x, weight, bias, activation)


@linear_op.register_fake
def _(x, weight, bias, activation):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("oxkernels::linear_backward", mutates_args=())
def linear_backward_op(grad_out: Tensor, x: Tensor, weight: Tensor, out: Optional[Tensor], activation: str,
                       need_x: bool, need_weight: bool, need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias); a gradient not asked for is an empty (0,) tensor."""
    x = x.contiguous()
    dx, dw, db = _backward(grad_out, x, weight.contiguous(), out.contiguous() if out is not None else None,
                           activation, need_x, need_weight, need_bias)
    def none():  # a fresh (0,) tensor per missing gradient: outputs of a custom op must not alias
        return x.new_empty((0,))

    return (none() if dx is None else dx, none() if dw is None else dw, none() if db is None else db)


@linear_backward_op.register_fake
def _(grad_out, x, weight, out, activation, need_x, need_weight, need_bias):
    return (x.new_empty(x.shape if need_x else (0,)), x.new_empty(weight.shape if need_weight else (0,)),
            x.new_empty((weight.shape[0],) if need_bias else (0,)))


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation = inputs
    ctx.save_for_backward(x, weight, output if activation != "none" else None)
    ctx.activation = activation
    ctx.has_bias = bias is not None


def _op_backward(ctx, grad_out):
    x, weight, out = ctx.saved_tensors
    need_x, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_bias = ctx.has_bias and ctx.needs_input_grad[2]
    dx, dw, db = call_backward(linear_backward_op, grad_out, x, weight, out, ctx.activation, need_x, need_weight,
                               need_bias)
    return (dx if need_x else None, dw if need_weight else None, db if need_bias else None, None)


register_autograd(linear_op, _op_backward, _setup_context)



class _LinearFunction(torch.autograd.Function):
    """Eager fast path: same kernels as the custom ops, less dispatch. Per call it does only
    what the kernels need (allocations by empty_like / new_empty, which cost less than
    torch.empty(shape, dtype=, device=)); the kernels check the arguments. `act` is the
    kernels' form: None, "relu" or "sigmoid"."""

    @staticmethod
    def forward(ctx, x, weight, bias, act):
        x, weight = x.contiguous(), weight.contiguous()  # no-ops (returning self) when contiguous
        bias = bias.contiguous() if bias is not None else None
        out = x.new_empty((*x.shape[:-1], weight.shape[0] if weight.dim() >= 1 else 1))
        _C.linear(x, weight, bias, out, act, cuda_stream(x), _workspace(x, weight, forward=True))
        ctx.save_for_backward(x, weight, out if act is not None else None)
        ctx.act = act
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @first_order("linear")
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        dx = torch.empty_like(x) if need_x else None
        dw = torch.empty_like(weight) if need_weight else None
        db = weight.new_empty(weight.shape[:1]) if need_bias and ctx.has_bias else None
        _C.linear_backward(grad_out.contiguous(), x, weight, out, ctx.act, dx, dw, db, cuda_stream(x),
                           _workspace(x, weight, need_x=dx is not None, need_weight=dw is not None))
        return dx, dw, db, None


_linear_apply = lean_apply(_LinearFunction)

_ACTIVATIONS = {None: "none", "relu": "relu", "sigmoid": "sigmoid"}


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: Optional[str] = None) -> Tensor:
    """Differentiable act(x weightᵀ + bias) on torch tensors."""
    act = _ACTIVATIONS.get(activation)
    if act is None:
        raise ValueError(f"linear: argument 'activation' must be None, 'relu' or 'sigmoid', got {activation!r}")
    if use_custom_op(x):
        return dispatcher_op(linear_op)(x, weight, bias, act)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _linear_apply(x, weight, bias, activation)
    return _forward(x, weight, bias, act)
