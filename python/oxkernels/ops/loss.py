"""Softmax, log-softmax and the fused softmax cross-entropy loss.

    cross_entropy: ℓ_i = −Σ_j b_ij log softmax(x_i)_j, with class weights w (1 when absent) and
    label smoothing ε:  b_ij = (1−ε) w_t [j = t_i] + (ε/C) w_j  for a class target t_i,
                        b_ij = w_j ((1−ε) q_ij + ε/C)          for class probabilities q_i;
    reduction 'mean' divides by Σ w_{t_i} over targets ≠ ignore_index (their count without
    weights), or by N for probabilities (as torch).

Torch tensors in: differentiable torch ops; NumPy in: NumPy out.
"""
import numpy as np

from .. import _C
from .._arrays import TORCH, array_kind, dense, empty, stream_of

__all__ = ["cross_entropy", "cross_entropy_backward", "softmax", "log_softmax"]

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _reduction(op, reduction):
    try:
        return _REDUCTIONS[reduction]
    except (KeyError, TypeError):
        raise ValueError(f"{op}: argument 'reduction' must be 'none', 'mean' or 'sum', got {reduction!r}") from None


def _scalar_args(op, label_smoothing, ignore_index):
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{op}: argument 'ignore_index' must be an int, got {ignore_index!r}")
    try:
        return float(label_smoothing), ignore_index
    except (TypeError, ValueError):
        raise TypeError(f"{op}: argument 'label_smoothing' must be a float, got {label_smoothing!r}") from None


def _class_indices(target):
    """NumPy class targets as int64: uint8 ones (torch accepts them too) are widened; floating
    targets are class probabilities and stay as they are."""
    return target.astype(np.int64) if target.dtype == np.uint8 else target


def _loss_shape(logits, reduction):
    return (logits.shape[0],) if reduction == 0 and len(logits.shape) == 2 else ()


def _as_rows(op, logits, target):
    """(N, C, d1, …, dk) logits and (N, d1, …, dk) class targets (or probabilities of the logits'
    shape) as one row per element: (N·d1⋯dk, C) with the class dimension moved last, and
    (N·d1⋯dk,) (or (N·d1⋯dk, C)); plus (N, d1, …, dk)."""
    shape = tuple(logits.shape)
    elements = (shape[0], *shape[2:])

    def class_last(a):
        if isinstance(a, np.ndarray):
            return np.moveaxis(a, 1, -1).reshape(-1, shape[1])
        return a.movedim(1, -1).reshape(-1, shape[1])

    if tuple(target.shape) == shape and _is_floating(target):
        return class_last(logits), class_last(target), elements
    if tuple(target.shape) != elements:  # checked here: the flattened shapes could agree by accident
        raise ValueError(f"{op}: argument 'target' must have shape {elements} (class indices) or {shape} "
                         f"(class probabilities) for logits of shape {shape}, got {tuple(target.shape)}")
    return class_last(logits), target.reshape(-1), elements


def _is_floating(a):
    return a.dtype.kind == "f" if isinstance(a, np.ndarray) else a.is_floating_point()


def cross_entropy(logits, target, reduction="mean", label_smoothing=0.0, ignore_index=-100, weight=None):
    """Softmax cross-entropy of logits (N, C) (or (C,), or (N, C, d1, …, dk) as torch's) against
    int64 (or uint8) class targets (N,) (or (), or (N, d1, …, dk)), or class probabilities of the
    logits' shape and dtype.

    reduction: 'mean' (see above), 'sum' or 'none'; label_smoothing ε in [0, 1]; class targets
    equal to ignore_index contribute nothing; weight: optional (C,) class weights of the logits'
    dtype. Class targets outside [0, C) raise ValueError (CPU; on CUDA such rows give NaN, see
    csrc/loss.h)."""
    op = "cross_entropy"
    r = _reduction(op, reduction)
    eps, ignore = _scalar_args(op, label_smoothing, ignore_index)
    kind = array_kind(op, logits=logits, target=target, weight=weight)
    if len(logits.shape) > 2:  # each (n, d1, …, dk) is a row of C logits
        rows, targets, elements = _as_rows(op, logits, target)
        loss = cross_entropy(rows, targets, reduction, eps, ignore, weight)
        return loss.reshape(elements) if r == 0 else loss
    if kind == TORCH:
        from .._torch import loss

        return loss.cross_entropy(logits, target, r, eps, ignore, weight)
    logits, target, weight = dense(logits), _class_indices(dense(target)), dense(weight)
    out = empty(logits, _loss_shape(logits, r))
    _C.cross_entropy(logits, target, out, r, eps, ignore, weight=weight)
    return out


def cross_entropy_backward(grad, logits, target, reduction="mean", label_smoothing=0.0, ignore_index=-100,
                           weight=None):
    """∂loss/∂logits given grad = ∂L/∂loss (shaped like the loss): s_i (A_i softmax(x_i) − b_i)
    with b_i as above, A_i = Σ_j b_ij, s_i from grad and the reduction, 0 where ignored."""
    op = "cross_entropy_backward"
    r = _reduction(op, reduction)
    eps, ignore = _scalar_args(op, label_smoothing, ignore_index)
    if array_kind(op, grad=grad, logits=logits, target=target, weight=weight) == TORCH:
        from .._torch import loss

        return loss._ce_backward(grad, logits, loss.class_indices(target), r, eps, ignore, weight)
    grad, logits, target, weight = dense(grad), dense(logits), _class_indices(dense(target)), dense(weight)
    out = empty(logits, logits.shape)
    _C.cross_entropy_backward(grad, logits, target, out, r, eps, ignore, weight=weight)
    return out


def _softmax(name, x, dim):
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name}: argument 'dim' must be an int, got {dim!r}")
    if array_kind(name, x=x) == TORCH:
        from .._torch import loss

        return getattr(loss, name)(x, dim)
    x = dense(x)
    out = empty(x, x.shape)
    getattr(_C, name)(x, dim, out, stream_of(x))
    return out


def softmax(x, dim=-1):
    """e^{x − lse} along dim (any dim; the reduction runs over the (outer, C, inner) view)."""
    return _softmax("softmax", x, dim)


def log_softmax(x, dim=-1):
    """x − log Σ e^{x} along dim, max-subtracted (no overflow for any finite x)."""
    return _softmax("log_softmax", x, dim)
