"""oxkernels.nn.Linear: torch.nn.Linear (same arguments, init, state_dict keys) running on
our fused kernel, with an optional activation applied in the same kernel."""
import torch

from .._torch.linear import linear
from ._scripting import NotScriptable

__all__ = ["Linear"]


class Linear(NotScriptable, torch.nn.Linear):
    """y = act(x Wᵀ + b); `activation` is None (plain torch.nn.Linear), "relu" or "sigmoid"."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, activation=None):
        if activation not in (None, "relu", "sigmoid"):
            raise ValueError(f"Linear: argument 'activation' must be None, 'relu' or 'sigmoid', got {activation!r}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = activation

    def forward(self, x):
        return linear(x, self.weight, self.bias, self.activation)

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.activation is None else f"{s}, activation={self.activation!r}"
