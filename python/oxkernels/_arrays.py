"""How Python arrays reach the kernels: which kind an argument is (NumPy or
torch), allocating outputs of the same kind, and the CUDA stream to run on.

The checks here are only the ones C++ cannot do: that an argument is an array
at all, and that all arrays of a call are of one kind. dtype, device, rank and
shape are checked once, in C++ (csrc/core/checks.h).
"""
import sys

import numpy as np

NUMPY = "numpy"
TORCH = "torch"


def _torch_module():
    return sys.modules.get("torch")


def is_torch(x) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def array_kind(op: str, **arrays) -> str:
    """'numpy' or 'torch' for the arrays of one call (None entries are skipped).

    Raises TypeError naming the argument when one is not an array, or when
    NumPy arrays and torch tensors are mixed."""
    kind = first = None
    for name, x in arrays.items():
        if x is None:
            continue
        if isinstance(x, np.ndarray):
            k = NUMPY
        elif is_torch(x):
            k = TORCH
        else:
            raise TypeError(
                f"{op}: argument '{name}' must be a NumPy array or a torch tensor, got {type(x).__name__}"
            )
        if kind is None:
            kind, first = k, name
        elif k != kind:
            raise TypeError(
                f"{op}: argument '{name}' is a {k} array but '{first}' is a {kind} array; "
                "pass arrays of one kind"
            )
    if kind == TORCH:
        from . import _torch

        _torch.load()
    return kind or NUMPY


def dense(x):
    """x laid out row-major: x itself when it already is (or is None), else a copy.
    Inputs the kernels only read go through this, so any view (transposed, sliced,
    negative strides) is accepted; outputs and arrays updated in place are not copied."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return x if x.flags.c_contiguous else np.ascontiguousarray(x)
    return x.contiguous()


def empty(like, shape, dtype=None):
    """An uninitialised array of the kind, device and (default) dtype of `like`."""
    if isinstance(like, np.ndarray):
        return np.empty(shape, dtype=like.dtype if dtype is None else dtype)
    torch = _torch_module()
    return torch.empty(shape, dtype=like.dtype if dtype is None else dtype, device=like.device)


def stream_of(x) -> int:
    """The CUDA stream (as an integer handle) that work on x should run on: torch's
    current stream for a CUDA tensor, 0 otherwise."""
    if is_torch(x) and x.is_cuda:
        from ._torch._glue import cuda_stream

        return cuda_stream(x)
    return 0


def int_pair(op: str, name: str, value) -> tuple:
    """An int or a pair of ints (anything with __index__) → (a, b); TypeError naming the argument otherwise."""
    bad = TypeError(f"{op}: argument '{name}' must be an int or a pair of ints, got {value!r}")
    if isinstance(value, bool):
        raise bad
    if hasattr(value, "__index__") and not hasattr(value, "__len__"):
        v = value.__index__()
        return v, v
    try:
        a, b = value
        if isinstance(a, bool) or isinstance(b, bool):
            raise bad
        return a.__index__(), b.__index__()
    except (TypeError, ValueError, AttributeError):
        raise bad from None

