"""Linear regression on x̃ = [x, 1]: loss f(θ) = 1/(2m) Σ (θᵀx̃ᵢ − yᵢ)² and its gradient."""
from .. import _C
from .._arrays import TORCH, array_kind, dense, empty, stream_of

__all__ = ["linreg_grad", "linreg_loss"]


def cuda_workspace(X, m, B):
    """The float64 scratch the CUDA kernels reduce their block partials in (None on the CPU)."""
    if not (getattr(X, "is_cuda", False)):
        return None
    d = X.shape[1] if X.dim() == 2 else 0
    return empty(X, (_C.linreg_cuda_workspace_numel(m, d, B),), dtype=_float64(X))


def _float64(X):
    import torch

    return torch.float64


def _batch(theta):
    return theta.shape[0] if len(theta.shape) == 2 else 1


def linreg_grad(X, y, theta, rows=None):
    """∇f(θ) = (1/m) X̃_Sᵀ(X̃_S θ − y_S) over all rows of X, or over the row indices `rows`.

    X: (n, d) float32/float64 (no bias column); y: (n,); theta: (d+1,) or a batch
    (B, d+1), giving B gradients from one pass over X; rows: optional int64 (m,).
    Returns an array shaped like theta, of the same kind (NumPy / torch) and device.
    Row indices on the CPU are range-checked (ValueError naming 'rows'); on a CUDA device
    that check would need a sync, so an index outside [0, n) makes the result NaN instead.
    On CUDA, d + B must stay below ~5000 (float64) / ~10000 (float32): one shared-memory tile.
    """
    kind = array_kind("linreg_grad", X=X, y=y, theta=theta, rows=rows)
    X, y, theta, rows = dense(X), dense(y), dense(theta), dense(rows)
    out = empty(X, tuple(theta.shape))
    m = rows.shape[0] if rows is not None and len(rows.shape) == 1 else (X.shape[0] if len(X.shape) == 2 else 0)
    work = cuda_workspace(X, m, _batch(theta)) if kind == TORCH else None
    _C.linreg_grad(X, y, theta, rows, out, stream_of(X), work)
    return out


def linreg_loss(X, y, theta):
    """f(θ) = 1/(2n) Σᵢ (θᵀx̃ᵢ − yᵢ)²: a scalar for theta (d+1,), B values for a batch (B, d+1).

    NumPy in: a NumPy array out (shape () or (B,)). Torch in: torch.ops.oxkernels.linreg_loss,
    differentiable in theta (its backward is the fused gradient kernel).
    """
    kind = array_kind("linreg_loss", X=X, y=y, theta=theta)
    if kind == TORCH:
        import torch

        return torch.ops.oxkernels.linreg_loss(X, y, theta)
    X, y, theta = dense(X), dense(y), dense(theta)
    out = empty(X, tuple(theta.shape[:-1]))
    _C.linreg_loss(X, y, theta, out, 0)
    return out
