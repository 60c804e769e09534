"""Linear regression on x̃ = [x, 1]: loss f(θ) = 1/(2m) Σ (θᵀx̃ᵢ − yᵢ)² and its gradient."""
from .. import _C
from .._arrays import TORCH, array_kind, empty, stream_of

__all__ = ["linreg_grad"]


def linreg_grad(X, y, theta, rows=None):
    """∇f(θ) = (1/m) X̃_Sᵀ(X̃_S θ − y_S) over all rows of X, or over the row indices `rows`.

    X: (n, d) float32/float64 (no bias column); y: (n,); theta: (d+1,) or a batch
    (B, d+1), giving B gradients from one pass over X; rows: optional int64 (m,).
    Returns an array shaped like theta, of the same kind (NumPy / torch) and device.
    """
    array_kind("linreg_grad", X=X, y=y, theta=theta, rows=rows)
    out = empty(X, tuple(theta.shape))
    _C.linreg_grad(X, y, theta, rows, out, stream_of(X))
    return out
