"""Linear benchmarks: each Linear(+activation) layer of the course networks, forward and
forward+backward at batch 64 / 256 / 1024, oxkernels against torch; and our GEMM's
GFLOP/s at the course shapes and at 1024³ / 2048³ against torch (MKL) and NumPy
(OpenBLAS).

    pytest benchmarks/bench_linear.py --benchmark-only          (or benchmarks/run.py)

NumPy's OpenBLAS picks its AVX-512 kernel only with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset; numpy is already imported by pytest's plugins, so the NumPy
cases run in a worker process started with those variables removed (one pipe round
trip per call, ~0.1 ms, negligible at 1024³). Peak for reference: tools/fma_peak.cpp
measures the FMA peak (219–227 GFLOP/s on the 2-core course machine's two threads).
CUDA cases synchronize inside the timed function and skip without a GPU.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import oxkernels
from oxkernels import _C

torch = pytest.importorskip("torch")
from oxkernels.ops import linear  # noqa: E402
from timing import interleaved_medians_us, time_us  # noqa: E402  (benchmarks/timing.py)
from oxkernels._torch.linear import gemm_workspace  # noqa: E402

LAYERS = [  # (in, out, activation): MNIST MLP, then the CNN's classifier head
    (784, 64, "relu"), (64, 32, "relu"), (32, 10, None),
    (400, 120, "relu"), (120, 84, "relu"), (84, 10, None),
]
BATCHES = [64, 256, 1024]
DEVICES = ["cpu", "cuda"]


def _device_or_skip(device):
    if device == "cuda" and not (torch.cuda.is_available() and oxkernels.info()["cuda_built"]):
        pytest.skip("CUDA not available (no GPU, or oxkernels built without CUDA)")
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _torch_layer(x, w, b, act):
    y = torch.nn.functional.linear(x, w, b)
    return torch.relu(y) if act == "relu" else torch.sigmoid(y) if act == "sigmoid" else y


IMPLS = {"oxkernels": lambda x, w, b, act: linear(x, w, b, act), "torch": _torch_layer}


def _layer_id(layer):
    k, n, act = layer
    return f"{k}x{n}{'-' + act if act else ''}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("layer", LAYERS, ids=_layer_id)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_linear_layer(benchmark, mode, layer, batch, impl, device):
    sync = _device_or_skip(device)
    k, n, act = layer
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, k, generator=gen).to(device)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(device).requires_grad_()
    b = torch.randn(n, generator=gen).to(device).requires_grad_()
    grad = torch.randn(batch, n, generator=gen).to(device)
    f = IMPLS[impl]
    if mode == "fwd":
        def run():
            with torch.no_grad():
                f(x, w, b, act)
            sync()
        flops = 2 * batch * k * n
    else:
        x.requires_grad_()

        def run():
            f(x, w, b, act).backward(grad)
            sync()
        flops = 6 * batch * k * n
    benchmark.group = f"linear: {mode} {_layer_id(layer)} batch {batch} {device}"
    benchmark.extra_info.update(impl=impl, device=device, flops=flops, bytes=4 * (batch * (k + n) + k * n + n))
    benchmark(run)


# ---- the GEMM itself ----------------------------------------------------------------------

GEMM_SHAPES = [  # (M, N, K): course forward products at batch 256, then square
    (256, 64, 784), (256, 120, 400), (256, 84, 120), (1024, 64, 784),
    (1024, 784, 64),  # dx of 784→64 at batch 1024: wide and shallow
    (1024, 1024, 1024), (2048, 2048, 2048),
]

_WORKER = textwrap.dedent("""
    import sys, numpy as np
    m, n, k = map(int, sys.argv[1:4])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32); b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    for line in sys.stdin:
        np.matmul(a, b, out=out)
        sys.stdout.write("ok\\n"); sys.stdout.flush()
