"""Linear layer y = act(x Wᵀ + b) with the bias and activation fused into our matrix
product's epilogue, and the raw product itself (`matmul`)."""
from .. import _C
from .._arrays import TORCH, array_kind, dense, empty, stream_of

__all__ = ["linear", "matmul"]

def _out_features(weight):
    return weight.shape[0] if weight.ndim >= 1 else 1  # a wrong rank is reported by the C++ checks


_torch_fast = None  # (torch.Tensor, the torch linear) once a torch call has been seen


def linear(x, weight, bias=None, activation=None):
    """y = act(x weightᵀ + bias), like torch.nn.functional.linear followed by `activation`
    (None, "relu" or "sigmoid") but in one kernel.

    x: (..., in_features); weight: (out_features, in_features); bias: (out_features,) or None.
    NumPy arrays in give a NumPy array; torch tensors in give a differentiable torch tensor
    (torch.ops.oxkernels.linear / linear_backward under torch.compile, an autograd.Function
    over the same kernels in eager mode; act'(y) is fused into both backward products).
    """
    global _torch_fast
    fast = _torch_fast  # skips the generic kind check on the hot path of a training loop
    if fast is not None and isinstance(x, fast[0]) and isinstance(weight, fast[0]) \
            and (bias is None or isinstance(bias, fast[0])):
        return fast[1](x, weight, bias, activation)
    kind = array_kind("linear", x=x, weight=weight, bias=bias)
    if kind == TORCH:
        import torch

        from .._torch.linear import linear as torch_linear

        _torch_fast = (torch.Tensor, torch_linear)
        return torch_linear(x, weight, bias, activation)
    x, weight, bias = dense(x), dense(weight), dense(bias)
    out = empty(x, (*x.shape[:-1], _out_features(weight)))
    _C.linear(x, weight, bias, out, activation)
    return out


def matmul(a, b, bias=None, activation=None, trans_a=False, trans_b=False):
    """act(op(a) op(b) + bias) for 2-D a, b with our GEMM (op = transpose when trans_* is set;
    strided inputs are read in place). Not differentiable: use `linear` for autograd."""
    kind = array_kind("matmul", a=a, b=b, bias=bias)
    m = a.shape[-1 if trans_a else 0] if a.ndim == 2 else 0
    n = b.shape[0 if trans_b else -1] if b.ndim == 2 else 0
    out = empty(a, (m, n))
    workspace = None
    if kind == TORCH and a.ndim == 2:
        from .._torch.linear import gemm_workspace

        workspace = gemm_workspace(a, (m, n, a.shape[0 if trans_a else -1]))
    _C.gemm(a, b, out, trans_a, trans_b, 1.0, 0.0, bias, activation, stream_of(a), workspace)
    return out
