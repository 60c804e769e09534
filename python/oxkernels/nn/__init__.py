"""Drop-in torch modules built on the oxkernels ops (import needs torch)."""
from .. import _torch

_torch.load()

from .linear import Linear  # noqa: E402

__all__: list = ["Linear"]
