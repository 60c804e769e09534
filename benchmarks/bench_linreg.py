"""linreg benchmarks: the fused gradient against torch and NumPy (GB/s of X read,
next to a NumPy copy of X), and 1000 GD steps of the course's line problem:
one fit call against a NumPy loop written as in the course and a torch loop. On CUDA
also 300 GD steps on 400 MB of X and 1000 mini-batch steps, against torch loops.

    pytest benchmarks/bench_linreg.py --benchmark-only          (or benchmarks/run.py)

Every test name ends in _cpu or _cuda (run.py selects with -k); CUDA cases
synchronize inside the timed function and skip without a GPU.
"""
import numpy as np
import pytest

import oxkernels
from oxkernels import ops
from oxkernels.linreg import fit

# (n, d, B, dtype): B = None is one θ (d+1,). X ≥ 256 MB in the large cases (the bandwidth target).
GRAD_CASES = [
    (100_000, 10, None, np.float64),
    (1_000_000, 100, None, np.float32),
    (100_000, 10, 64, np.float64),
    (700_000, 100, 64, np.float32),
]
GRAD_IDS = [f"n{n}-d{d}-B{B or 1}-{np.dtype(t).name}" for n, d, B, t in GRAD_CASES]
IMPLS = ["oxkernels", "torch", "numpy", "copy"]


def _torch():
    return pytest.importorskip("torch")


def _cuda_or_skip():
    torch = _torch()
    if not (oxkernels.info()["cuda_built"] and torch.cuda.is_available()):
        pytest.skip("needs a CUDA build of oxkernels and a GPU")
    return torch


_problems = {}


def grad_problem(n, d, B, dtype):
    key = (n, d, B, np.dtype(dtype).name)
    if key not in _problems:
        _problems.clear()  # keep one large X alive at a time
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n, d), dtype=np.float32).astype(dtype, copy=False)
        y = rng.standard_normal(n).astype(dtype)
        theta = rng.standard_normal((d + 1,) if B is None else (B, d + 1)).astype(dtype)
        _problems[key] = (X, y, theta)
    return _problems[key]


def numpy_grad(X, y, theta):
    """(1/n) X̃ᵀ(X̃θ − y) without materialising X̃: R = XWᵀ + b − y, G = [RᵀX, Σ R] / n."""
    T = np.atleast_2d(theta)
    R = X @ T[:, :-1].T + T[:, -1] - y[:, None]
    return np.concatenate([R.T @ X, R.sum(axis=0)[:, None]], axis=1) / X.shape[0]


def torch_grad(torch, X, y, theta):
    T = theta.reshape(-1, theta.shape[-1])
    R = torch.addmm(T[:, -1], X, T[:, :-1].T) - y[:, None]
    return torch.cat([R.T @ X, R.sum(0)[:, None]], 1) / X.shape[0]


class _Bytes:
    """Stands in for an array where only .nbytes is needed (a CUDA tensor)."""

    def __init__(self, nbytes):
        self.nbytes = nbytes


def _setup(benchmark, case, impl, device, X):
    benchmark.group = f"linreg: grad {case}"
    copy_bytes = 2 * X.nbytes if impl == "copy" else X.nbytes
    benchmark.extra_info.update(impl="numpy" if impl == "copy" else impl, device=device, bytes=int(copy_bytes))
    if impl == "copy":
        benchmark.extra_info["impl"] = "numpy-copy(X) r+w" if device == "cpu" else "torch-copy(X) r+w"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=GRAD_IDS)
def test_grad_cpu(benchmark, case, impl):
    n, d, B, dtype = case
    X, y, theta = grad_problem(n, d, B, dtype)
    _setup(benchmark, GRAD_IDS[GRAD_CASES.index(case)], impl, "cpu", X)
    if impl != "copy":
        benchmark.extra_info["flops"] = 4 * n * (d + 1) * (B or 1)
    if impl == "numpy" and X.nbytes * (B or 1) > 2**33:
        pytest.skip("NumPy takes ~10 s per call here; torch is the reference for this case")
    heavy = X.nbytes * (B or 1) > 2**30  # seconds per call: 3 rounds keep the file under ~2 minutes

    def run(fn, *args):
        if heavy:
            benchmark.pedantic(fn, args, rounds=3, iterations=1, warmup_rounds=1)
        else:
            benchmark(fn, *args)

    if impl == "oxkernels":
        run(ops.linreg_grad, X, y, theta)
    elif impl == "numpy":
        run(numpy_grad, X, y, theta)
    elif impl == "torch":
        torch = _torch()
        Xt, yt, tt = (torch.from_numpy(a) for a in (X, y, theta))
        run(torch_grad, torch, Xt, yt, tt)
    else:
        dst = np.empty_like(X)
        run(np.copyto, dst, X)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=GRAD_IDS)
def test_grad_cuda(benchmark, case, impl):
    torch = _cuda_or_skip()
    n, d, B, dtype = case
    X, y, theta = (torch.from_numpy(a).cuda() for a in grad_problem(n, d, B, dtype))
    _setup(benchmark, GRAD_IDS[GRAD_CASES.index(case)], impl, "cuda", _Bytes(X.numel() * X.element_size()))
    if impl != "copy":
        benchmark.extra_info["flops"] = 4 * n * (d + 1) * (B or 1)
    if impl == "numpy":
        pytest.skip("NumPy does not run on the GPU")
    if impl == "oxkernels":
        fn = lambda: ops.linreg_grad(X, y, theta)  # noqa: E731
    elif impl == "torch":
        fn = lambda: torch_grad(torch, X, y, theta)  # noqa: E731
    else:
        dst = torch.empty_like(X)
        fn = lambda: dst.copy_(X)  # noqa: E731

    def timed():
        out = fn()
        torch.cuda.synchronize()
        return out

    benchmark(timed)


