"""Linear regression by gradient descent (course part I), solved natively.

fit(X, y, method, lr, steps, ...) runs the whole loop in one native call:

- "gd":        θ ← θ − lr ∇f(θ) over all n rows;
- "sgd":       θ ← θ − lr ∇f_i(θ), one row i drawn per step;
- "minibatch": θ ← θ − lr ∇f_S(θ), S = batch_size distinct rows per step (like random.sample);
- "adam":      mini-batch gradient g, then m ← β1 m + (1−β1) g, v ← β2 v + (1−β2) g²,
               m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ), θ ← θ − lr m̂/(√v̂ + ε)  (t = 1, 2, ...).

with f(θ) = 1/(2n) Σ (θᵀx̃ᵢ − yᵢ)², x̃ = [x, 1]. Rows are drawn by Floyd's algorithm
from a counter-based RNG keyed by (seed, step): the same on CPU and CUDA, and
returned in .indices. lr and seed may be 1-D arrays of length B: B trajectories
in one call (a hyperparameter grid), each identical to the run made alone.

When steps ≥ (d+1)/3 + 4 (and d+1 ≤ min(n, 512)), f and ∇f over all rows come from f's
quadratic form around a near-minimiser (csrc/linreg_quadratic.h): a few passes over X up
front, then O((d+1)²) per step instead of a pass; losses keep a direct pass's precision.
On CUDA, gd's steps then read no row of X; the other methods read only the rows they draw.
"""
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _C
from ._arrays import TORCH, array_kind, empty, stream_of

__all__ = ["fit", "FitResult", "METHODS"]

METHODS = ("gd", "sgd", "minibatch", "adam")


@dataclass
class FitResult:
    """theta: final θ (d+1,) — (B, d+1) for a grid; thetas: (steps+1, d+1) trajectory
    ((B, steps+1, d+1)); losses: full-data f(θ_t) (steps+1,) ((B, steps+1)); indices:
    the rows drawn, (steps, batch) ((B, steps, batch)); batch is 0 for gd, 1 for sgd."""

    theta: Any
    thetas: Any
    losses: Any
    indices: Any
    method: str
    lr: Any
    seed: Any


def _as_vector(name, value):
    """A scalar or 1-D sequence → (values as a 1-D host array, whether it was a grid)."""
    arr = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
    if arr.ndim == 0:
        return arr.reshape(1), False
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"linreg fit: argument '{name}' must be a scalar or a non-empty 1-D array, got shape {arr.shape}")
    return arr, True


