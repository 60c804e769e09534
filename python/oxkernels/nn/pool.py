"""Drop-in MaxPool2d on the oxkernels max_pool2d kernels."""
import torch

from ..ops.pool import _geometry
from .._torch import pool as _pool
from ._scripting import NotScriptable

__all__ = ["MaxPool2d"]


def _is_zero(v) -> bool:
    return v == 0 or (isinstance(v, (tuple, list)) and all(e == 0 for e in v))


def _is_one(v) -> bool:
    return v == 1 or (isinstance(v, (tuple, list)) and all(e == 1 for e in v))


class MaxPool2d(NotScriptable, torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d with the same constructor; supported: padding=0, dilation=1,
    return_indices=False, ceil_mode=False (anything else raises ValueError)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        unsupported = {"padding": not _is_zero(padding), "dilation": not _is_one(dilation),
                       "return_indices": bool(return_indices), "ceil_mode": bool(ceil_mode)}
        for name, bad in unsupported.items():
            if bad:
                raise ValueError(f"oxkernels.nn.MaxPool2d: argument '{name}'={getattr(self, name)!r} is not supported "
                                 "(padding=0, dilation=1, return_indices=False, ceil_mode=False only)")
        self._geometry_of = None  # (kernel_size, stride) the cached geometry was computed from
        self._geometry()

    def _geometry(self):
        """(kh, kw, sh, sw) from the current attributes (torch reads them at each call too);
        stride None or empty means kernel_size, as in torch."""
        key = (self.kernel_size, self.stride)
        if key != self._geometry_of:
            stride = None if self.stride is None or (isinstance(self.stride, (tuple, list)) and not self.stride) \
                else self.stride
            self._geometry_value = _geometry("MaxPool2d", self.kernel_size, stride)
            self._geometry_of = key
        return self._geometry_value

    def forward(self, x):
        return _pool.max_pool2d(x, *self._geometry())
