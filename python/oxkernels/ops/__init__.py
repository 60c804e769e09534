"""Standalone ops: NumPy arrays in, NumPy arrays out; torch tensors (CPU or
CUDA) in, torch tensors out (differentiable where the op has a gradient)."""
from .linreg import *  # noqa: F401,F403
from .linreg import __all__ as _linreg
from .linear import *  # noqa: F401,F403
from .linear import __all__ as _linear

__all__ = [*_linreg, *_linear]
