"""oxkernels.linreg.fit against a plain NumPy implementation of the course formulas,
convergence to least squares, reproducibility, grids, sampling, bad input, CUDA."""
import numpy as np
import pytest

from oxkernels.linreg import fit
from conftest import rel_err, requires_cuda

METHODS = ["gd", "sgd", "minibatch", "adam"]


def line_problem(rng, n=200, dtype=np.float64):
    x = rng.uniform(-2, 2, (n, 1))
    y = 1.5 * x[:, 0] - 0.7 + 0.1 * rng.standard_normal(n)
    return x.astype(dtype), y.astype(dtype)


def dense_problem(rng, n, d, dtype=np.float64):
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = X @ w + 0.3 + 0.05 * rng.standard_normal(n)
    return X.astype(dtype), y.astype(dtype)


def numpy_course(X, y, method, lr, steps, indices, theta0, betas=(0.9, 0.999), eps=1e-8):
    """The course's update rules written out in NumPy float64, rows taken from `indices`."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    Xt = np.hstack([X, np.ones((X.shape[0], 1))])
    theta = np.asarray(theta0, np.float64).copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    thetas, losses = [theta.copy()], []
    for t in range(steps):
        losses.append(np.mean((Xt @ theta - y) ** 2) / 2)
        S = np.arange(X.shape[0]) if method == "gd" else indices[t]
        grad = Xt[S].T @ (Xt[S] @ theta - y[S]) / len(S)
        if method == "adam":
            b1, b2 = betas
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad ** 2
            m_hat = m / (1 - b1 ** (t + 1))
            v_hat = v / (1 - b2 ** (t + 1))
            theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        else:
            theta = theta - lr * grad
        thetas.append(theta.copy())
    losses.append(np.mean((Xt @ theta - y) ** 2) / 2)
    return np.array(thetas), np.array(losses)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,d", [(1, 1), (3, 3), (17, 1), (1000, 17)])
def test_fit_reproduces_numpy_course(rng, method, n, d):
    X, y = dense_problem(rng, n, d)
    theta0 = 0.1 * rng.standard_normal(d + 1)
    batch = min(5, n)
    lr = 0.05
    res = fit(X, y, method, lr, 40, batch_size=batch, seed=11, theta0=theta0)
    expected_batch = {"gd": 0, "sgd": 1}.get(method, batch)
    assert res.thetas.shape == (41, d + 1) and res.losses.shape == (41,)
    assert res.indices.shape == (40, expected_batch)
    thetas, losses = numpy_course(X, y, method, lr, 40, res.indices, theta0)
    assert rel_err(res.thetas, thetas) < 1e-12
    assert rel_err(res.losses, losses) < 1e-12
    assert np.array_equal(res.theta, res.thetas[-1])


@pytest.mark.parametrize("method", METHODS)
def test_fit_float32_follows_float64(rng, method):
    X, y = line_problem(rng, 300)
    res64 = fit(X, y, method, 0.05, 30, batch_size=8, seed=3)
    res32 = fit(X.astype(np.float32), y.astype(np.float32), method, 0.05, 30, batch_size=8, seed=3)
    assert res32.thetas.dtype == np.float32
    assert np.array_equal(res32.indices, res64.indices)
    assert rel_err(res32.thetas, res64.thetas) < 1e-5


# ---- the quadratic form (csrc/linreg_quadratic.h): f and ∇f over all rows without a pass ----
# It is used when steps >= (d+1)/3 + 4 (and d+1 <= n, d+1 <= 512): a fit of few steps takes the
# passes over X, a longer one the form, so the two paths meet on the prefix of a trajectory.

def _quadratic_used(n, d, steps):
    dim = d + 1
    return dim <= 512 and dim <= n and steps >= dim // 3 + 4


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_quadratic_form_and_passes_agree(rng, method, dtype, tol):
    X, y = dense_problem(rng, 400, 17, dtype)
    theta0 = (0.1 * rng.standard_normal(18)).astype(dtype)
    short, long = 6, 60
    assert not _quadratic_used(400, 17, short) and _quadratic_used(400, 17, long)
    passes = fit(X, y, method, 0.05, short, batch_size=7, seed=5, theta0=theta0)
    form = fit(X, y, method, 0.05, long, batch_size=7, seed=5, theta0=theta0)
    assert np.array_equal(form.indices[:short], passes.indices)
    assert rel_err(form.thetas[:short + 1], passes.thetas) < tol
    assert rel_err(form.losses[:short + 1], passes.losses) < tol
    thetas, losses = numpy_course(X, y, method, 0.05, long, form.indices, theta0)
    assert rel_err(form.thetas, thetas) < (1e-12 if dtype == np.float64 else 1e-5)
    assert rel_err(form.losses, losses) < (1e-12 if dtype == np.float64 else 1e-5)


def test_noise_free_loss_falls_to_the_floor_of_a_direct_pass(rng):
    """y exactly linear: the loss falls geometrically to ~1e-31. The textbook form
    ½θᵀAθ − θᵀc + ½‖y‖²/n would stall near 1e-15 here (cancellation), and could go negative."""
    X = rng.standard_normal((500, 5))
    y = X @ rng.standard_normal(5) + 0.7
    res = fit(X, y, "gd", 0.5, 300)
    _, losses = numpy_course(X, y, "gd", 0.5, 300, res.indices, np.zeros(6))
    assert _quadratic_used(500, 5, 300)
    above_floor = losses > 1e-24
    assert above_floor[:30].all()
    np.testing.assert_allclose(res.losses[above_floor], losses[above_floor], rtol=1e-4)
    assert (res.losses >= 0).all() and res.losses[-1] < 1e-28


def test_collinear_columns_and_few_rows(rng):
    """A singular A (a repeated column; fewer rows than d+1, where the passes are used) still
    gives the course's trajectory."""
    X, y = dense_problem(rng, 300, 4)
    X = np.hstack([X, X[:, :1]])
    res = fit(X, y, "gd", 0.1, 200)
    assert _quadratic_used(300, 5, 200)
    thetas, losses = numpy_course(X, y, "gd", 0.1, 200, res.indices, np.zeros(6))
    assert rel_err(res.thetas, thetas) < 1e-12 and rel_err(res.losses, losses) < 1e-12
    X, y = dense_problem(rng, 4, 9)
    res = fit(X, y, "adam", 0.05, 200, batch_size=2)
    thetas, losses = numpy_course(X, y, "adam", 0.05, 200, res.indices, np.zeros(10))
    assert rel_err(res.thetas, thetas) < 1e-12 and rel_err(res.losses, losses) < 1e-12


