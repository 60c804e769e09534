"""Softmax cross-entropy (10 classes, the course's heads) against torch, forward
and forward+backward, at batch 64, 256 and 1024; plus log_softmax forward.

    pytest benchmarks/bench_loss.py --benchmark-only
    python benchmarks/bench_loss.py [cpu|cuda]      (quick summary: interleaved medians)
"""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import oxkernels.nn as onn  # noqa: E402
import oxkernels.ops as ops  # noqa: E402

BATCHES = [64, 256, 1024]
CLASSES = 10
DEVICES = ["cpu", "cuda"]


def _setup(device, n):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    torch.manual_seed(0)
    logits = torch.randn(n, CLASSES, device=device)
    target = torch.randint(0, CLASSES, (n,), device=device)
    return logits, target


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _loss_fn(impl):
    return onn.CrossEntropyLoss() if impl == "oxkernels" else torch.nn.CrossEntropyLoss()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["oxkernels", "torch"])
@pytest.mark.parametrize("n", BATCHES)
def test_cross_entropy_forward(benchmark, device, impl, n):
    logits, target = _setup(device, n)
    loss_fn = _loss_fn(impl)

    def run():
        loss = loss_fn(logits, target)
        _sync(device)
        return loss

    benchmark.group = f"loss: cross_entropy forward N={n} C={CLASSES} {device}"
    benchmark.extra_info.update(impl=impl, device=device, bytes=logits.numel() * 4 + n * 8, flops=5 * logits.numel())
    benchmark(run)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["oxkernels", "torch"])
@pytest.mark.parametrize("n", BATCHES)
def test_cross_entropy_forward_backward(benchmark, device, impl, n):
    logits, target = _setup(device, n)
    logits.requires_grad_(True)
    loss_fn = _loss_fn(impl)

    def run():
        (dx,) = torch.autograd.grad(loss_fn(logits, target), logits)
        _sync(device)
        return dx

    benchmark.group = f"loss: cross_entropy forward+backward N={n} C={CLASSES} {device}"
    benchmark.extra_info.update(impl=impl, device=device, bytes=3 * logits.numel() * 4 + 2 * n * 8,
                                flops=10 * logits.numel())
    benchmark(run)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["oxkernels", "torch"])
@pytest.mark.parametrize("n", BATCHES)
def test_log_softmax_forward(benchmark, device, impl, n):
    logits, _ = _setup(device, n)
    fn = ops.log_softmax if impl == "oxkernels" else (lambda v: F.log_softmax(v, -1))

    def run():
        y = fn(logits)
        _sync(device)
        return y

    benchmark.group = f"loss: log_softmax forward N={n} C={CLASSES} {device}"
    benchmark.extra_info.update(impl=impl, device=device, bytes=2 * logits.numel() * 4)
    benchmark(run)


# ---- quick summary without pytest-benchmark: python benchmarks/bench_loss.py [cpu|cuda] ----

def summary(device="cpu"):
    from timing import interleaved_medians_us

    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    print(f"cross_entropy forward+backward, C = {CLASSES}, on {device}: median µs oxkernels / torch "
          "(interleaved), speed-up = torch / oxkernels")
    for n in BATCHES:
        torch.manual_seed(0)
        logits = torch.randn(n, CLASSES, device=device, requires_grad=True)
        target = torch.randint(0, CLASSES, (n,), device=device)
        fns = {impl: (lambda fn=_loss_fn(impl): torch.autograd.grad(fn(logits, target), logits))
               for impl in ("oxkernels", "torch")}
        t = interleaved_medians_us(fns, sync, reps=200, inner=10)
        print(f"  N={n:5d}: {t['oxkernels']:7.1f} / {t['torch']:7.1f} = x{t['torch'] / t['oxkernels']:.2f}", flush=True)


if __name__ == "__main__":
    import sys

    summary(sys.argv[1] if len(sys.argv) > 1 else "cpu")
