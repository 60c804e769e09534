"""Drop-in CrossEntropyLoss on the fused softmax cross-entropy kernels."""
import torch

from ..ops.loss import _reduction, cross_entropy
from .._torch import loss as _loss
from ._scripting import NotScriptable

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(NotScriptable, torch.nn.CrossEntropyLoss):
    """torch.nn.CrossEntropyLoss with the same constructor (size_average / reduce handled as
    torch does; weight a buffer as in torch), for (N, C), (C,) or (N, C, d1, …, dk) inputs and
    class-index or class-probability targets."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                 label_smoothing=0.0):
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        _reduction("CrossEntropyLoss", self.reduction)  # checked now; read again at each call, as torch does
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"CrossEntropyLoss: argument 'label_smoothing' must be in [0, 1], got {label_smoothing}")

    def forward(self, input, target):
        if input.dim() > 2:  # (N, C, d1, …, dk): the public op lays the elements out as rows
            return cross_entropy(input, target, self.reduction, self.label_smoothing, self.ignore_index, self.weight)
        return _loss.cross_entropy(input, target, _reduction("CrossEntropyLoss", self.reduction),
                                   float(self.label_smoothing), int(self.ignore_index), self.weight)
