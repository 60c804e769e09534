"""`oxkernels linreg`: the course's linear-regression demo.

Two problems: the line y = kx + b + noise (a 2-D loss surface in (k, b)) and a
d-dimensional one y = Xw + b + noise. Each is solved by GD, SGD, mini-batch SGD
and Adam with oxkernels.linreg.fit; a table compares the final loss, the distance
to the least-squares solution and the time per step, and PNG plots go to --out.
Runs on NumPy alone (CPU); --device cuda uses torch tensors on the GPU.
"""
import time
from pathlib import Path

import numpy as np

from .linreg import METHODS, fit

LINE_K, LINE_B = 3.0, 4.0


def add_parser(subparsers):
    p = subparsers.add_parser("linreg", help="linear regression by GD / SGD / mini-batch / Adam, with plots",
                              description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="samples per problem (default 1000)")
    p.add_argument("--d", type=int, default=10, help="features of the d-dimensional problem (default 10)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per method (default 1000)")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of every method (default 0.05)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size of minibatch and adam (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of the sampled rows (default 0)")
    p.add_argument("--out", default="linreg-out", help="folder for the PNG plots (default ./linreg-out)")
    p.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (torch tensors on the GPU)")
    p.set_defaults(func=run)


def line_problem(n, rng):
    x = rng.uniform(0.0, 2.0, (n, 1))
    y = LINE_K * x[:, 0] + LINE_B + rng.standard_normal(n)
    return x, y


def dense_problem(n, d, rng):
    X = rng.standard_normal((n, d)) / np.sqrt(max(d, 1))
    w = rng.standard_normal(d)
    y = X @ w + 0.5 + 0.1 * rng.standard_normal(n)
    return X, y


def lstsq(X, y):
    Xt = np.hstack([X, np.ones((X.shape[0], 1))])
    theta = np.linalg.lstsq(Xt, y, rcond=None)[0]
    loss = float(np.mean((Xt @ theta - y) ** 2) / 2)
    return theta, loss


def _to_device(a, device):
    if device == "cpu":
        return a
    import torch

    return torch.from_numpy(a).to(device)


def _to_numpy(a):
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def solve_all(X, y, args):
    """{method: (thetas (steps+1, d+1), losses (steps+1,), seconds per step)}."""
    Xd, yd = _to_device(X, args.device), _to_device(y, args.device)
    out = {}
    for method in METHODS:
        fit(Xd, yd, method, args.lr, min(args.steps, 2), batch_size=args.batch_size, seed=args.seed)  # warm up
        if args.device != "cpu":
            import torch

            torch.cuda.synchronize()
        start = time.perf_counter()
        res = fit(Xd, yd, method, args.lr, args.steps, batch_size=args.batch_size, seed=args.seed)
        thetas, losses = _to_numpy(res.thetas), _to_numpy(res.losses)  # copies back (syncs on CUDA)
        per_step = (time.perf_counter() - start) / max(args.steps, 1)
        out[method] = (thetas, losses, per_step)
    return out


def print_table(title, results, theta_ls, loss_ls):
    print(f"\n{title}  (least-squares loss {loss_ls:.6g})")
    print(f"{'method':<10} {'final loss':>12} {'|θ - θ_ls|':>12} {'µs / step':>10}")
    for method, (thetas, losses, per_step) in results.items():
        dist = float(np.linalg.norm(thetas[-1] - theta_ls))
        print(f"{method:<10} {losses[-1]:>12.6g} {dist:>12.4g} {per_step * 1e6:>10.2f}")


def run(args) -> int:
    if args.n < 1 or args.d < 1 or args.steps < 0:
        raise SystemExit("oxkernels linreg: --n and --d must be >= 1 and --steps >= 0")
    if not args.lr > 0:
        raise SystemExit(f"oxkernels linreg: --lr must be > 0, got {args.lr}")
    if args.device != "cpu":
        try:
            import torch
        except ImportError:
            raise SystemExit("oxkernels linreg: --device cuda needs torch (pip install 'oxkernels[torch]')")
        from . import info

        built = info()["cuda_built"]
        if not (torch.cuda.is_available() and built):
            raise SystemExit(f"oxkernels linreg: --device {args.device} needs a GPU that torch {torch.__version__} "
                             f"sees and an oxkernels built with CUDA kernels (built: {built})")
    args.batch_size = min(args.batch_size, args.n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    x, y = line_problem(args.n, rng)
    theta_ls, loss_ls = lstsq(x, y)
    line = solve_all(x, y, args)
    print_table(f"line y = {LINE_K}x + {LINE_B} + noise, n = {args.n}, {args.steps} steps, lr = {args.lr}",
                line, theta_ls, loss_ls)

    X, yd = dense_problem(args.n, args.d, rng)
    dense_ls, dense_loss_ls = lstsq(X, yd)
    dense = solve_all(X, yd, args)
    print_table(f"d = {args.d}, n = {args.n}, {args.steps} steps, lr = {args.lr}", dense, dense_ls, dense_loss_ls)

    from . import plots
    from .ops import linreg_loss

    plots.plot_line_fits(x[:, 0], y, {m: r[0][-1] for m, r in line.items()}, out / "line_fits.png")
    plots.plot_loss_curves({m: r[1] for m, r in line.items()}, out / "loss_curves_line.png",
                           title="line problem: full-data loss", floor=loss_ls)
    plots.plot_loss_curves({m: r[1] for m, r in dense.items()}, out / "loss_curves_dense.png",
                           title=f"d = {args.d}: full-data loss", floor=dense_loss_ls)
    # The surface: f at every grid point in one batched call (B = 120 × 100 thetas, one pass over x).
    paths = {m: r[0] for m, r in line.items()}
    every = np.concatenate([p for p in paths.values()] + [theta_ls[None]])
    lo, hi = every.min(axis=0), every.max(axis=0)
    pad = 0.15 * (hi - lo) + 0.5
    grid_k = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 120)
    grid_b = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 100)
    kk, bb = np.meshgrid(grid_k, grid_b)
    surface = linreg_loss(x, y, np.stack([kk.ravel(), bb.ravel()], axis=1)).reshape(kk.shape)
    plots.plot_loss_surface(grid_k, grid_b, surface, paths, out / "loss_surface.png", optimum=theta_ls)
    print(f"\nplots written to {out}/: line_fits.png, loss_curves_line.png, loss_curves_dense.png, loss_surface.png")
    return 0
