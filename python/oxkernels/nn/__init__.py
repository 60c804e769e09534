"""Drop-in torch modules built on the oxkernels ops (import needs torch)."""
from .. import _torch

_torch.load()

from .conv import Conv2d, ConvReLUMaxPool2d  # noqa: E402

__all__: list = ["Conv2d", "ConvReLUMaxPool2d"]
from .activation import *  # noqa: E402,F401,F403
from .activation import __all__ as _activation  # noqa: E402
from .loss import *  # noqa: E402,F401,F403
from .loss import __all__ as _loss  # noqa: E402
from .pool import *  # noqa: E402,F401,F403
from .pool import __all__ as _pool  # noqa: E402

__all__: list = [*_activation, *_loss, *_pool]
from .linear import Linear  # noqa: E402

__all__: list = ["Linear"]
