"""Adam benchmarks: one optimizer.step() of oxkernels.optim.Adam against
torch.optim.Adam with foreach=False, foreach=True and fused=True, on the
course networks' parameter sets and on large tensors; plus the machine's copy
bandwidth, so the GB/s of a step (28 bytes per float32 element: param, grad,
exp_avg, exp_avg_sq read = 16 B, param, exp_avg, exp_avg_sq written = 12 B)
can be read against what memory delivers.

    pytest benchmarks/bench_adam.py --benchmark-only          (or benchmarks/run.py)

Grads are fixed tensors (set once), as in torch's own optimizer benchmarks.
Every test name ends in _cpu or _cuda; CUDA cases synchronize inside the timed
function and skip without a GPU.
"""
import numpy as np
import pytest

import oxkernels

torch = pytest.importorskip("torch")
import oxkernels.optim as ox_optim  # noqa: E402  (needs torch)

BYTES_PER_ELEMENT = 28

MLP = [(64, 784), (64,), (32, 64), (32,), (10, 32), (10,)]  # course MNIST MLP, 52,650 params
CNN = [(6, 3, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120), (84,), (10, 84), (10,)]  # 62,006
CPU_CASES = {
    "mlp": MLP,
    "cnn": CNN,
    "256x64k": [(65536,)] * 256,
    "1M": [(1 << 20,)],
    "16M": [(1 << 24,)],
}
CUDA_CASES = {"mlp": MLP, "128M": [(1 << 27,)]}
IMPLS = {
    "oxkernels": lambda ps: ox_optim.Adam(ps, lr=1e-3),
    "torch": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False),
    "torch-foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    "torch-fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
}


def _params(shapes, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen).to(device))
        p.grad = torch.randn(s, generator=gen).to(device) * 1e-2
        params.append(p)
    return params


def _numel(shapes):
    return sum(int(np.prod(s)) for s in shapes)


def _run(benchmark, case, shapes, impl, device):
    params = _params(shapes, device)
    opt = IMPLS[impl](params)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.step()
        sync()

    for _ in range(3):
        step()  # state creation and warm-up
    n = _numel(shapes)
    benchmark.group = f"adam: {case} ({n:,} params in {len(shapes)} tensors)"
    benchmark.extra_info.update(impl=impl, device=device, bytes=BYTES_PER_ELEMENT * n)
    if n >= 1 << 24:
        benchmark.pedantic(step, rounds=10 if device == "cpu" else 50, iterations=1, warmup_rounds=1)
    else:
        benchmark(step)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_adam_step_cpu(benchmark, case, impl):
    _run(benchmark, case, CPU_CASES[case], impl, "cpu")


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_adam_step_cuda(benchmark, case, impl):
    if not (oxkernels.info()["cuda_built"] and torch.cuda.is_available()):
        pytest.skip("needs a CUDA build of oxkernels and a GPU")
    _run(benchmark, case, CUDA_CASES[case], impl, "cuda")


# --- what memory delivers on this machine ------------------------------------------------

COPY_BYTES = 256 << 20  # far above the L3


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_copy_bandwidth_cpu(benchmark, impl):
    """Copy of a 256 MB float32 array: bytes read + written (numpy: one thread; torch: its threads)."""
    n = COPY_BYTES // 4
    if impl == "numpy":
        src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)
        fn = lambda: np.copyto(dst, src)  # noqa: E731
    else:
        src, dst = torch.ones(n), torch.zeros(n)
        fn = lambda: dst.copy_(src)  # noqa: E731
    fn()
    benchmark.group = "adam: memory copy 256 MB (DRAM bandwidth)"
    benchmark.extra_info.update(impl=impl, device="cpu", bytes=2 * COPY_BYTES)
    benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_read_modify_write_bandwidth_cpu(benchmark, impl):
    """In place a += b over 64 MB arrays: 2 streams read, 1 written back (bytes = 3 × size), the
    read-modify-write pattern of an Adam step."""
    n = (64 << 20) // 4
    if impl == "numpy":
        a, b = np.ones(n, np.float32), np.ones(n, np.float32)
        fn = lambda: np.add(a, b, out=a)  # noqa: E731
    else:
        a, b = torch.ones(n), torch.ones(n)
        fn = lambda: a.add_(b)  # noqa: E731
    fn()
    benchmark.group = "adam: read-modify-write 64 MB (DRAM bandwidth)"
    benchmark.extra_info.update(impl=impl, device="cpu", bytes=3 * n * 4)
    benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=1)


def test_copy_bandwidth_cuda(benchmark):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    n = (1 << 30) // 4
    src, dst = torch.ones(n, device="cuda"), torch.zeros(n, device="cuda")

    def fn():
        dst.copy_(src)
        torch.cuda.synchronize()

    fn()
    benchmark.group = "adam: memory copy 1 GB (GPU bandwidth)"
    benchmark.extra_info.update(impl="torch", device="cuda", bytes=2 * n * 4)
    benchmark.pedantic(fn, rounds=20, iterations=1, warmup_rounds=2)
