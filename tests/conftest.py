"""Shared test helpers: references, poisoned outputs, CUDA skips, forced instruction sets."""
import contextlib
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

import oxkernels


ISA_ORDER = ["scalar", "avx2", "avx512"]


def runnable_isas():
    """The instruction sets this CPU runs our kernels with, lowest first."""
    return ISA_ORDER[: ISA_ORDER.index(oxkernels.info()["isa_best"]) + 1]


@contextlib.contextmanager
def forced_isa(isa):
    """Runs the block with our CPU kernels forced to `isa` (the test skips where this CPU lacks
    it), then restores the instruction set active before: OXKERNELS_ISA may have lowered it, and
    set_isa("auto") would raise it again for the rest of the run."""
    if isa not in runnable_isas():
        pytest.skip(f"this CPU does not run {isa}")
    before = oxkernels.info()["isa"]
    oxkernels.set_isa(isa)
    try:
        yield
    finally:
        oxkernels.set_isa(before)


def rel_err(out, ref, floor: float = 0.0) -> float:
    """‖out − ref‖ / max(‖ref‖, floor) in float64 (NaN anywhere gives inf). A floor states the
    scale of the rounding error where the result can be far smaller than its terms."""
    out = np.asarray(_to_numpy(out), dtype=np.float64)
    ref = np.asarray(_to_numpy(ref), dtype=np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
    if not np.all(np.isfinite(out)) and not np.array_equal(np.isnan(out), np.isnan(ref)):
        return float("inf")
    denom = max(float(np.linalg.norm(ref)), floor)
    return float(np.linalg.norm(out - ref) / (denom if denom > 0 else 1.0))


def _to_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()  # NumPy has no bfloat16
    return x


def poison(x):
    """Fill an output buffer with NaN before a kernel writes it, so unwritten
    elements show up in the comparison."""
    if hasattr(x, "fill_"):
        x.fill_(float("nan"))
    else:
        x.fill(np.nan)
    return x


def cuda_available() -> bool:
    if not oxkernels.info()["cuda_built"]:
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def cuda_skip_reason() -> str:
    if not oxkernels.info()["cuda_built"]:
        return "oxkernels was built without CUDA kernels"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch on this machine"
    return ""


requires_cuda = pytest.mark.skipif(not cuda_available(), reason=cuda_skip_reason() or "CUDA available")


DATASET_FOLDERS = {"mnist": "mnist", "cifar10": "cifar10/cifar-10-batches-bin"}


def data_root(dataset: str):
    """$OXKERNELS_DATA when it holds the real data set (mnist or cifar10), else None
    (a test never downloads it)."""
    root = os.environ.get("OXKERNELS_DATA")
    return Path(root) if root and (Path(root) / DATASET_FOLDERS[dataset]).is_dir() else None


def requires_data(dataset: str):
    return pytest.mark.skipif(data_root(dataset) is None,
                              reason=f"real {dataset} not found: set OXKERNELS_DATA to the shared data folder")


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's name: fresh inputs per test, reproducible."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
