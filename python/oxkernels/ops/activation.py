"""Elementwise activations: relu and sigmoid, forward and backward.

    relu(x)    = max(x, 0)            relu_backward(g, y)    = g · [y > 0]
    sigmoid(x) = 1 / (1 + e^{−x})     sigmoid_backward(g, y) = g · y · (1 − y)

The backwards take the forward output y. Torch tensors in: differentiable torch
ops (autograd through the same kernels); NumPy in: NumPy out.
"""
from .. import _C
from .._arrays import TORCH, array_kind, dense, empty, stream_of

__all__ = ["relu", "sigmoid", "relu_backward", "sigmoid_backward"]


# Set on the first torch tensor: torch.Tensor and the eager torch entry points.
# `type(x) is _Tensor` then skips array_kind (≈ 1 µs); subclasses and everything
# else still take the checked path.
_Tensor = None
_eager = {}


def _unary(name, x):
    global _Tensor
    if array_kind(name, x=x) == TORCH:
        import torch

        from .._torch import activation

        _eager.update(relu=activation.relu, sigmoid=activation.sigmoid)
        _Tensor = torch.Tensor
        return _eager[name](x)
    x = dense(x)
    out = empty(x, x.shape)
    getattr(_C, name)(x, out, 0)
    return out


def _backward(name, grad, y):
    array_kind(name, grad=grad, y=y)
    grad, y = dense(grad), dense(y)
    out = empty(y, y.shape)
    getattr(_C, name)(grad, y, out, stream_of(y))
    return out


def relu(x):
    """max(x, 0) elementwise (NaN stays NaN). float32 (CPU/CUDA) or float64, any layout."""
    if type(x) is _Tensor:
        return _eager["relu"](x)
    return _unary("relu", x)


def sigmoid(x):
    """1 / (1 + e^{−x}) elementwise, stable for any x. float32 (CPU/CUDA) or float64, any layout."""
    if type(x) is _Tensor:
        return _eager["sigmoid"](x)
    return _unary("sigmoid", x)


def relu_backward(grad, y):
    """Gradient of relu from its output y: grad where y > 0, else 0 (0 at x = 0, as torch)."""
    return _backward("relu_backward", grad, y)


def sigmoid_backward(grad, y):
    """Gradient of sigmoid from its output y: grad · y · (1 − y)."""
    return _backward("sigmoid_backward", grad, y)
