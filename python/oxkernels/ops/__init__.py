"""Standalone ops: NumPy arrays in, NumPy arrays out; torch tensors (CPU or
CUDA) in, torch tensors out (differentiable where the op has a gradient)."""
from .adam import *  # noqa: F401,F403
from .adam import __all__ as _adam
from .linreg import *  # noqa: F401,F403
from .linreg import __all__ as _linreg
from .conv import *  # noqa: F401,F403
from .conv import __all__ as _conv

__all__ = [*_linreg, *_adam]
__all__ = [*_linreg, *_conv]
