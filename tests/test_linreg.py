"""linreg_grad / linreg_loss against float64 NumPy and torch references, the torch
custom op (gradcheck, opcheck), bad input, and CUDA against the CPU."""
import numpy as np
import pytest

import oxkernels
from oxkernels import ops
from conftest import ISA_ORDER, forced_isa, rel_err, requires_cuda

torch = pytest.importorskip("torch")

SIZES = [(1, 1), (3, 3), (17, 17), (1000, 1), (1000, 3), (17, 1000), (1000, 17)]
BATCHES = [None, 1, 5, 64]


def problem(rng, n, d, B, dtype=np.float64):
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    shape = (d + 1,) if B is None else (B, d + 1)
    theta = rng.standard_normal(shape).astype(dtype)
    return X, y, theta


def reference(X, y, theta, rows=None):
    """float64 ∇f and f from the formulas: r = X̃θ − y, ∇f = X̃ᵀr/m, f = ‖r‖²/(2m)."""
    X, y, theta = (np.asarray(a, dtype=np.float64) for a in (X, y, theta))
    if rows is not None:
        X, y = X[rows], y[rows]
    Xt = np.hstack([X, np.ones((X.shape[0], 1))])
    R = Xt @ np.atleast_2d(theta).T - y[:, None]  # (m, B)
    grad = (R.T @ Xt) / X.shape[0]
    loss = (R ** 2).sum(axis=0) / (2 * X.shape[0])
    if theta.ndim == 1:
        return grad[0], loss[0]
    return grad, loss


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_grad_and_loss_match_numpy(rng, n, d, B, dtype, tol):
    X, y, theta = problem(rng, n, d, B, dtype)
    g_ref, l_ref = reference(X, y, theta)
    g = ops.linreg_grad(X, y, theta)
    loss = ops.linreg_loss(X, y, theta)
    assert g.dtype == dtype and g.shape == theta.shape
    assert np.shape(loss) == theta.shape[:-1]
    assert rel_err(g, g_ref) < tol
    assert rel_err(np.asarray(loss), l_ref) < tol


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_grad_over_rows(rng, B, dtype, tol):
    n, d = 1000, 17
    X, y, theta = problem(rng, n, d, B, dtype)
    rows = rng.integers(0, n, size=33).astype(np.int64)  # repeats allowed: a multiset of rows
    g_ref, _ = reference(X, y, theta, rows)
    assert rel_err(ops.linreg_grad(X, y, theta, rows), g_ref) < tol


def test_line_problem_large_n(rng):
    # d = 1 uses its own row-vectorised path; many blocks; against float64.
    X, y, theta = problem(rng, 200_003, 1, None, np.float32)
    g_ref, l_ref = reference(X, y, theta)
    assert rel_err(ops.linreg_grad(X, y, theta), g_ref) < 1e-5
    assert rel_err(ops.linreg_loss(X, y, theta), l_ref) < 1e-5


# The CPU kernel has four paths: the line (d = 1, B = 1), narrow transposed tiles (B < 4,
# rows x̃ of under 128 bytes: d = 9 in both dtypes, d = 19 in float32), wide rows read in
# place in groups of 8 (B < 4, wider: d = 19 in float64; d = 43 leaves a masked tail of
# columns at every vector width, after an even (float32) or odd (float64) count of full
# vectors on AVX-512), and the GEMM pair (B >= 4).
PATHS = [(1, None), (9, 1), (19, 1), (43, 1), (43, 2), (19, 6), (40, 4)]


@pytest.mark.parametrize("d,B", PATHS)
def test_deterministic_across_thread_counts(rng, d, B):
    X, y, theta = problem(rng, 100_001, d, B, np.float32)
    before = oxkernels.get_num_threads()
    try:
        oxkernels.set_num_threads(1)
        g1, l1 = ops.linreg_grad(X, y, theta), ops.linreg_loss(X, y, theta)
        oxkernels.set_num_threads(2)
        g2, l2 = ops.linreg_grad(X, y, theta), ops.linreg_loss(X, y, theta)
    finally:
        oxkernels.set_num_threads(before)
    assert np.array_equal(g1, g2) and np.array_equal(l1, l2)


