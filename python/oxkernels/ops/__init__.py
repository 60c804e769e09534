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
from .pool import *  # noqa: F401,F403
from .pool import __all__ as _pool
from .activation import *  # noqa: F401,F403
from .activation import __all__ as _activation
from .loss import *  # noqa: F401,F403
from .loss import __all__ as _loss

__all__ = [*_linreg, *_pool, *_activation, *_loss]
from .linear import *  # noqa: F401,F403
from .linear import __all__ as _linear

__all__ = [*_linreg, *_linear]
