"""Drop-in convolution modules: same constructor arguments, parameter names,
default initialisation and state_dict keys as torch.nn.Conv2d (they subclass
it), running the oxkernels ops."""
import torch

from ..ops.conv import conv2d, conv2d_relu_maxpool2d
from ._scripting import NotScriptable

__all__ = ["Conv2d", "ConvReLUMaxPool2d"]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _resolve_padding(cls: str, padding, kernel_size, stride):
    """'valid' → 0, 'same' → k//2 for odd kernels and stride 1 (as torch, which refuses 'same'
    for strided convolutions); other strings are errors."""
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return 0
    if padding == "same" and any(s != 1 for s in _pair(stride)):
        raise ValueError(f"{cls}: padding='same' needs stride 1, got stride={stride!r}")
    ks = _pair(kernel_size)
    if padding == "same" and all(k % 2 == 1 for k in ks):
        return tuple(k // 2 for k in ks)
    raise ValueError(
        f"{cls}: padding={padding!r} is not supported (use an int, a pair, 'valid', or 'same' with odd kernels)"
    )


def _require(cls: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{cls}: {name}={value!r} is not supported by oxkernels (only {allowed[0]!r})")


class Conv2d(NotScriptable, torch.nn.Conv2d):
    """torch.nn.Conv2d computed by oxkernels.ops.conv2d (groups=1, dilation=1, zero padding)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        name = type(self).__name__
        padding = _resolve_padding(name, padding, kernel_size, stride)
        _require(name, "dilation", dilation if isinstance(dilation, int) else tuple(dilation), (1, (1, 1)))
        _require(name, "groups", groups, (1,))
        _require(name, "padding_mode", padding_mode, ("zeros",))
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=1,
                         groups=1, bias=bias, padding_mode="zeros", device=device, dtype=dtype)

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)


class ConvReLUMaxPool2d(NotScriptable, torch.nn.Conv2d):
    """max_pool2d(relu(conv2d(x)), pool) as one fused op; parameters, their
    initialisation and state_dict keys ('weight', 'bias') are those of
    torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, pool=2, bias=True,
                 device=None, dtype=None):
        name = type(self).__name__
        if isinstance(pool, bool) or not isinstance(pool, int) or not 1 <= pool <= 15:
            raise ValueError(f"{name}: pool must be an int in [1, 15], got {pool!r}")
        padding = _resolve_padding(name, padding, kernel_size, stride)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
                         device=device, dtype=dtype)
        self.pool = pool

    def extra_repr(self):
        return super().extra_repr() + f", pool={self.pool}"

    def forward(self, x):
        return conv2d_relu_maxpool2d(x, self.weight, self.bias, self.stride, self.padding, self.pool)
