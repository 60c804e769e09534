"""FLOP formulas of our matrix products and convolutions for torch.utils.flop_counter.

They count as torch counts its own ops: 2 per multiply-add of a product or convolution, and
nothing for activations, pooling or losses. So FlopCounterMode totals a model built from
oxkernels.nn as it totals its torch.nn twin, forward and backward. (Under a dispatch mode our
ops go through the dispatcher, where the mode sees them: see use_custom_op.) They are
registered when oxkernels' torch layer loads (importing oxkernels.nn, or the first op on a
tensor); a FlopCounterMode copies the registry when it is created, so one created before that
does not know them.
"""
import math

import torch
from torch.utils import flop_counter

from . import conv as _conv_ops, linear as _linear_ops  # noqa: F401  (registers the ops counted here)

ops = torch.ops.oxkernels


def _linear_flops(x_shape, weight_shape):
    """y = x Wᵀ: R·N·K multiply-adds, R the rows of x, W of shape (N, K)."""
    out_features, in_features = weight_shape
    return 2 * math.prod(x_shape[:-1]) * out_features * in_features


def _conv_flops(x_shape, weight_shape, stride, padding):
    """Every output element (N, Co, Ho, Wo) of a convolution takes Ci·kh·kw multiply-adds."""
    c_out, c_in, kh, kw = weight_shape
    n = x_shape[0] if len(x_shape) == 4 else 1  # an unbatched (C, H, W) image is one
    h, w = x_shape[-2:]
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    return 2 * n * c_out * max(ho, 0) * max(wo, 0) * c_in * kh * kw


def _register(op):
    return flop_counter.register_flop_formula(op)


@_register(ops.linear)
def _linear(x, weight, bias, activation, out_shape=None, **kwargs):
    return _linear_flops(x, weight)


@_register(ops.linear_backward)
def _linear_backward(grad, x, weight, out, activation, need_x, need_weight, need_bias, out_shape=None, **kwargs):
    """dx = dz W and dW = dzᵀ x: one product of the forward's size each (db is a sum)."""
    return _linear_flops(x, weight) * (int(need_x) + int(need_weight))


@_register([ops.conv2d, ops.conv2d_relu_maxpool2d])
def _conv(x, weight, bias, stride, padding, *pool, out_shape=None, **kwargs):
    return _conv_flops(x, weight, stride, padding)


@_register(ops.conv2d_backward)
def _conv_backward(grad, x, weight, stride, padding, needs, out_shape=None, **kwargs):
    """∂x and ∂W: one convolution of the forward's size each (∂b is a sum)."""
    return _conv_flops(x, weight, stride, padding) * (int(needs[0]) + int(needs[1]))


@_register(ops.conv2d_relu_maxpool2d_backward)
def _fused_backward(grad, indices, x, weight, stride, padding, pool, needs, out_shape=None, **kwargs):
    return _conv_flops(x, weight, stride, padding) * (int(needs[0]) + int(needs[1]))
