"""The `oxkernels linreg` command runs (without torch) and writes its plots."""
import subprocess
import sys

import pytest

PNGS = ["line_fits.png", "loss_curves_line.png", "loss_curves_dense.png", "loss_surface.png"]


def run_demo(tmp_path, *extra, block_torch=True):
    code = (
        ("import sys; sys.modules['torch'] = None\n" if block_torch else "")
        + "from oxkernels.cli import main\n"
        + f"main(['linreg', '--n', '64', '--d', '3', '--steps', '30', '--out', {str(tmp_path)!r}, *{list(extra)!r}])\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_demo_writes_plots_without_torch(tmp_path):
    out = run_demo(tmp_path)
    assert out.returncode == 0, out.stderr
    for method in ("gd", "sgd", "minibatch", "adam"):
        assert out.stdout.count(f"\n{method} ") == 2, out.stdout  # one row per problem
    for name in PNGS:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


@pytest.mark.parametrize("option,message", [
    (["--steps", "-1"], "oxkernels linreg: --n and --d must be >= 1 and --steps >= 0"),
    (["--lr", "-0.1"], "oxkernels linreg: --lr must be > 0, got -0.1"),
])
def test_demo_rejects_bad_options(tmp_path, option, message):
    out = run_demo(tmp_path, *option)
    assert out.returncode == 1 and out.stderr.strip() == message, out.stderr


def test_demo_on_cuda_without_a_gpu_says_so(tmp_path):
    torch = pytest.importorskip("torch")
    from conftest import cuda_available

    if cuda_available():
        pytest.skip("checks the message on a machine without a usable GPU")
    out = run_demo(tmp_path, "--device", "cuda", block_torch=False)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"oxkernels linreg: --device cuda needs a GPU that torch {torch.__version__} sees")


def test_demo_on_cuda(tmp_path):
    from conftest import cuda_available, cuda_skip_reason

    if not cuda_available():
        pytest.skip(cuda_skip_reason())
    out = run_demo(tmp_path, "--device", "cuda", block_torch=False)
    assert out.returncode == 0, out.stderr
    assert all((tmp_path / name).exists() for name in PNGS)