""")


class NumpyWorker:
    """A NumPy process with OpenBLAS's auto-detected kernel (OPENBLAS_CORETYPE / _L2_SIZE unset)."""

    def __init__(self, m, n, k):
        env = {key: v for key, v in os.environ.items() if key not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        env["OPENBLAS_NUM_THREADS"] = str(oxkernels.get_num_threads())
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(m), str(n), str(k)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def __call__(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n"

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _gemm_id(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["oxkernels", "torch", "numpy"])
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=_gemm_id)
def test_gemm(benchmark, shape, impl, device):
    sync = _device_or_skip(device)
    if impl == "numpy" and device == "cuda":
        pytest.skip("NumPy runs on the CPU only")
    m, n, k = shape
    benchmark.group = f"gemm: {_gemm_id(shape)} {device}"
    benchmark.extra_info.update(impl=impl, device=device, flops=2 * m * n * k, bytes=4 * (m * k + k * n + m * n))
    if impl == "numpy":
        worker = NumpyWorker(m, n, k)
        try:
            worker()
            benchmark(worker)
        finally:
            worker.close()
        return
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen).to(device), torch.randn(k, n, generator=gen).to(device)
    out = torch.empty(m, n, device=device)
    stream = torch.cuda.current_stream().cuda_stream if device == "cuda" else 0
    if impl == "oxkernels":
        workspace = gemm_workspace(a, (m, n, k))  # CUDA split-K scratch, allocated once like `out`

        def run():
            _C.gemm(a, b, out, False, False, 1.0, 0.0, None, None, stream, workspace)
            sync()
    else:
        def run():
            torch.mm(a, b, out=out)
            sync()
    benchmark(run)


# ---- quick summary without pytest-benchmark: python benchmarks/bench_linear.py [cpu|cuda] ----

def summary(device="cpu"):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    print(f"linear layers on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), "
          f"{torch.get_num_threads()} torch / {oxkernels.get_num_threads()} oxkernels threads: median µs "
          "oxkernels / torch (interleaved), speed-up = torch / oxkernels")
    for batch in BATCHES:
        for k, n, act in LAYERS:
            x = torch.randn(batch, k, device=device, requires_grad=True)
            w = (torch.randn(n, k, device=device) / k ** 0.5).requires_grad_()
            b = torch.randn(n, device=device, requires_grad=True)
            g = torch.randn(batch, n, device=device)
            inner = max(1, int(1000 / (6 * batch * k * n / 1e5 + 30)))  # ~1 ms per timed batch
            row = []
            for mode in ("fwd", "fwd+bwd"):
                fns = {}
                for impl, f in IMPLS.items():
                    if mode == "fwd":
                        def run(f=f):
                            with torch.no_grad():
                                f(x, w, b, act)
                    else:
                        def run(f=f):
                            f(x, w, b, act).backward(g)
                    fns[impl] = run
                t = interleaved_medians_us(fns, sync, inner=inner)
                row.append(f"{mode} {t['oxkernels']:8.1f} / {t['torch']:8.1f} = x{t['torch'] / t['oxkernels']:.2f}")
            print(f"  batch {batch:5d} {_layer_id((k, n, act)):>12}: " + "   ".join(row), flush=True)
    for m, n, k in GEMM_SHAPES:
        a, bb = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        out = torch.empty(m, n, device=device)
        stream = torch.cuda.current_stream().cuda_stream if device == "cuda" else 0
        reps = max(3, min(200, int(2e10 / (m * n * k))))
        workspace = gemm_workspace(a, (m, n, k))
        t_ox = time_us(lambda: _C.gemm(a, bb, out, False, False, 1.0, 0.0, None, None, stream, workspace), sync,
                        reps)
        t_th = time_us(lambda: torch.mm(a, bb, out=out), sync, reps)
        gf = lambda t: 2 * m * n * k / t / 1e3  # noqa: E731
        print(f"  gemm {m}x{n}x{k}: oxkernels {gf(t_ox):8.1f} GFLOP/s, torch {gf(t_th):8.1f} GFLOP/s, "
              f"ratio {t_th / t_ox:.2f}", flush=True)


if __name__ == "__main__":
    summary(sys.argv[1] if len(sys.argv) > 1 else "cpu")
