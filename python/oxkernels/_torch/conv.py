"""torch.library custom ops for conv2d and the fused conv → ReLU → max-pool block:
schemas, fake (meta) implementations and autograd. The backward passes are
custom ops too, so torch.compile(fullgraph=True) traces a training step."""
from typing import Optional

import torch

from .. import _C
from ._glue import (call_backward, cuda_stream, dispatcher_op, first_order, lean_apply, register_autograd,
                    use_custom_op)


def _out_hw(x, weight, stride, padding):
    if len(stride) != 2 or len(padding) != 2 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"oxkernels conv: stride must be 2 ints >= 1 and padding 2 ints >= 0, got {stride}, {padding}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"oxkernels conv: x and weight must have 4 dimensions, got shapes {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}")
    oh = (x.shape[2] + 2 * padding[0] - weight.shape[2]) // stride[0] + 1
    ow = (x.shape[3] + 2 * padding[1] - weight.shape[3]) // stride[1] + 1
    return oh, ow


def _grads(x, weight, needs):
    """Fresh gradient buffers; an unwanted gradient is an empty (0,) tensor (the
    schema has no optional outputs), turned into None by the autograd formulas."""
    gx = torch.empty_like(x) if needs[0] else x.new_empty((0,))
    gw = torch.empty_like(weight) if needs[1] else x.new_empty((0,))
    gb = x.new_empty((weight.shape[0],)) if needs[2] else x.new_empty((0,))
    return gx, gw, gb


def grad_workspace(x, weight, stride, padding, needs, fused=False):
    """CUDA scratch (csrc/conv.h) of conv2d's backward (the per-image-group sums of ∂L/∂w and
    ∂L/∂b) or, with `fused`, of the fused block's (also its dense ∂L/∂y); None when not needed."""
    if not x.is_cuda or not (any(needs) if fused else needs[1] or needs[2]):
        return None
    oh, ow = _out_hw(x, weight, stride, padding)
    size = _C.conv2d_relu_maxpool2d_grad_workspace if fused else _C.conv2d_grad_workspace
    n = size(x.shape[0], x.shape[1], weight.shape[0], weight.shape[2], weight.shape[3], oh, ow)
    return x.new_empty((n,)) if n else None


def _or_none(t, needed):
    return t if needed else None


# ---- conv2d -----------------------------------------------------------------
def conv2d_forward(x, weight, bias, stride, padding):
    """The kernel call behind both the custom op and the eager fast path."""
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    oh, ow = _out_hw(x, weight, stride, padding)
    y = x.new_empty((x.shape[0], weight.shape[0], max(oh, 0), max(ow, 0)))
    _C.conv2d(x, weight, bias, stride[0], stride[1], padding[0], padding[1], y, cuda_stream(x))
    return y


@torch.library.custom_op("oxkernels::conv2d", mutates_args=())
def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
           padding: list[int]) -> torch.Tensor:
    return conv2d_forward(x, weight, bias, stride, padding)


@conv2d.register_fake
def _(x, weight, bias, stride, padding):
    oh, ow = _out_hw(x, weight, stride, padding)
    return x.new_empty((x.shape[0], weight.shape[0], oh, ow))


def conv2d_grads(grad_out, x, weight, stride, padding, needs):
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    gx, gw, gb = _grads(x, weight, needs)
    _C.conv2d_backward(grad_out, x, weight, stride[0], stride[1], padding[0], padding[1],
                       _or_none(gx, needs[0]), _or_none(gw, needs[1]), _or_none(gb, needs[2]), cuda_stream(x),
                       grad_workspace(x, weight, stride, padding, needs))
    return gx, gw, gb


@torch.library.custom_op("oxkernels::conv2d_backward", mutates_args=())
def conv2d_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                    padding: list[int], needs: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return conv2d_grads(grad_out, x, weight, stride, padding, needs)


@conv2d_backward.register_fake
def _(grad_out, x, weight, stride, padding, needs):
    return _grads(x, weight, needs)


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (list(stride), list(padding))
    ctx.has_bias = bias is not None


def _conv2d_grad(ctx, grad):
    x, weight = ctx.saved_tensors
    stride, padding = ctx.geometry
    nx, nw, nb = ctx.needs_input_grad[:3]
    needs = [bool(nx), bool(nw), bool(nb and ctx.has_bias)]
    gx, gw, gb = call_backward(conv2d_backward, grad, x, weight, stride, padding, needs)
    return _or_none(gx, needs[0]), _or_none(gw, needs[1]), _or_none(gb, needs[2]), None, None


register_autograd(conv2d, _conv2d_grad, _conv2d_setup)