@pytest.mark.parametrize("isa", ISA_ORDER)
@pytest.mark.parametrize("d,B", PATHS)
def test_every_isa_matches(rng, isa, d, B):
    X, y, theta = problem(rng, 1003, d, B)
    rows = rng.integers(0, 1003, size=45)
    g_ref, l_ref = reference(X, y, theta)
    with forced_isa(isa):
        g, loss = ops.linreg_grad(X, y, theta), ops.linreg_loss(X, y, theta)
        g_rows = ops.linreg_grad(X, y, theta, rows)
    assert rel_err(g, g_ref) < 1e-12 and rel_err(loss, l_ref) < 1e-12
    assert rel_err(g_rows, reference(X, y, theta, rows)[0]) < 1e-12


@pytest.mark.parametrize("B", [None, 5])
def test_torch_in_torch_out_matches_torch(rng, B):
    X, y, theta = (torch.from_numpy(a) for a in problem(rng, 31, 3, B))
    Xt = torch.cat([X, torch.ones(31, 1, dtype=X.dtype)], 1)
    th2 = theta.reshape(-1, theta.shape[-1])
    r = Xt @ th2.T - y[:, None]
    g_ref = (Xt.T @ r / 31).T.reshape(theta.shape)
    loss_ref = ((r ** 2).sum(0) / 62).reshape(theta.shape[:-1])
    g = ops.linreg_grad(X, y, theta)
    loss = ops.linreg_loss(X, y, theta)
    assert isinstance(g, torch.Tensor) and isinstance(loss, torch.Tensor)
    assert rel_err(g, g_ref) < 1e-12 and rel_err(loss, loss_ref) < 1e-12


@pytest.mark.parametrize("B", [None, 1, 5])
def test_loss_gradcheck(rng, B):
    X, y, theta = (torch.from_numpy(a) for a in problem(rng, 17, 3, B))
    theta.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: torch.ops.oxkernels.linreg_loss(X, y, t), (theta,))


def test_loss_backward_is_the_gradient(rng):
    X, y, theta = (torch.from_numpy(a) for a in problem(rng, 33, 4, 3))
    theta.requires_grad_(True)
    ops.linreg_loss(X, y, theta).sum().backward()
    assert rel_err(theta.grad, reference(X.numpy(), y.numpy(), theta.detach().numpy())[0]) < 1e-12


def test_opcheck(rng):
    X, y, theta = (torch.from_numpy(a) for a in problem(rng, 9, 2, 3))
    torch.library.opcheck(torch.ops.oxkernels.linreg_loss, (X, y, theta.requires_grad_(True)))
    torch.library.opcheck(torch.ops.oxkernels.linreg_grad, (X, y, theta.detach()))


def test_compile_fullgraph(rng):
    X, y, theta = (torch.from_numpy(a) for a in problem(rng, 9, 2, None))
    f = torch.compile(lambda t: torch.ops.oxkernels.linreg_loss(X, y, t) * 2, fullgraph=True, backend="eager")
    assert rel_err(f(theta), 2 * reference(X.numpy(), y.numpy(), theta.numpy())[1]) < 1e-12


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_dtype_names_argument(rng):
    X, y, theta = problem(rng, 5, 2, None)
    with pytest.raises(TypeError, match="'X'"):
        ops.linreg_grad(X.astype(np.int32), y, theta)
    with pytest.raises(TypeError, match="'y'"):
        ops.linreg_grad(X, y.astype(np.float32), theta)
    with pytest.raises(TypeError, match="'theta'"):
        ops.linreg_loss(X, y, theta.astype(np.float32))
    with pytest.raises(TypeError, match="'rows'"):
        ops.linreg_grad(X, y, theta, np.array([0, 1], dtype=np.int32))


def test_mismatched_shapes_name_argument(rng):
    X, y, theta = problem(rng, 5, 2, None)
    with pytest.raises(ValueError, match="'y'"):
        ops.linreg_grad(X, y[:4], theta)
    with pytest.raises(ValueError, match="'theta'"):
        ops.linreg_grad(X, y, theta[:2].copy())
    with pytest.raises(ValueError, match="'theta'"):
        ops.linreg_loss(X, y, np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="'X'"):
        ops.linreg_grad(X[:, None], y, theta)
    with pytest.raises(ValueError, match="'rows'"):
        ops.linreg_grad(X, y, theta, np.array([0, 5], dtype=np.int64))
    with pytest.raises(ValueError, match="'rows'"):
        ops.linreg_grad(X, y, theta, np.array([-1], dtype=np.int64))


