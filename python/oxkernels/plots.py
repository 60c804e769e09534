"""Plots of the course material, written as PNG files (matplotlib, imported lazily
with the non-interactive Agg backend so that no display is needed)."""
import numpy as np

METHOD_COLORS = {"gd": "tab:blue", "sgd": "tab:orange", "minibatch": "tab:green", "adam": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_line_fits(x, y, thetas, path, title="y = kx + b: data and fitted lines"):
    """Scatter of (x, y) and the line θ = (k, b) of each method; thetas: {method: (2,)}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter(x, y, s=6, alpha=0.35, color="gray", label="data")
    xs = np.linspace(float(np.min(x)), float(np.max(x)), 2)
    for method, (k, b) in thetas.items():
        ax.plot(xs, k * xs + b, color=METHOD_COLORS.get(method), label=f"{method}: k={k:.3f}, b={b:.3f}")
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_curves(losses, path, title="full-data loss f(θ_t)", floor=None):
    """Loss per step, log scale; losses: {method: (steps+1,)}; floor: the least-squares loss."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for method, curve in losses.items():
        ax.plot(np.arange(len(curve)), curve, color=METHOD_COLORS.get(method), label=method, lw=1.2)
    if floor is not None:
        ax.axhline(floor, color="black", ls="--", lw=0.8, label="least squares")
    ax.set_yscale("log")
    ax.set(xlabel="step t", ylabel="f(θ_t)", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_surface(grid_k, grid_b, surface, paths, path, optimum=None, title="loss surface f(k, b) and optimizer paths"):
    """Contour of f over the (k, b) grid (surface[i, j] = f(grid_k[j], grid_b[i])) with each
    method's path; paths: {method: (steps+1, 2)}; optimum: (k, b) of the least-squares fit."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    levels = np.geomspace(max(float(surface.min()), 1e-12), float(surface.max()), 25)
    cs = ax.contour(grid_k, grid_b, surface, levels=levels, cmap="viridis", linewidths=0.7)
    fig.colorbar(cs, ax=ax, label="f(k, b)")
    for method, p in paths.items():
        ax.plot(p[:, 0], p[:, 1], color=METHOD_COLORS.get(method), lw=1.0, marker=".", ms=2, label=method)
    if optimum is not None:
        ax.plot(*optimum, marker="*", color="black", ms=12, ls="none", label="least squares")
    ax.set(xlabel="k (slope)", ylabel="b (intercept)", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