# ---- fused conv → ReLU → max-pool --------------------------------------------
# What the forward saves: x, weight and the uint8 window position of each pooled
# output (255: ReLU blocked the gradient) — 1 byte per pooled output. The
# full-resolution conv output is never written: the indices make ∂L/∂y exact
# without recomputing the convolution, and x, weight are needed for ∂L/∂w and
# ∂L/∂x anyway. (The CUDA backward expands ∂L/∂y at full resolution into its
# workspace for the time of the call, which is faster than reading it through
# the indices in every tap; the CPU backward does so where it pays, see
# csrc/cpu/conv_backward.cpp.) Saving y (4 bytes per conv output, 16×
# the indices at pool 2) would only help a backward that recomputes the argmax.
def fused_forward(x, weight, bias, stride, padding, pool):
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    oh, ow = _out_hw(x, weight, stride, padding)
    shape = (x.shape[0], weight.shape[0], max(oh, 0) // pool, max(ow, 0) // pool) if pool > 0 else (0,)
    out = x.new_empty(shape)
    idx = torch.empty(shape, dtype=torch.uint8, device=x.device)
    _C.conv2d_relu_maxpool2d(x, weight, bias, stride[0], stride[1], padding[0], padding[1], pool, out, idx,
                             cuda_stream(x))
    return out, idx


@torch.library.custom_op("oxkernels::conv2d_relu_maxpool2d", mutates_args=())
def conv2d_relu_maxpool2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
                          padding: list[int], pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    return fused_forward(x, weight, bias, stride, padding, pool)


@conv2d_relu_maxpool2d.register_fake
def _(x, weight, bias, stride, padding, pool):
    oh, ow = _out_hw(x, weight, stride, padding)
    shape = (x.shape[0], weight.shape[0], oh // pool, ow // pool)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.uint8)


def fused_grads(grad_out, indices, x, weight, stride, padding, pool, needs):
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    gx, gw, gb = _grads(x, weight, needs)
    _C.conv2d_relu_maxpool2d_backward(grad_out, indices.contiguous(), x, weight, stride[0], stride[1], padding[0],
                                      padding[1], pool, _or_none(gx, needs[0]), _or_none(gw, needs[1]),
                                      _or_none(gb, needs[2]), cuda_stream(x),
                                      grad_workspace(x, weight, stride, padding, needs, fused=True))
    return gx, gw, gb


@torch.library.custom_op("oxkernels::conv2d_relu_maxpool2d_backward", mutates_args=())
def conv2d_relu_maxpool2d_backward(grad_out: torch.Tensor, indices: torch.Tensor, x: torch.Tensor,
                                   weight: torch.Tensor, stride: list[int], padding: list[int], pool: int,
                                   needs: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return fused_grads(grad_out, indices, x, weight, stride, padding, pool, needs)


@conv2d_relu_maxpool2d_backward.register_fake
def _(grad_out, indices, x, weight, stride, padding, pool, needs):
    return _grads(x, weight, needs)


def _fused_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, pool = inputs
    _, idx = output
    ctx.save_for_backward(x, weight, idx)
    ctx.geometry = (list(stride), list(padding), pool)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(idx)


def _fused_grad(ctx, grad, _grad_idx):
    x, weight, idx = ctx.saved_tensors
    stride, padding, pool = ctx.geometry
    nx, nw, nb = ctx.needs_input_grad[:3]
    needs = [bool(nx), bool(nw), bool(nb and ctx.has_bias)]
    gx, gw, gb = call_backward(conv2d_relu_maxpool2d_backward, grad, idx, x, weight, stride, padding, pool, needs)
    return _or_none(gx, needs[0]), _or_none(gw, needs[1]), _or_none(gb, needs[2]), None, None, None


register_autograd(conv2d_relu_maxpool2d, _fused_grad, _fused_setup)


# ---- eager fast path ------------------------------------------------------------
# A custom op costs tens of µs per call in eager mode (measured ~0.3 ms per
# training step of conv2 at N=64, forward + backward, against 1.3 ms of kernel
# time). Outside torch.compile the ops module goes through these Functions,
# which call the same kernel functions as the custom ops: one set of kernels.
class Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding)
        ctx.has_bias = bias is not None
        return conv2d_forward(x, weight, bias, stride, padding)

    @staticmethod
    @first_order("conv2d")
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        nx, nw, nb = ctx.needs_input_grad[:3]
        needs = [bool(nx), bool(nw), bool(nb and ctx.has_bias)]
        gx, gw, gb = conv2d_grads(grad, x, weight, *ctx.geometry, needs)
        return _or_none(gx, needs[0]), _or_none(gw, needs[1]), _or_none(gb, needs[2]), None, None


class FusedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, pool):
        out, idx = fused_forward(x, weight, bias, stride, padding, pool)
        ctx.save_for_backward(x, weight, idx)
        ctx.geometry = (stride, padding, pool)
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    @first_order("conv2d_relu_maxpool2d")
    def backward(ctx, grad, _grad_idx):
        x, weight, idx = ctx.saved_tensors
        nx, nw, nb = ctx.needs_input_grad[:3]
        needs = [bool(nx), bool(nw), bool(nb and ctx.has_bias)]
        gx, gw, gb = fused_grads(grad, idx, x, weight, *ctx.geometry, needs)
        return _or_none(gx, needs[0]), _or_none(gw, needs[1]), _or_none(gb, needs[2]), None, None, None


_conv_apply = lean_apply(Conv2dFunction)
_fused_apply = lean_apply(FusedFunction)


def eager_conv2d(x, weight, bias, stride, padding):
    """torch.ops.oxkernels.conv2d semantics: the custom op while compiling, else the fast path."""
    if use_custom_op(x):
        return dispatcher_op(conv2d)(x, weight, bias, stride, padding)
    return _conv_apply(x, weight, bias, stride, padding)


def eager_conv2d_relu_maxpool2d(x, weight, bias, stride, padding, pool):
    if use_custom_op(x):
        return dispatcher_op(conv2d_relu_maxpool2d)(x, weight, bias, stride, padding, pool)
    return _fused_apply(x, weight, bias, stride, padding, pool)
