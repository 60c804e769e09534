"""Fused Adam / AdamW step, in place, over lists of arrays (NumPy or torch).

Per element (torch.optim.Adam / AdamW order; t counts this step):
    g ← −g (maximize);  g ← g + λθ (Adam, L2)  or  θ ← θ(1 − lr·λ) (AdamW, decoupled)
    m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  v̂ ← max(v̂max, v) (amsgrad) else v
    θ ← θ − lr/(1−β₁ᵗ) · m / (√v̂/√(1−β₂ᵗ) + ε)
"""
import sys

from .. import _C
from .._arrays import TORCH, array_kind, stream_of

__all__ = ["adam_step"]


def _as_list(op, name, x):
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    array_kind(op, **{name: x})  # a single array: check it is one, then wrap it
    return [x]


def adam_step(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay=0.0,
              decoupled=False, amsgrad=False, max_exp_avg_sqs=None, maximize=False, grad_scale=None):
    """One Adam (decoupled=False) or AdamW (decoupled=True) step, updating
    params, exp_avgs, exp_avg_sqs (and max_exp_avg_sqs with amsgrad) in place.

    params, grads, ...: lists of arrays (or one array each), all NumPy or all
    torch, on one device; params float32 (float64 on the CPU; bfloat16/float16
    on CUDA with float32 state); every companion shaped like its param,
    contiguous. step: the step count t >= 1 including this step (the same for
    every tensor). grad_scale: optional number; grads are divided by it (and
    the unscaled grads written back), as torch's fused Adam does with a
    GradScaler. Returns None.
    """
    op = "adam_step"
    params = _as_list(op, "params", params)
    grads = _as_list(op, "grads", grads)
    exp_avgs = _as_list(op, "exp_avgs", exp_avgs)
    exp_avg_sqs = _as_list(op, "exp_avg_sqs", exp_avg_sqs)
    maxes = _as_list(op, "max_exp_avg_sqs", max_exp_avg_sqs)
    if amsgrad and max_exp_avg_sqs is None:
        raise ValueError(f"{op}: amsgrad=True needs argument 'max_exp_avg_sqs'")
    arrays = {}
    for name, lst in (("params", params), ("grads", grads), ("exp_avgs", exp_avgs),
                      ("exp_avg_sqs", exp_avg_sqs), ("max_exp_avg_sqs", maxes)):
        for i, x in enumerate(lst):
            arrays[f"{name}[{i}]"] = x
    kind = array_kind(op, **arrays)
    args = (float(step), float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), bool(decoupled),
            bool(amsgrad), bool(maximize), None if grad_scale is None else float(grad_scale))
    if kind == TORCH and sys.modules["torch"].compiler.is_compiling():
        # Traced by torch.compile: the custom op (same kernel) keeps the graph whole.
        sys.modules["torch"].ops.oxkernels.adam_step_(params, grads, exp_avgs, exp_avg_sqs, maxes, *args)
        return
    stream = stream_of(params[0]) if params else 0
    _C.adam_step(params, grads, exp_avgs, exp_avg_sqs, maxes, *args, stream)
    if kind == TORCH:  # written in place: as torch's optimizers do, so that a graph that saved one notices
        from .._torch._glue import increment_version

        increment_version([*params, *exp_avgs, *exp_avg_sqs, *maxes, *(grads if grad_scale is not None else ())])
