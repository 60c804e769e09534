"""Autocast (torch.autocast, automatic mixed precision).

Our kernels compute in float32 (float64 on the CPU), so under autocast our ops follow torch's
float32 policy, the one of its softmax and cross_entropy: floating inputs in lower precision
(a bfloat16 activation from a torch layer, say) are cast up to float32, and outputs are
float32. A model that mixes torch's layers and ours then trains under autocast as it does
without. While autocast is on, the eager entry points hand their calls to the custom ops
(use_custom_op), and these registrations make the dispatcher cast.
"""
import torch

from . import activation, conv, linear, loss, pool  # noqa: F401  (register the ops named here)

_FLOAT32_POLICY = ("relu", "sigmoid", "max_pool2d", "conv2d", "conv2d_relu_maxpool2d", "linear",
                   "cross_entropy", "softmax", "log_softmax")

for _name in _FLOAT32_POLICY:
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"oxkernels::{_name}", _device, torch.float32)
