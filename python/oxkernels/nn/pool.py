"""Drop-in MaxPool2d on the oxkernels max_pool2d kernels."""
import torch

from ..ops.pool import window
from .._torch import pool as _pool
from ._scripting import NotScriptable

__all__ = ["MaxPool2d"]


class MaxPool2d(NotScriptable, torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d with the same constructor and arguments (return_indices=True returns
    (output, indices) as torch's, for MaxUnpool2d)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self._window_of = None  # the attributes the cached window was computed from
        self._window()

    def _window(self):
        """ops.pool.window of the current attributes (torch reads them at each call too);
        stride None or empty means kernel_size, as in torch."""
        key = (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        if key != self._window_of:
            stride = None if self.stride is None or (isinstance(self.stride, (tuple, list)) and not self.stride) \
                else self.stride
            self._window_value = window("MaxPool2d", self.kernel_size, stride, self.padding, self.dilation,
                                        self.ceil_mode)
            self._window_of = key
        return self._window_value

    def forward(self, x):
        if self.return_indices:
            return _pool.max_pool2d_with_indices(x, self._window())
        return _pool.max_pool2d(x, self._window())
