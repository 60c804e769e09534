"""torch op of the Adam family: oxkernels::adam_step_, the fused in-place step
over lists of tensors, so that torch.compile traces oxkernels.ops.adam_step
without a graph break (in eager mode ops.adam_step calls the kernel directly)."""
from typing import List, Optional

import torch

from .. import _C
from ._glue import cuda_stream


@torch.library.custom_op("oxkernels::adam_step_",
                         mutates_args=("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"))
def adam_step_(params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
               exp_avg_sqs: List[torch.Tensor], max_exp_avg_sqs: List[torch.Tensor], step: float, lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool, amsgrad: bool,
               maximize: bool, grad_scale: Optional[float]) -> None:
    # grads are listed as mutated: with grad_scale the unscaled grads are written back.
    stream = cuda_stream(params[0]) if params else 0
    _C.adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, beta1, beta2, eps,
                 weight_decay, decoupled, amsgrad, maximize, grad_scale, stream)


@adam_step_.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay,
      decoupled, amsgrad, maximize, grad_scale):
    return None
