"""Drop-in ReLU, Sigmoid and Flatten."""
import torch

from .._torch import activation as _act
from ._scripting import NotScriptable

__all__ = ["ReLU", "Sigmoid", "Flatten"]


class ReLU(NotScriptable, torch.nn.ReLU):
    """torch.nn.ReLU on the oxkernels kernel; inplace=True writes the result over the input
    and returns it, as torch's does."""

    def forward(self, x):
        return _act.relu_(x) if self.inplace else _act.relu(x)


class Sigmoid(NotScriptable, torch.nn.Sigmoid):
    """torch.nn.Sigmoid on the oxkernels kernel."""

    def forward(self, x):
        return _act.sigmoid(x)


class Flatten(torch.nn.Flatten):
    """torch.nn.Flatten(start_dim=1, end_dim=-1): a view, no kernel needed."""
