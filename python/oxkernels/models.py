"""The course networks, built from oxkernels.nn, and their torch.nn twins.

    MLP(activation="relu")   Flatten → Linear(784,64) → act → Linear(64,32) → act → Linear(32,10)
    LeNet()                  Conv2d(3,6,5) → ReLU → MaxPool2d(2,2) → Conv2d(6,16,5) → ReLU →
                             MaxPool2d(2,2) → Flatten → Linear(400,120) → ReLU →
                             Linear(120,84) → ReLU → Linear(84,10)
    torch_reference("mlp" | "lenet", activation=...)   the same networks from torch.nn

Both versions create their layers in the same order with torch's default
initialisation and use the same attribute names (flatten, fc1..fc3; conv1,
conv2), so with the same torch.manual_seed they start from identical weights
and their state_dicts load into each other. The oxkernels MLP folds each
activation into its Linear (Linear(..., activation="relu")); the oxkernels LeNet
uses the fused ConvReLUMaxPool2d block when `fused` is true. Activations and
pooling carry no parameters, so the state_dict keys are the same either way.
"""
from __future__ import annotations

import torch
from torch import nn as tnn

__all__ = ["MLP", "LeNet", "torch_reference", "build_model", "ACTIVATIONS", "MODELS"]

ACTIVATIONS = ("relu", "sigmoid")
MODELS = ("mlp", "lenet")


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _torch_activation(activation):
    return {"relu": tnn.ReLU, "sigmoid": tnn.Sigmoid}[activation]()


def _oxnn():
    from . import nn as oxnn

    return oxnn


# ---------------------------------------------------------------------------- torch.nn reference

class TorchMLP(tnn.Module):
    def __init__(self, activation="relu"):
        super().__init__()
        _check_activation(activation)
        self.flatten = tnn.Flatten()
        self.fc1 = tnn.Linear(784, 64)
        self.act1 = _torch_activation(activation)
        self.fc2 = tnn.Linear(64, 32)
        self.act2 = _torch_activation(activation)
        self.fc3 = tnn.Linear(32, 10)

    def forward(self, x):
        x = self.act1(self.fc1(self.flatten(x)))
        x = self.act2(self.fc2(x))
        return self.fc3(x)


class TorchLeNet(tnn.Module):
    def __init__(self, activation="relu"):
        super().__init__()
        _check_activation(activation)
        self.conv1 = tnn.Conv2d(3, 6, 5)
        self.act1 = _torch_activation(activation)
        self.pool1 = tnn.MaxPool2d(2, 2)
        self.conv2 = tnn.Conv2d(6, 16, 5)
        self.act2 = _torch_activation(activation)
        self.pool2 = tnn.MaxPool2d(2, 2)
        self.flatten = tnn.Flatten()
        self.fc1 = tnn.Linear(400, 120)
        self.act3 = _torch_activation(activation)
        self.fc2 = tnn.Linear(120, 84)
        self.act4 = _torch_activation(activation)
        self.fc3 = tnn.Linear(84, 10)

    def forward(self, x):
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.act3(self.fc1(self.flatten(x)))
        x = self.act4(self.fc2(x))
        return self.fc3(x)


def torch_reference(name: str, activation: str = "relu") -> tnn.Module:
    """The course network `name` ("mlp" or "lenet") built from torch.nn."""
    if name == "mlp":
        return TorchMLP(activation)
    if name == "lenet":
        return TorchLeNet(activation)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


# ---------------------------------------------------------------------------- oxkernels

class MLP(tnn.Module):
    """The course's MNIST MLP on oxkernels.nn (activation folded into each hidden Linear)."""

    def __init__(self, activation="relu"):
        super().__init__()
        _check_activation(activation)
        oxnn = _oxnn()
        self.flatten = oxnn.Flatten()
        self.fc1 = oxnn.Linear(784, 64, activation=activation)
        self.fc2 = oxnn.Linear(64, 32, activation=activation)
        self.fc3 = oxnn.Linear(32, 10)

    def forward(self, x):
        return self.fc3(self.fc2(self.fc1(self.flatten(x))))


def _fused_conv_relu_pool(oxnn, in_channels, out_channels, kernel_size):
    """Conv2d(in, out, k) → ReLU → MaxPool2d(2, 2) as one oxkernels block. It holds `weight`
    and `bias` initialised exactly like torch.nn.Conv2d, so the keys are conv1.weight,
    conv1.bias as in the torch twin."""
    return oxnn.ConvReLUMaxPool2d(in_channels, out_channels, kernel_size, pool=2)


class LeNet(tnn.Module):
    """The course's CIFAR-10 CNN on oxkernels.nn.

    fused=None picks the fused ConvReLUMaxPool2d block when the activation is ReLU
    and oxkernels.nn provides it; fused=False always uses Conv2d, ReLU, MaxPool2d."""

    def __init__(self, activation="relu", fused=None):
        super().__init__()
        _check_activation(activation)
        oxnn = _oxnn()
        if fused is None:
            fused = activation == "relu" and hasattr(oxnn, "ConvReLUMaxPool2d")
        if fused and activation != "relu":
            raise ValueError("the fused conv block is ReLU only; use fused=False with sigmoid")
        self.fused = bool(fused)
        if self.fused:
            self.conv1 = _fused_conv_relu_pool(oxnn, 3, 6, 5)
            self.conv2 = _fused_conv_relu_pool(oxnn, 6, 16, 5)
        else:
            act = {"relu": oxnn.ReLU, "sigmoid": oxnn.Sigmoid}[activation]
            self.conv1 = oxnn.Conv2d(3, 6, 5)
            self.act1 = act()
            self.pool1 = oxnn.MaxPool2d(2, 2)
            self.conv2 = oxnn.Conv2d(6, 16, 5)
            self.act2 = act()
            self.pool2 = oxnn.MaxPool2d(2, 2)
        self.flatten = oxnn.Flatten()
        self.fc1 = oxnn.Linear(400, 120, activation=activation)
        self.fc2 = oxnn.Linear(120, 84, activation=activation)
        self.fc3 = oxnn.Linear(84, 10)

    def forward(self, x):
        if self.fused:
            x = self.conv2(self.conv1(x))
        else:
            x = self.pool1(self.act1(self.conv1(x)))
            x = self.pool2(self.act2(self.conv2(x)))
        return self.fc3(self.fc2(self.fc1(self.flatten(x))))


def build_model(name: str, backend: str = "oxkernels", activation: str = "relu") -> tnn.Module:
    """The course network `name` for a backend: "oxkernels" (oxkernels.nn) or "torch" (torch.nn)."""
    if backend == "torch":
        return torch_reference(name, activation)
    if backend != "oxkernels":
        raise ValueError(f"backend must be 'oxkernels' or 'torch', got {backend!r}")
    if name == "mlp":
        return MLP(activation)
    if name == "lenet":
        return LeNet(activation)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")