def test_quadratic_form_is_the_same_at_any_thread_count(rng):
    import oxkernels

    X, y = dense_problem(rng, 20000, 40, np.float32)
    before = oxkernels.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            oxkernels.set_num_threads(threads)
            results.append(fit(X, y, "minibatch", 0.05, 100, batch_size=16, seed=2))
    finally:
        oxkernels.set_num_threads(before)
    assert _quadratic_used(20000, 40, 100)
    assert np.array_equal(results[0].thetas, results[1].thetas)
    assert np.array_equal(results[0].losses, results[1].losses)


@pytest.mark.parametrize("method,lr,steps", [("gd", 0.3, 2000), ("adam", 0.02, 3000)])
def test_gd_and_adam_converge_to_lstsq(rng, method, lr, steps):
    X, y = dense_problem(rng, 500, 4)
    Xt = np.hstack([X, np.ones((500, 1))])
    theta_ls = np.linalg.lstsq(Xt, y, rcond=None)[0]
    res = fit(X, y, method, lr, steps, batch_size=500 if method == "adam" else 32)
    assert np.linalg.norm(res.theta - theta_ls) < 1e-3 * np.linalg.norm(theta_ls)


def test_minibatch_adam_reaches_noise_level(rng):
    X, y = line_problem(rng, 1000)
    res = fit(X, y, "adam", 0.05, 1500, batch_size=32)
    Xt = np.hstack([X, np.ones((1000, 1))])
    theta_ls = np.linalg.lstsq(Xt, y, rcond=None)[0]
    assert np.linalg.norm(res.theta - theta_ls) < 0.05


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_trajectory(rng, method):
    X, y = line_problem(rng)
    a = fit(X, y, method, 0.05, 50, batch_size=7, seed=5)
    b = fit(X, y, method, 0.05, 50, batch_size=7, seed=5)
    assert np.array_equal(a.thetas, b.thetas) and np.array_equal(a.indices, b.indices)
    if method != "gd":
        c = fit(X, y, method, 0.05, 50, batch_size=7, seed=6)
        assert not np.array_equal(a.indices, c.indices)