def fit(X, y, method, lr, steps, batch_size=32, betas=(0.9, 0.999), eps=1e-8, seed=0, theta0=None):
    """Fit θ = [w, b] for y ≈ Xw + b by `method` ("gd", "sgd", "minibatch", "adam").

    X: (n, d) float32/float64 NumPy array or torch tensor (CPU or CUDA), without a bias column;
    y: (n,). lr, seed: scalars, or 1-D arrays of length B for B trajectories at once (a scalar
    is shared by all). theta0: (d+1,) or (B, d+1) start, default zeros. Returns a FitResult
    of the same array kind and device as X.
    """
    kind = array_kind("linreg fit", X=X, y=y, theta0=theta0)
    if not isinstance(method, str):
        raise TypeError(f"linreg fit: argument 'method' must be a string, one of {METHODS}, got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"linreg fit: argument 'method' must be one of {METHODS}, got '{method}'")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"linreg fit: argument '{name}' must be an int, got {type(v).__name__}")
    lr_arr, lr_grid = _as_vector("lr", lr)
    seed_arr, seed_grid = _as_vector("seed", seed)
    if not np.issubdtype(lr_arr.dtype, np.number) or np.issubdtype(lr_arr.dtype, np.complexfloating):
        raise TypeError(f"linreg fit: argument 'lr' must be a real number or array of them, got dtype {lr_arr.dtype}")
    if np.any(lr_arr < 0):  # a step against the gradient: ascent, never what a fit means
        raise ValueError(f"linreg fit: argument 'lr' must be >= 0, got {lr_arr[lr_arr < 0][0]}")
    if not np.issubdtype(seed_arr.dtype, np.integer):
        raise TypeError(f"linreg fit: argument 'seed' must be an int or an integer array, got dtype {seed_arr.dtype}")
    if theta0 is not None and len(theta0.shape) not in (1, 2):
        raise ValueError(f"linreg fit: argument 'theta0' must be (d+1,) or (B, d+1), got shape {tuple(theta0.shape)}")
    theta_grid = theta0 is not None and len(theta0.shape) == 2
    sizes = {n: a.shape[0] for n, a, g in (("lr", lr_arr, lr_grid), ("seed", seed_arr, seed_grid)) if g}
    if theta_grid:
        sizes["theta0"] = theta0.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"linreg fit: grid arguments must have one length B, got {sizes}")
    grid = bool(sizes)
    B = next(iter(sizes.values())) if sizes else 1
    lr_arr = np.array(np.broadcast_to(lr_arr.astype(np.float64), (B,)))
    seed_arr = np.array(np.broadcast_to(seed_arr.astype(np.int64), (B,)))

    if len(X.shape) != 2:
        raise ValueError(f"linreg fit: argument 'X' must be 2-D (n, d), got shape {tuple(X.shape)}")
    d = X.shape[1]
    batch = 0 if method == "gd" else 1 if method == "sgd" else int(batch_size)
    if batch < 0:
        raise ValueError(f"linreg fit: argument 'batch_size' must be >= 1, got {batch_size}")
    steps_out = max(int(steps), 0)

    if kind == TORCH:
        import torch

        # On the GPU the finiteness checks cost a sync, so they run here (C++ checks host arrays).
        if X.is_cuda and not np.all(np.isfinite(lr_arr)):
            raise ValueError("linreg fit: argument 'lr' holds a non-finite value")
        if X.is_cuda and X.is_floating_point() and X.numel() and not bool(torch.isfinite(X).all()):
            raise ValueError("linreg fit: argument 'X' holds a non-finite value (NaN/Inf)")
        if y.is_cuda and y.is_floating_point() and y.numel() and not bool(torch.isfinite(y).all()):
            raise ValueError("linreg fit: argument 'y' holds a non-finite value (NaN/Inf)")
        dev = X.device
        lr_v = torch.from_numpy(lr_arr).to(dev)
        seed_v = torch.from_numpy(seed_arr).to(dev)
        indices = torch.empty((B, steps_out, batch), dtype=torch.int64, device=dev)
        if theta0 is None:
            th0 = torch.zeros((B, d + 1), dtype=X.dtype, device=dev)
        else:
            th0 = theta0.reshape(-1, theta0.shape[-1]).expand(B, -1).contiguous()
    else:
        lr_v, seed_v = lr_arr, seed_arr
        indices = np.empty((B, steps_out, batch), dtype=np.int64)
        if theta0 is None:
            th0 = np.zeros((B, d + 1), dtype=X.dtype)
        else:
            th0 = np.array(np.broadcast_to(theta0.reshape(-1, theta0.shape[-1]), (B, theta0.shape[-1])))
    thetas = empty(X, (B, steps_out + 1, d + 1))
    losses = empty(X, (B, steps_out + 1))
    state = empty(X, (B, 2, d + 1))
    workspace = None  # on CUDA: the quadratic form and/or each step's residuals
    if getattr(X, "is_cuda", False):
        need = _C.linreg_fit_cuda_workspace_numel(X.shape[0], d, B, steps_out, method, batch)
        workspace = torch.empty(need, dtype=torch.float64, device=X.device) if need else None
    b1, b2 = betas
    _C.linreg_fit(X, y, th0, lr_v, seed_v, method, int(steps), batch, float(b1), float(b2), float(eps),
                  thetas, losses, indices, state, workspace, stream_of(X))
    if not grid:
        thetas, losses, indices = thetas[0], losses[0], indices[0]
        lr_out, seed_out = float(lr_arr[0]), int(seed_arr[0])
    else:
        lr_out, seed_out = lr_arr, seed_arr
    theta = thetas[..., -1, :]
    return FitResult(theta=theta, thetas=thetas, losses=losses, indices=indices, method=method, lr=lr_out, seed=seed_out)