# ---- 1000 GD steps on the course's line problem (n = 1000) ---------------------------------------
STEPS, N, LR = 1000, 1000, 0.05


def line_problem():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 2, (N, 1))
    return x, 3 * x[:, 0] + 4 + rng.standard_normal(N)


def numpy_course_loop(x, y):
    """As in the course: X_b = [x, 1]; each step the gradient, the update and the loss history."""
    X_b = np.c_[x, np.ones((len(x), 1))]
    theta = np.zeros(2)
    losses = []
    for _ in range(STEPS):
        gradients = X_b.T @ (X_b @ theta - y) / len(y)
        theta = theta - LR * gradients
        losses.append(np.mean((X_b @ theta - y) ** 2) / 2)
    return theta, losses


def torch_loop(torch, X_b, y, steps=STEPS, lr=LR):
    theta = torch.zeros(X_b.shape[1], dtype=X_b.dtype, device=X_b.device)
    losses = torch.empty(steps, dtype=X_b.dtype, device=X_b.device)
    for t in range(steps):
        theta = theta - lr * (X_b.T @ (X_b @ theta - y) / len(y))
        losses[t] = ((X_b @ theta - y) ** 2).mean() / 2
    return theta, losses


@pytest.mark.parametrize("impl", ["oxkernels", "numpy", "torch"])
def test_gd_1000_steps_cpu(benchmark, impl):
    x, y = line_problem()
    benchmark.group = "linreg: 1000 GD steps, line problem n=1000 (float64)"
    benchmark.extra_info.update(impl=impl, device="cpu")
    if impl == "oxkernels":
        benchmark(fit, x, y, "gd", LR, STEPS)
    elif impl == "numpy":
        benchmark.pedantic(numpy_course_loop, (x, y), rounds=5, iterations=1)
    else:
        torch = _torch()
        X_b = torch.from_numpy(np.c_[x, np.ones((N, 1))])
        benchmark.pedantic(torch_loop, (torch, X_b, torch.from_numpy(y)), rounds=5, iterations=1)


@pytest.mark.parametrize("impl", ["oxkernels", "torch"])
def test_gd_1000_steps_cuda(benchmark, impl):
    torch = _cuda_or_skip()
    x, y = line_problem()
    benchmark.group = "linreg: 1000 GD steps, line problem n=1000 (float64)"
    benchmark.extra_info.update(impl=impl, device="cuda")
    yc = torch.from_numpy(y).cuda()
    if impl == "oxkernels":
        xc = torch.from_numpy(x).cuda()

        def timed():
            res = fit(xc, yc, "gd", LR, STEPS)
            torch.cuda.synchronize()
            return res

        benchmark(timed)
    else:
        X_b = torch.from_numpy(np.c_[x, np.ones((N, 1))]).cuda()

        def timed():
            out = torch_loop(torch, X_b, yc)
            torch.cuda.synchronize()
            return out

        benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["oxkernels", "torch"])
def test_gd_300_steps_large_cuda(benchmark, impl):
    """A long gd fit on 400 MB of X: the quadratic form (cuda/linreg_form.cu) reads X once to
    build A and three times on the way to θ̂; torch's loop reads it twice per step."""
    torch = _cuda_or_skip()
    X, y, _ = grad_problem(1_000_000, 100, None, np.float32)
    benchmark.group = "linreg: 300 GD steps, n=1e6 d=100 (float32)"
    benchmark.extra_info.update(impl=impl, device="cuda")
    Xc, yc = torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda()
    if impl == "oxkernels":
        def timed():
            res = fit(Xc, yc, "gd", LR, 300)
            torch.cuda.synchronize()
            return res
    else:
        X_b = torch.cat([Xc, torch.ones((Xc.shape[0], 1), dtype=Xc.dtype, device="cuda")], dim=1)

        def timed():
            out = torch_loop(torch, X_b, yc, steps=300)
            torch.cuda.synchronize()
            return out
    benchmark.pedantic(timed, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["oxkernels", "torch"])
def test_minibatch_1000_steps_cuda(benchmark, impl):
    """Mini-batch SGD (32 rows a step) on the line problem: each step draws its rows on the device
    (one warp, cuda/linreg_fit.cu), where gd's steps draw none."""
    torch = _cuda_or_skip()
    x, y = line_problem()
    benchmark.group = "linreg: 1000 mini-batch steps (32 rows), line problem n=1000 (float64)"
    benchmark.extra_info.update(impl=impl, device="cuda")
    xc, yc = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    if impl == "oxkernels":
        def timed():
            res = fit(xc, yc, "minibatch", LR, STEPS, batch_size=32)
            torch.cuda.synchronize()
            return res
    else:
        X_b = torch.cat([xc, torch.ones((N, 1), dtype=xc.dtype, device="cuda")], dim=1)

        def timed():
            theta = torch.zeros(2, dtype=X_b.dtype, device="cuda")
            losses = torch.empty(STEPS, dtype=X_b.dtype, device="cuda")
            for t in range(STEPS):
                losses[t] = ((X_b @ theta - yc) ** 2).mean() / 2
                rows = torch.randperm(N, device="cuda")[:32]
                Xs = X_b[rows]
                theta = theta - LR * (Xs.T @ (Xs @ theta - yc[rows]) / 32)
            torch.cuda.synchronize()
            return theta, losses
    benchmark.pedantic(timed, rounds=3, iterations=1, warmup_rounds=1)
