"""The package itself: build info, CPU ISA choice, threads, import without torch,
and how arrays of every kind cross into the native module."""
import subprocess
import sys

import numpy as np
import pytest

import oxkernels
from oxkernels import _C
from conftest import ISA_ORDER, forced_isa, runnable_isas


def test_info_reports_build():
    info = oxkernels.info()
    assert info["version"] == oxkernels.__version__
    assert info["isa"] in {"scalar", "avx2", "avx512"}
    assert info["threads"] >= 1
    assert isinstance(info["cuda_built"], bool)


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "oxkernels", "info"], capture_output=True, text=True, check=True)
    assert oxkernels.__version__ in out.stdout
    assert "CPU instruction set" in out.stdout


def test_import_and_numpy_ops_work_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, oxkernels\n"
        "g = oxkernels.ops.linreg_grad(np.ones((4, 2)), np.zeros(4), np.ones(3))\n"
        "assert np.allclose(g, [3, 3, 3]), g\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_set_isa_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="name"):
        oxkernels.set_isa("sse9")
    for isa in ISA_ORDER:
        if isa in runnable_isas():
            with forced_isa(isa):
                assert _C.isa() == isa
        else:
            with pytest.raises(ValueError, match="does not support"):
                oxkernels.set_isa(isa)


THREADS_FOLLOW_TORCH = """
import torch
import oxkernels, oxkernels.nn  # noqa: F401  (loads the torch layer: torch's OpenMP team)
assert oxkernels.info()["thread_pool"].startswith("OpenMP"), oxkernels.info()
seen = []
for n in (1, 2, 1):
    torch.set_num_threads(n)
    seen.append(oxkernels.get_num_threads())
oxkernels.set_num_threads(2)  # chosen here: torch's count no longer applies
torch.set_num_threads(1)
seen.append(oxkernels.get_num_threads())
print(seen)
"""


def test_threads_follow_torch_until_chosen():
    """On torch's OpenMP team our kernels use as many threads as torch.set_num_threads left
    (read at each call), until oxkernels.set_num_threads chooses a count. (A subprocess:
    both counts are process-wide.)"""
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-c", THREADS_FOLLOW_TORCH], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[1,", "2,", "1,", "2]"]


def test_set_num_threads_round_trip():
    before = oxkernels.get_num_threads()
    try:
        oxkernels.set_num_threads(1)
        assert oxkernels.get_num_threads() == 1
        with pytest.raises(ValueError, match="'n'"):
            oxkernels.set_num_threads(0)
    finally:
        oxkernels.set_num_threads(before)


def test_non_arrays_are_type_errors_naming_the_argument():
    with pytest.raises(TypeError, match="'X'.*list"):
        oxkernels.ops.linreg_grad([[1.0]], np.zeros(1), np.zeros(2))


def test_unsupported_dtype_is_named():
    X = np.ones((3, 2), dtype=np.complex64)
    with pytest.raises(TypeError, match="'X'.*complex64"):
        oxkernels.ops.linreg_grad(X, np.zeros(3, np.complex64), np.zeros(3, np.complex64))


def test_dlpack_producer_is_accepted():
    class Producer:  # any object with __dlpack__ works, here a wrapper around NumPy's
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, *args, **kw):
            return self.a.__dlpack__(*args, **kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    rng = np.random.default_rng(1)
    X, y, th = rng.standard_normal((9, 2)), rng.standard_normal(9), rng.standard_normal(3)
    out = np.full(3, np.nan)
    _C.linreg_grad(Producer(X), Producer(y), Producer(th), None, out, 0)
    np.testing.assert_allclose(out, oxkernels.ops.linreg_grad(X, y, th), rtol=1e-12)


def test_dlpack_exports_live_through_the_call_as_optional_and_list_arguments():
    """A producer that exports a fresh buffer each time: the export must outlive argument
    loading when it is an optional argument (a bias) or a list element (adam's params)."""
    class Fresh:
        def __init__(self, n, value):
            self.n, self.value = n, value

        def __dlpack__(self, *args, **kw):
            return np.full(self.n, self.value, np.float32).__dlpack__(*args, **kw)

        def __dlpack_device__(self):
            return (1, 0)

    n = 1 << 16
    a, b, out = np.ones((4, 8), np.float32), np.ones((8, n), np.float32), np.empty((4, n), np.float32)
    for _ in range(3):
        _C.gemm(a, b, out, bias=Fresh(n, 5.0))
        assert np.all(out == 13.0)


@pytest.mark.exhausts_memory
def test_an_exception_inside_a_parallel_kernel_is_raised_not_fatal():
    """std::bad_alloc thrown by a kernel's scratch allocation on a worker or OpenMP team thread:
    a MemoryError each time, and the pool still works after (it used to abort the process)."""
    x, w = np.ones((16, 1, 1, 1), np.float32), np.ones((0, 1, 1, 1), np.float32)
    pad = 2**20  # empty outputs, but padded scratch of 2^42 values per block of images
    grad_out = np.empty((16, 0, 2 * pad + 1, 2 * pad + 1), np.float32)
    for _ in range(3):
        with pytest.raises(MemoryError):
            _C.conv2d_backward(grad_out, x, w, 1, 1, pad, pad, None, np.empty((0, 1, 1, 1), np.float32), None)
    np.testing.assert_array_equal(oxkernels.ops.relu(np.array([-1.0, 2.0], np.float32)), [0.0, 2.0])


def test_readonly_output_is_rejected():
    rng = np.random.default_rng(2)
    X, y, th = rng.standard_normal((5, 2)), rng.standard_normal(5), rng.standard_normal(3)
    out = np.empty(3)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="'out'.*read-only"):
        _C.linreg_grad(X, y, th, None, out, 0)


def test_outputs_sharing_memory_with_what_the_kernel_reads_are_refused():
    """The native entry points of kernels that read an input while writing an output refuse an
    output in the same memory (the public ops always allocate fresh ones); these used to give
    wrong results silently."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="'out' shares memory with argument 'a'"):
        _C.gemm(a, a.copy(), a)
    x, w = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal((8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="'out' shares memory with argument 'x'"):
        _C.linear(x, w, None, x[:, :8])
    y = oxkernels.ops.linear(x, w)
    with pytest.raises(ValueError, match="'grad_x' shares memory with argument 'x'"):
        _C.linear_backward(np.ones_like(y), x, w, None, None, x, None, None)
    images = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    grad = np.ones((1, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="'out' shares memory with argument 'x'"):
        _C.max_pool2d_backward(grad, images, images, 3, 3, 3, 3, 0, 0, 1, 1, False)
    separate = np.empty_like(images)
    _C.max_pool2d_backward(grad, images, separate, 3, 3, 3, 3, 0, 0, 1, 1, False)  # a separate output is fine
    np.testing.assert_array_equal(separate, oxkernels.ops.max_pool2d_backward(grad, images, 3))
