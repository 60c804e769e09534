"""oxkernels: C++/CUDA kernels for the workloads of an Optimization + DNN course.

NumPy is the only requirement; torch support (custom ops, modules, optimizers)
loads when torch is used. See README.md for the API.
"""
import sys as _sys

from . import _C
from . import ops

__version__ = _C.build_info()["version"]

__all__ = ["ops", "info", "get_num_threads", "set_num_threads", "set_isa", "__version__"]


def info(devices: bool = False) -> dict:
    """What this build holds: version, CUDA (archs), CPU ISA in use, threads; with
    devices=True also the GPUs the CUDA runtime sees ("gpus", "cuda_status")."""
    result = dict(_C.build_info())
    if devices:
        gpus, status = _C.cuda_devices()
        result["gpus"] = [f"sm_{cc} ({sms} SMs)" for cc, sms in gpus]
        result["cuda_status"] = status
    return result


def get_num_threads() -> int:
    """Threads the CPU kernels use."""
    return _C.num_threads()


def set_num_threads(n: int) -> None:
    """Threads for the CPU kernels, from now on. Until this is called they follow torch's
    count (torch.set_num_threads, read at each call) once torch is loaded, else
    $OXKERNELS_NUM_THREADS, else the number of cores."""
    _C.set_num_threads(int(n))


def set_isa(name: str) -> None:
    """Force the CPU instruction set: 'auto', 'scalar', 'avx2' or 'avx512'."""
    _C.set_isa(name)


_LAZY_SUBMODULES = {"nn", "optim", "models", "linreg", "data", "train", "tune", "fused"}


def __getattr__(name):
    """`oxkernels.nn`, `oxkernels.optim`, ... import on first use (most need torch)."""
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'oxkernels' has no attribute '{name}'")


if _sys.modules.get("torch") is not None:  # torch is already paid for: register the torch ops now
    from . import _torch

    _torch.load()
