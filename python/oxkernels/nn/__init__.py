"""Drop-in torch modules built on the oxkernels ops (import needs torch)."""
from .. import _torch

_torch.load()

from .conv import Conv2d, ConvReLUMaxPool2d  # noqa: E402

__all__: list = ["Conv2d", "ConvReLUMaxPool2d"]
