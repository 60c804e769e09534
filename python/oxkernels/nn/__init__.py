"""Drop-in torch modules built on the oxkernels ops (import needs torch)."""
from .. import _torch

_torch.load()

__all__: list = []
