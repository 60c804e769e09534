"""torch ops of the linreg family: linreg_loss (differentiable in theta), whose
backward is the fused gradient kernel linreg_grad.

∂f/∂θ = (1/n) X̃ᵀ(X̃θ − y), so the backward of f is grad_out · ∇f (per batch row)."""
import torch

from .. import _C
from ._glue import cuda_stream
from ..ops.linreg import cuda_workspace


def _batch(theta):
    return theta.shape[0] if theta.dim() == 2 else 1


@torch.library.custom_op("oxkernels::linreg_loss", mutates_args=())
def linreg_loss(X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    X, y, theta = X.contiguous(), y.contiguous(), theta.contiguous()
    out = torch.empty(theta.shape[:-1], dtype=X.dtype, device=X.device)
    n = X.shape[0] if X.dim() == 2 else 0
    _C.linreg_loss(X, y, theta, out, cuda_stream(X), cuda_workspace(X, n, _batch(theta)))
    return out


@linreg_loss.register_fake
def _(X, y, theta):
    return theta.new_empty(theta.shape[:-1])


@torch.library.custom_op("oxkernels::linreg_grad", mutates_args=())
def linreg_grad(X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    X, y, theta = X.contiguous(), y.contiguous(), theta.contiguous()
    out = torch.empty(theta.shape, dtype=X.dtype, device=X.device)
    n = X.shape[0] if X.dim() == 2 else 0
    _C.linreg_grad(X, y, theta, None, out, cuda_stream(X), cuda_workspace(X, n, _batch(theta)))
    return out


@linreg_grad.register_fake
def _(X, y, theta):
    return torch.empty_like(theta)


def _setup_context(ctx, inputs, output):
    X, y, theta = inputs
    ctx.save_for_backward(X, y, theta)


def _backward(ctx, grad_out):
    X, y, theta = ctx.saved_tensors
    g = None
    if ctx.needs_input_grad[2]:
        g = torch.ops.oxkernels.linreg_grad(X, y, theta)
        g = g * grad_out.unsqueeze(-1)
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        raise NotImplementedError("oxkernels.linreg_loss is differentiable in theta only (X and y are data)")
    return None, None, g


linreg_loss.register_autograd(_backward, setup_context=_setup_context)