def test_empty_x_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'X'"):
        ops.linreg_grad(np.zeros((0, 3)), np.zeros(0), np.zeros(4))
    with pytest.raises(ValueError, match="'rows'"):
        ops.linreg_grad(np.zeros((2, 3)), np.zeros(2), np.zeros(4), np.zeros(0, dtype=np.int64))


def test_nan_in_x_propagates_to_the_result(rng):
    # linreg_grad/loss are plain arithmetic: NaN propagates (fit rejects it, see test_linreg_fit).
    X, y, theta = problem(rng, 5, 2, None)
    X[3, 1] = np.nan
    assert np.isnan(ops.linreg_grad(X, y, theta)).all()
    assert np.isnan(ops.linreg_loss(X, y, theta))


def test_mixed_kinds_and_non_arrays(rng):
    X, y, theta = problem(rng, 5, 2, None)
    with pytest.raises(TypeError, match="'y'"):
        ops.linreg_grad(X, torch.from_numpy(y), theta)
    with pytest.raises(TypeError, match="'theta'"):
        ops.linreg_loss(X, y, [0.0, 0.0, 0.0])


# ---- CUDA against the CPU -------------------------------------------------------------------------
@requires_cuda
# beyond SIZES: one-trajectory row kernels of 2, 4 and 8 columns per lane, the register-tiled
# kernel of several trajectories (B = 64 with d = 40, 100), and blocks whose share of rows spans
# several tiles and flushes (more than 1024 blocks × 8 warps × 64 rows)
@pytest.mark.parametrize("n,d", SIZES + [(1001, 40), (100_003, 100), (1001, 200), (600_001, 40)])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_cuda_matches_reference(rng, n, d, B, dtype, tol):
    X, y, theta = problem(rng, n, d, B)
    g_ref, l_ref = reference(X, y, theta)
    Xc, yc, tc = (torch.from_numpy(a).to("cuda", dtype) for a in (X, y, theta))
    g, loss = ops.linreg_grad(Xc, yc, tc), ops.linreg_loss(Xc, yc, tc)
    assert g.is_cuda and loss.is_cuda
    assert rel_err(g, g_ref) < tol and rel_err(loss, l_ref) < tol
    rows = rng.integers(0, n, size=37)
    g_rows = ops.linreg_grad(Xc, yc, tc, torch.from_numpy(rows).cuda())
    assert rel_err(g_rows, reference(X, y, theta, rows)[0]) < tol
    assert torch.equal(g, ops.linreg_grad(Xc, yc, tc))  # deterministic


@requires_cuda
def test_cuda_out_of_range_rows_give_nan(rng):
    X, y, theta = (torch.from_numpy(a).cuda() for a in problem(rng, 9, 2, None))
    g = ops.linreg_grad(X, y, theta, torch.tensor([0, 9], device="cuda"))
    assert torch.isnan(g).all()


@requires_cuda
def test_cuda_workspace_must_own_what_the_kernels_write(rng):
    """The raw kernel's workspace: a stride-0 view has enough elements but one double of
    memory, so it is refused rather than written past its end."""
    from oxkernels import _C

    X, y, theta = (torch.from_numpy(a).cuda() for a in problem(rng, 1000, 3, None))
    out = torch.empty_like(theta)
    need = _C.linreg_cuda_workspace_numel(1000, 3, 1)
    fake = torch.zeros(1, dtype=torch.float64, device="cuda").expand(need)
    with pytest.raises(ValueError, match="'workspace' must be contiguous"):
        _C.linreg_grad(X, y, theta, None, out, 0, fake)
    with pytest.raises(TypeError, match="'workspace' must be float64"):
        _C.linreg_grad(X, y, theta, None, out, 0, torch.zeros(need, dtype=torch.float32, device="cuda"))


@requires_cuda
def test_cuda_gradcheck_and_mixed_devices(rng):
    X, y, theta = (torch.from_numpy(a).cuda() for a in problem(rng, 17, 3, 4))
    theta.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: torch.ops.oxkernels.linreg_loss(X, y, t), (theta,))
    with pytest.raises((TypeError, ValueError), match="'y'"):
        ops.linreg_grad(X, y.cpu(), theta.detach())
