"""max_pool2d, relu and sigmoid at the CIFAR-10 CNN's shapes, against torch:
forward, and forward+backward (backward through autograd, as in training).

    pytest benchmarks/bench_pool_act.py --benchmark-only
    python benchmarks/bench_pool_act.py [cpu|cuda]      (quick summary: alternating blocks)
"""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import oxkernels.ops as ops  # noqa: E402

# (N, C, H, W) of the pool inputs / activations: after conv1 and after conv2.
SHAPES = {"conv1": (6, 28, 28), "conv2": (16, 10, 10)}
BATCHES = [64, 256]
OPS = {
    "max_pool2d": (lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)),
    # Not in the course networks: a padded, overlapping window (ResNet's stem pool) on the general path.
    "max_pool2d_3x3s2p1": (lambda x: ops.max_pool2d(x, 3, 2, padding=1), lambda x: F.max_pool2d(x, 3, 2, padding=1)),
    "relu": (ops.relu, torch.relu),
    "sigmoid": (ops.sigmoid, torch.sigmoid),
}
DEVICES = ["cpu", "cuda"]


def _setup(device, n, stage, op):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    torch.manual_seed(0)
    x = torch.randn(n, *SHAPES[stage], device=device)
    y = OPS[op][1](x)
    return x, torch.randn_like(y)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _bytes(x, op, backward):
    read = x.numel() * 4
    write = read // 4 if op.startswith("max_pool2d") else read
    return read + write + (2 * read + write if backward else 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["oxkernels", "torch"])
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("stage", list(SHAPES))
@pytest.mark.parametrize("n", BATCHES)
def test_forward(benchmark, device, impl, op, stage, n):
    x, _ = _setup(device, n, stage, op)
    fn = OPS[op][0 if impl == "oxkernels" else 1]

    def run():
        y = fn(x)
        _sync(device)
        return y

    benchmark.group = f"pool_act: {op} forward {stage} N={n} {device}"
    benchmark.extra_info.update(impl=impl, device=device, bytes=_bytes(x, op, False))
    benchmark(run)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["oxkernels", "torch"])
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("stage", list(SHAPES))
@pytest.mark.parametrize("n", BATCHES)
def test_forward_backward(benchmark, device, impl, op, stage, n):
    x, g = _setup(device, n, stage, op)
    x.requires_grad_(True)
    fn = OPS[op][0 if impl == "oxkernels" else 1]

    def run():
        (dx,) = torch.autograd.grad(fn(x), x, g)
        _sync(device)
        return dx

    benchmark.group = f"pool_act: {op} forward+backward {stage} N={n} {device}"
    benchmark.extra_info.update(impl=impl, device=device, bytes=_bytes(x, op, True))
    benchmark(run)


# ---- quick summary without pytest-benchmark: python benchmarks/bench_pool_act.py [cpu|cuda] ----

def summary(device="cpu"):
    from timing import blocked_medians_us  # each call allocates its outputs: blocks, not turns

    print(f"max_pool2d / relu / sigmoid on {device}: median µs oxkernels / torch (alternating blocks), "
          "speed-up = torch / oxkernels")
    for n in BATCHES:
        for stage in SHAPES:
            for op in OPS:
                x, g = _setup(device, n, stage, op)
                x.requires_grad_(True)
                row = []
                for mode in ("fwd", "fwd+bwd"):
                    fns = {}
                    for impl, fn in zip(("oxkernels", "torch"), OPS[op]):
                        if mode == "fwd":
                            def run(fn=fn):
                                with torch.no_grad():
                                    fn(x)
                        else:
                            def run(fn=fn):
                                torch.autograd.grad(fn(x), x, g)
                        fns[impl] = run
                    t = blocked_medians_us(fns, lambda: _sync(device), blocks=3, reps=150)
                    row.append(f"{mode} {t['oxkernels']:7.1f} / {t['torch']:7.1f} = x{t['torch'] / t['oxkernels']:.2f}")
                print(f"  {op:>18} {stage} N={n:4d}: " + "   ".join(row), flush=True)


if __name__ == "__main__":
    import sys

    summary(sys.argv[1] if len(sys.argv) > 1 else "cpu")
