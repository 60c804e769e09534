"""torch integration, loaded on first use of a torch tensor (or at import of
oxkernels when torch is already imported).

Every module in this package defines the torch.library custom ops of one
family (namespace `oxkernels`) with their fake implementations and autograd;
load() imports them all.
"""
import importlib
import os
import pkgutil

from .. import _C

_loaded = False


def load():
    """Import torch, teach the native module torch's tensor type, register every
    custom op, and adopt torch's CPU threads (their count, and its OpenMP team). Idempotent."""
    global _loaded
    if _loaded:
        return
    import torch

    codes = {
        torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3,
        torch.int64: 4, torch.int32: 5, torch.uint8: 6, torch.int8: 7, torch.bool: 8,
    }
    _C.set_torch_types(torch.Tensor, codes)
    # Our parallel loops on torch's OpenMP threads rather than a second pool competing for the
    # same cores (see share_openmp_threads in csrc/core/threading.h), as many as torch uses at
    # each call; OXKERNELS_OWN_POOL=1 keeps our pool, sized as torch's count is now.
    if not _C.share_openmp_threads(os.environ.get("OXKERNELS_OWN_POOL", "") != "1"):
        _C.set_num_threads(torch.get_num_threads())
    _loaded = True
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