def test_minibatch_draws_distinct_rows_uniformly(rng):
    n, batch, steps = 50, 10, 2000
    X, y = line_problem(rng, n)
    res = fit(X, y, "minibatch", 0.0, steps, batch_size=batch, seed=1)
    idx = res.indices
    assert idx.min() >= 0 and idx.max() < n
    assert all(len(set(row)) == batch for row in idx)
    counts = np.bincount(idx.ravel(), minlength=n)
    expected = steps * batch / n  # 400 per row
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 100, chi2  # 49 degrees of freedom: mean 49, P(chi2 > 100) ≈ 2e-5


def _floyd_rows(seed, step, n, count):
    """csrc/linreg_sample.h written out: SplitMix64-based words for (seed, step, k), Lemire's
    multiply-shift to [0, j], Floyd's algorithm."""
    mask = (1 << 64) - 1
    seed &= mask  # an int64 seed's bits

    def mix64(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    rows = []
    for k in range(count):
        word = mix64((mix64(seed ^ 0x9E3779B97F4A7C15) + mix64((step * 0xD1B54A32D192ED03 + 1) & mask)
                      + k * 0x9E3779B97F4A7C15) & mask)
        j = n - count + k
        t = (word * (j + 1)) >> 64
        rows.append(j if t in rows else t)
    return rows


@pytest.mark.parametrize("n,batch,seed", [(50, 10, 1), (40, 40, 7), (1000, 70, 123), (300, 33, -5)])
def test_rows_follow_the_documented_sampler(rng, n, batch, seed):
    X, y = line_problem(rng, n)
    res = fit(X, y, "minibatch", 0.05, 4, batch_size=batch, seed=seed)
    for step in range(4):
        assert res.indices[step].tolist() == _floyd_rows(seed, step, n, batch)


def test_batch_size_n_takes_every_row(rng):
    X, y = line_problem(rng, 13)
    res = fit(X, y, "minibatch", 0.1, 5, batch_size=13)
    assert all(sorted(row) == list(range(13)) for row in res.indices)


def test_grid_equals_single_runs(rng):
    X, y = dense_problem(rng, 300, 3)
    lrs = np.array([0.01, 0.05, 0.1, 0.2, 0.3])
    seeds = np.array([1, 2, 3, 4, 5])
    for method in METHODS:
        grid = fit(X, y, method, lrs, 25, batch_size=9, seed=seeds)
        assert grid.thetas.shape == (5, 26, 4) and grid.losses.shape == (5, 26)
        for b in range(5):
            one = fit(X, y, method, lrs[b], 25, batch_size=9, seed=int(seeds[b]))
            assert np.array_equal(grid.thetas[b], one.thetas)
            assert np.array_equal(grid.indices[b], one.indices)
    shared_seed = fit(X, y, "sgd", lrs, 10, seed=4)
    assert np.array_equal(shared_seed.indices[0], shared_seed.indices[4])


def test_zero_steps(rng):
    X, y = line_problem(rng)
    res = fit(X, y, "adam", 0.1, 0, theta0=np.array([1.0, 2.0]))
    assert res.thetas.shape == (1, 2) and np.array_equal(res.theta, [1.0, 2.0])
    assert rel_err(res.losses, numpy_course(X, y, "gd", 0.1, 0, None, [1.0, 2.0])[1]) < 1e-12


def test_torch_cpu_matches_numpy(rng):
    torch = pytest.importorskip("torch")
    X, y = line_problem(rng)
    a = fit(X, y, "adam", 0.05, 30, batch_size=4, seed=2)
    b = fit(torch.from_numpy(X), torch.from_numpy(y), "adam", 0.05, 30, batch_size=4, seed=2)
    assert isinstance(b.thetas, torch.Tensor)
    assert np.array_equal(b.thetas.numpy(), a.thetas) and np.array_equal(b.indices.numpy(), a.indices)


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument(rng):
    X, y = line_problem(rng, 20)
    with pytest.raises(TypeError, match="'X'"):
        fit(X.astype(np.int64), y, "gd", 0.1, 5)
    with pytest.raises(TypeError, match="'y'"):
        fit(X, y.astype(np.float32), "gd", 0.1, 5)
    with pytest.raises(ValueError, match="'y'"):
        fit(X, y[:-1], "gd", 0.1, 5)
    with pytest.raises(ValueError, match="'theta0'"):
        fit(X, y, "gd", 0.1, 5, theta0=np.zeros(3))
    with pytest.raises(ValueError, match="'X'"):
        fit(X[:, 0], y, "gd", 0.1, 5)
    with pytest.raises(ValueError, match="'steps'"):
        fit(X, y, "gd", 0.1, -1)
    with pytest.raises(TypeError, match="'steps'"):
        fit(X, y, "gd", 0.1, 2.5)
    with pytest.raises(ValueError, match="'batch_size'"):
        fit(X, y, "minibatch", 0.1, 5, batch_size=21)
    with pytest.raises(ValueError, match="'batch_size'"):
        fit(X, y, "adam", 0.1, 5, batch_size=0)
    with pytest.raises(ValueError, match="'method'"):
        fit(X, y, "newton", 0.1, 5)
    with pytest.raises(ValueError, match="'lr'"):
        fit(X, y, "gd", [0.1, 0.2], 5, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="'lr'"):
        fit(X, y, "gd", np.nan, 5)
    with pytest.raises(ValueError, match=r"'lr' must be >= 0, got -0.2"):
        fit(X, y, "gd", [0.1, -0.2], 5)
    with pytest.raises(TypeError, match="'seed'"):
        fit(X, y, "sgd", 0.1, 5, seed=1.5)
    with pytest.raises(ValueError, match="'betas'"):
        fit(X, y, "adam", 0.1, 5, batch_size=4, betas=(1.0, 0.999))


@pytest.mark.parametrize("arg", ["X", "y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_is_rejected(rng, arg, bad):
    X, y = line_problem(rng, 20)
    (X if arg == "X" else y).flat[7] = bad
    with pytest.raises(ValueError, match=f"'{arg}'"):
        fit(X, y, "gd", 0.1, 5)


def test_empty_x_is_rejected():
    with pytest.raises(ValueError, match="'X'"):
        fit(np.zeros((0, 2)), np.zeros(0), "gd", 0.1, 5)


def test_mixed_kinds_rejected(rng):
    torch = pytest.importorskip("torch")
    X, y = line_problem(rng, 20)
    with pytest.raises(TypeError, match="'y'"):
        fit(X, torch.from_numpy(y), "gd", 0.1, 5)


# ---- CUDA against the CPU ---------------------------------------------------------------------------
# At 3 steps every fit passes over the rows. At 60 every method takes its losses (and gd its gradients) from the quadratic form on both
# devices except at (1, 1) (d+1 > n): on CUDA, gd runs one warp per trajectory for d+1 <= 32 and a
# block for (5000, 40); the others pass over the rows they draw.
@requires_cuda
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,d", [(1, 1), (17, 3), (1000, 1), (1000, 17), (5000, 40)])
@pytest.mark.parametrize("steps", [3, 60])
def test_cuda_trajectory_matches_cpu(rng, method, n, d, steps):
    import torch

    X, y = dense_problem(rng, n, d)
    assert not _quadratic_used(n, d, 3)
    lrs = np.array([0.01, 0.05, 0.1])
    seeds = np.array([3, 4, 5])
    cpu = fit(X, y, method, lrs, steps, batch_size=min(n, 9), seed=seeds)
    gpu = fit(torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda(), method, lrs, steps, batch_size=min(n, 9),
              seed=seeds)
    assert gpu.thetas.is_cuda
    assert np.array_equal(gpu.indices.cpu().numpy(), cpu.indices)
    assert rel_err(gpu.thetas, cpu.thetas) < 1e-9  # float64, different summation order
    assert rel_err(gpu.losses, cpu.losses) < 1e-9
    again = fit(torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda(), method, lrs, steps, batch_size=min(n, 9),
                seed=seeds)
    assert torch.equal(again.thetas, gpu.thetas)


@requires_cuda
def test_cuda_rejects_nan_and_mixed_devices(rng):
    import torch

    X, y = line_problem(rng, 20)
    Xc, yc = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    with pytest.raises((TypeError, ValueError), match="'y'"):
        fit(Xc, yc.cpu(), "gd", 0.1, 5)
    Xc[3, 0] = float("nan")
    with pytest.raises(ValueError, match="'X'"):
        fit(Xc, yc, "gd", 0.1, 5)


def _collinear(rng, n, d):
    X, y = dense_problem(rng, n, d)
    return np.hstack([X, X[:, :1]]), y


def _noise_free(rng, n, d):
    X = rng.standard_normal((n, d))
    return X, X @ rng.standard_normal(d) + 0.7


@requires_cuda
@pytest.mark.parametrize("problem,n,d,steps,dtype,tol", [
    # A singular: CPU and GPU may settle on different ridges and so different θ̂ along the null
    # direction; the form is exact at any θ̂, so the trajectories still agree.
    (_collinear, 300, 4, 200, np.float64, 1e-9),
    (_noise_free, 500, 5, 300, np.float64, 1e-9),  # the loss falls to ~1e-31: θ̂ must be the minimiser
    (dense_problem, 2000, 31, 100, np.float64, 1e-9),  # d+1 = 32: every lane of the warp kernel
    (dense_problem, 2000, 32, 100, np.float32, 1e-5),  # d+1 = 33: the block kernel, two tiles of A
    (dense_problem, 1500, 300, 110, np.float64, 1e-9),  # 10 × 10 tiles of A
    (dense_problem, 3000, 17, 100, np.float32, 1e-5),
])
def test_cuda_gd_by_the_quadratic_form_matches_cpu(rng, problem, n, d, steps, dtype, tol):
    import torch

    X, y = problem(rng, n, d)
    X, y = X.astype(dtype), y.astype(dtype)
    assert _quadratic_used(n, X.shape[1], steps)
    lrs = np.array([0.02, 0.1])
    cpu = fit(X, y, "gd", lrs, steps)
    gpu = fit(torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda(), "gd", lrs, steps)
    above_floor = cpu.losses > 1e-20  # below, both are rounding of a vanishing residual
    assert above_floor[:, :30].all()
    assert rel_err(gpu.thetas, cpu.thetas) < tol
    np.testing.assert_allclose(gpu.losses.cpu().numpy()[above_floor], cpu.losses[above_floor], rtol=tol)
    assert (gpu.losses >= 0).all()


@requires_cuda
def test_cuda_fit_requires_its_workspace(rng):
    import torch
    from oxkernels import _C

    X, y = (torch.from_numpy(a).cuda() for a in dense_problem(rng, 100, 6))
    out = lambda *shape: torch.empty(shape, dtype=X.dtype, device="cuda")
    lr = torch.full((1,), 0.1, dtype=torch.float64, device="cuda")
    seed = torch.zeros(1, dtype=torch.int64, device="cuda")
    args = (X, y, torch.zeros(1, 7, dtype=X.dtype, device="cuda"), lr, seed, "gd", 50, 0, 0.9, 0.999, 1e-8,
            out(1, 51, 7), out(1, 51), torch.empty(1, 50, 0, dtype=torch.int64, device="cuda"), out(1, 2, 7))
    need = _C.linreg_fit_cuda_workspace_numel(100, 6, 1, 50, "gd", 0)
    assert need > 0
    with pytest.raises(ValueError, match="'workspace'"):
        _C.linreg_fit(*args, None)
    with pytest.raises(ValueError, match="'workspace'"):
        _C.linreg_fit(*args, torch.empty(need - 1, dtype=torch.float64, device="cuda"))
    with pytest.raises((TypeError, ValueError), match="'workspace'"):
        _C.linreg_fit(*args, torch.empty(need, dtype=torch.float32, device="cuda"))


@requires_cuda
@pytest.mark.parametrize("n,batch", [(40, 40), (64, 64), (100, 33), (100, 70), (1000, 100), (5000, 1)])
def test_cuda_draws_the_cpu_rows_in_rounds_of_32(rng, n, batch):
    """Warp 0 draws 32 rows a round (cuda/linreg_fit.cu): batches over one round, and batches of
    every row, where most candidates were drawn before."""
    import torch

    X, y = line_problem(rng, n)
    cpu = fit(X, y, "minibatch", 0.05, 20, batch_size=batch, seed=9)
    gpu = fit(torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda(), "minibatch", 0.05, 20, batch_size=batch, seed=9)
    assert np.array_equal(gpu.indices.cpu().numpy(), cpu.indices)
    assert rel_err(gpu.thetas, cpu.thetas) < 1e-9
