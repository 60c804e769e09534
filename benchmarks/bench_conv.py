"""conv benchmarks at the course's CIFAR-10 shapes, oxkernels against torch
(oneDNN on the CPU, cuDNN with cudnn.benchmark=True on the GPU):

- conv2d forward, and forward + backward as in training (conv1's input is the
  data, so it needs no gradient; conv2's input does), GFLOP/s via extra_info;
- the fused conv → ReLU → max-pool block against torch's three-op chain.

    pytest benchmarks/bench_conv.py --benchmark-only          (or benchmarks/run.py)

Test names end in _cpu or _cuda; CUDA cases synchronize inside the timed
function and skip without a GPU.

On the GPU torch runs twice: "torch" with its defaults, under which cuDNN may use
TF32 tensor cores for float32 convolutions (torch.backends.cudnn.allow_tf32 is True
by default: inputs rounded to 10 mantissa bits), and "torch-fp32" with allow_tf32
off, the full float32 arithmetic that our kernels do.
"""
import contextlib

import pytest

import oxkernels

torch = pytest.importorskip("torch")
F = torch.nn.functional
from oxkernels import ops  # noqa: E402

# name: (C, H, O, K, input needs grad)
LAYERS = {"conv1": (3, 32, 6, 5, False), "conv2": (6, 14, 16, 5, True)}
BATCHES = [64, 256]
CASES = [(layer, n) for layer in LAYERS for n in BATCHES]
IDS = [f"{layer}-N{n}" for layer, n in CASES]


def _device_or_skip(device):
    if device == "cuda":
        if not (oxkernels.info()["cuda_built"] and torch.cuda.is_available()):
            pytest.skip("needs a CUDA build of oxkernels and a GPU")
        torch.backends.cudnn.benchmark = True


def _problem(layer, n, device):
    C, H, O, K, x_grad = LAYERS[layer]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, C, H, H, generator=g).to(device).requires_grad_(x_grad)
    w = (torch.randn(O, C, K, K, generator=g) * 0.1).to(device).requires_grad_()
    b = torch.randn(O, generator=g).to(device).requires_grad_()
    return x, w, b


def _flops(layer, n, backward):
    C, H, O, K, x_grad = LAYERS[layer]
    OH = H - K + 1
    one = 2 * n * O * OH * OH * C * K * K  # one pass of the multiply-adds
    return one * (1 + (1 + x_grad if backward else 0))


def _timed(fn, device):
    if device != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()

    return run


IMPLS = ["oxkernels", "torch", "torch-fp32"]


@contextlib.contextmanager
def _torch_precision(impl, device):
    """cuDNN's TF32 off for torch-fp32 (CUDA only: on the CPU it is the same as torch)."""
    if impl == "torch-fp32" and device != "cuda":
        pytest.skip("torch-fp32 differs from torch on CUDA only (cuDNN's TF32)")
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = before and impl != "torch-fp32"
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def _conv(impl):
    return ops.conv2d if impl == "oxkernels" else F.conv2d


def _fused(impl):
    if impl == "oxkernels":
        return ops.conv2d_relu_maxpool2d
    return lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b)), 2)


def _run_conv(benchmark, layer, n, impl, device, backward):
    _device_or_skip(device)
    x, w, b = _problem(layer, n, device)
    conv = _conv(impl)
    inputs = [t for t in (x, w, b) if t.requires_grad]
    if backward:
        grad = torch.randn_like(conv(x, w, b))

        def step():
            torch.autograd.grad(conv(x, w, b), inputs, grad)
    else:

        def step():
            with torch.no_grad():
                conv(x, w, b)

    benchmark.group = f"conv: conv2d {'fwd+bwd' if backward else 'fwd'} {layer} N={n} ({device})"
    benchmark.extra_info.update(impl=impl, device=device, flops=_flops(layer, n, backward))
    with _torch_precision(impl, device):
        benchmark(_timed(step, device))


def _run_fused(benchmark, layer, n, impl, device, backward):
    _device_or_skip(device)
    x, w, b = _problem(layer, n, device)
    block = _fused(impl)
    inputs = [t for t in (x, w, b) if t.requires_grad]
    if backward:
        grad = torch.randn_like(block(x, w, b))

        def step():
            torch.autograd.grad(block(x, w, b), inputs, grad)
    else:

        def step():
            with torch.no_grad():
                block(x, w, b)

    benchmark.group = f"conv: conv-relu-pool {'fwd+bwd' if backward else 'fwd'} {layer} N={n} ({device})"
    benchmark.extra_info.update(impl=impl, device=device, flops=_flops(layer, n, backward))
    with _torch_precision(impl, device):
        benchmark(_timed(step, device))


# (device, pass): the GPU fused block is timed forward+backward only, as in its issue's target
MODES = [("cpu", False), ("cpu", True), ("cuda", False), ("cuda", True)]
MODE_IDS = [f"{device}-{'fwdbwd' if backward else 'fwd'}" for device, backward in MODES]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer,n", CASES, ids=IDS)
@pytest.mark.parametrize("device,backward", MODES, ids=MODE_IDS)
def test_conv2d(benchmark, device, backward, layer, n, impl):
    _run_conv(benchmark, layer, n, impl, device, backward)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer,n", CASES, ids=IDS)
@pytest.mark.parametrize("device,backward", [m for m in MODES if m != ("cuda", False)],
                         ids=[i for m, i in zip(MODES, MODE_IDS) if m != ("cuda", False)])
def test_fused(benchmark, device, backward, layer, n, impl):
    _run_fused(benchmark, layer, n, impl, device, backward)
