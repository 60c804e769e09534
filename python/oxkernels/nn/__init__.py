"""Drop-in torch modules built on the oxkernels ops (import needs torch)."""
from .. import _torch

_torch.load()

from .activation import *  # noqa: E402,F401,F403
from .activation import __all__ as _activation  # noqa: E402
from .conv import *  # noqa: E402,F401,F403
from .conv import __all__ as _conv  # noqa: E402
from .linear import *  # noqa: E402,F401,F403
from .linear import __all__ as _linear  # noqa: E402
from .loss import *  # noqa: E402,F401,F403
from .loss import __all__ as _loss  # noqa: E402
from .pool import *  # noqa: E402,F401,F403
from .pool import __all__ as _pool  # noqa: E402

__all__ = [*_activation, *_conv, *_linear, *_loss, *_pool]
