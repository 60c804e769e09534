"""Standalone ops: NumPy arrays in, NumPy arrays out; torch tensors (CPU or
CUDA) in, torch tensors out (differentiable where the op has a gradient)."""
from .activation import *  # noqa: F401,F403
from .activation import __all__ as _activation
from .adam import *  # noqa: F401,F403
from .adam import __all__ as _adam
from .conv import *  # noqa: F401,F403
from .conv import __all__ as _conv
from .linear import *  # noqa: F401,F403
from .linear import __all__ as _linear
from .linreg import *  # noqa: F401,F403
from .linreg import __all__ as _linreg
from .loss import *  # noqa: F401,F403
from .loss import __all__ as _loss
from .pool import *  # noqa: F401,F403
from .pool import __all__ as _pool

__all__ = [*_activation, *_adam, *_conv, *_linear, *_linreg, *_loss, *_pool]
