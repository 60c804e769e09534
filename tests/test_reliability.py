"""Every public op under hostile conditions: bad arguments, odd memory layouts,
repeated and concurrent calls, thread counts, many calls (leaks).

The ops are enumerated from `oxkernels.ops.__all__`; each must have a case in
CASES (a factory of valid float32 NumPy arguments), so a new op cannot be
forgotten.
"""
import gc
import resource
import threading
import warnings

import numpy as np
import pytest

import oxkernels
from conftest import requires_cuda
from oxkernels import ops


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _linreg(rng):
    return (f32(rng, 37, 5), f32(rng, 37), f32(rng, 3, 6)), {}


def _adam(rng):
    shapes = [(7, 3), (5,)]
    lists = [[f32(rng, *s) for s in shapes] for _ in range(3)]
    sq = [np.abs(f32(rng, *s)) for s in shapes]
    return (lists[0], lists[1], lists[2], sq, 3, 1e-3, 0.9, 0.999, 1e-8), {"weight_decay": 0.01}


def _conv(rng):
    return (f32(rng, 3, 2, 9, 9), f32(rng, 4, 2, 3, 3), f32(rng, 4)), {"padding": 1}


def _conv_backward(rng):
    return (f32(rng, 3, 4, 9, 9), f32(rng, 3, 2, 9, 9), f32(rng, 4, 2, 3, 3)), {"padding": 1}


def _fused(rng):
    return (f32(rng, 3, 2, 9, 9), f32(rng, 4, 2, 3, 3), f32(rng, 4)), {}


def _fused_backward(rng):
    x, w, b = f32(rng, 3, 2, 9, 9), f32(rng, 4, 2, 3, 3), f32(rng, 4)
    out, idx = ops.conv2d_relu_maxpool2d(x, w, b, return_indices=True)
    return (f32(rng, *out.shape), idx, x, w), {}


def _ce(rng):
    return (f32(rng, 9, 5), rng.integers(0, 5, 9)), {"label_smoothing": 0.1}


def _ce_backward(rng):
    return (np.array(1.0, np.float32), f32(rng, 9, 5), rng.integers(0, 5, 9)), {}


def _pool(rng):
    return (f32(rng, 2, 3, 9, 9), 2), {}


def _pool_backward(rng):
    return (f32(rng, 2, 3, 4, 4), f32(rng, 2, 3, 9, 9), 2), {}


def _unary(rng):
    return (f32(rng, 3, 5, 7),), {}


def _binary(rng):
    return (f32(rng, 3, 5, 7), f32(rng, 3, 5, 7)), {}


def _linear(rng):
    return (f32(rng, 7, 5), f32(rng, 3, 5), f32(rng, 3)), {"activation": "relu"}


def _matmul(rng):
    return (f32(rng, 5, 7), f32(rng, 7, 3)), {}


# op name -> factory(rng) -> (positional args, keyword args). Arrays may sit in
# lists (adam_step). Elementwise ops accept any rank: RANK_FREE skips the rank test.
CASES = {
    "adam_step": _adam,
    "conv2d": _conv,
    "conv2d_backward": _conv_backward,
    "conv2d_relu_maxpool2d": _fused,
    "conv2d_relu_maxpool2d_backward": _fused_backward,
    "cross_entropy": _ce,
    "cross_entropy_backward": _ce_backward,
    "linear": _linear,
    "linreg_grad": _linreg,
    "linreg_loss": _linreg,
    "log_softmax": _unary,
    "matmul": _matmul,
    "max_pool2d": _pool,
    "max_pool2d_backward": _pool_backward,
    "relu": _unary,
    "relu_backward": _binary,
    "sigmoid": _unary,
    "sigmoid_backward": _binary,
    "softmax": _unary,
}
RANK_FREE = {"relu", "relu_backward", "sigmoid", "sigmoid_backward", "softmax", "log_softmax"}
# Ops that update their array arguments in place: their outputs are those arguments.
IN_PLACE = {"adam_step": lambda args: args[0] + args[2] + args[3]}


def _case(name, seed=0):
    return CASES[name](np.random.default_rng(seed))


def _call(name, args, kwargs):
    return getattr(ops, name)(*args, **kwargs)


def _fresh(args):
    """Copies of the arrays in args (in-place ops must start from the same state)."""
    return [[a.copy() for a in x] if isinstance(x, list) else x.copy() if isinstance(x, np.ndarray) else x
            for x in args]


def _run(name, args, kwargs):
    """Outputs of one call on fresh copies of args, as a list of arrays."""
    args = _fresh(args)
    result = _call(name, args, kwargs)
    if name in IN_PLACE:
        return [np.asarray(a) for a in IN_PLACE[name](args)]
    return _outputs(result)


def _outputs(result):
    if result is None:
        return []
    if isinstance(result, (tuple, list)):
        return [np.asarray(r) for r in result if r is not None]
    return [np.asarray(result)]


def _slots(args):
    """(position, index-in-list or None) of every array argument."""
    slots = []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray):
            slots.append((i, None))
        elif isinstance(a, list):
            slots += [(i, j) for j, x in enumerate(a) if isinstance(x, np.ndarray)]
    return slots


def _get(args, slot):
    i, j = slot
    return args[i] if j is None else args[i][j]


def _replace(args, slot, value):
    args = _fresh(args)
    i, j = slot
    if j is None:
        args[i] = value
    else:
        args[i][j] = value
    return args


OP_NAMES = sorted(ops.__all__)


def test_every_public_op_has_a_case():
    missing = sorted(set(ops.__all__) - set(CASES))
    assert not missing, f"ops without a reliability case: {missing}"


@pytest.mark.parametrize("name", OP_NAMES)
def test_non_array_arguments_are_type_errors(name):
    args, kwargs = _case(name)
    for slot in _slots(args):
        with pytest.raises(TypeError, match="must be a NumPy array or a torch tensor"):
            _call(name, _replace(args, slot, _get(args, slot).tolist()), kwargs)


@pytest.mark.parametrize("name", OP_NAMES)
def test_wrong_dtype_is_an_error_or_correct(name):
    args, kwargs = _case(name)
    for slot in _slots(args):
        a = _get(args, slot)
        wrong = a.astype(np.int32) if a.dtype == np.float32 else a.astype(np.float32)
        with pytest.raises(TypeError, match="must"):
            _call(name, _replace(args, slot, wrong), kwargs)


@pytest.mark.parametrize("name", OP_NAMES)
def test_wrong_rank_is_a_value_error(name):
    if name in RANK_FREE:
        pytest.skip(f"{name} accepts arrays of any rank")
    args, kwargs = _case(name)
    for slot in _slots(args):
        with pytest.raises(ValueError):
            _call(name, _replace(args, slot, _get(args, slot)[..., None]), kwargs)


@pytest.mark.parametrize("name", OP_NAMES)
def test_empty_and_huge_arrays_error_or_work(name):
    """Zero-size dimensions and stride-0 views of 2^40 rows (nothing allocated): a
    result, or a TypeError/ValueError/MemoryError (inputs of other layouts are copied
    row-major, and no machine holds that copy), never a crash."""
    args, kwargs = _case(name)
    for slot in _slots(args):
        a = _get(args, slot)
        if a.ndim == 0:
            continue
        empty = np.empty((0,) + a.shape[1:], a.dtype)
        huge = np.lib.stride_tricks.as_strided(a, shape=(2**40,) + a.shape[1:], strides=(0,) + a.strides[1:])
        for variant in (empty, huge):
            try:
                _call(name, _replace(args, slot, variant), kwargs)
            except (TypeError, ValueError, MemoryError):
                pass


@pytest.mark.parametrize("name", OP_NAMES)
def test_nan_and_inf_inputs_do_not_crash(name):
    args, kwargs = _case(name)
    for slot in _slots(args):
        a = _get(args, slot)
        if a.dtype.kind != "f" or a.size < 2:
            continue
        bad = a.copy()
        bad.flat[0], bad.flat[-1] = np.nan, np.inf
        try:
            _call(name, _replace(args, slot, bad), kwargs)
        except ValueError as e:  # an op may refuse non-finite input, naming it
            assert "finite" in str(e) or "nan" in str(e).lower()


@pytest.mark.parametrize("name", OP_NAMES)
def test_non_contiguous_views_match(name):
    """Inputs are read through any layout (copied row-major when needed); arrays an op
    updates in place must be dense and laid out alike, and saying so is the error."""
    args, kwargs = _case(name)
    expected = _run(name, args, kwargs)
    for slot in _slots(args):
        a = _get(args, slot)
        if a.ndim == 0 or a.size < 2:
            continue
        for view in (_strided_copy(a), _negative_strided_copy(a)):
            bad = _replace(args, slot, view)
            if name in IN_PLACE:
                with pytest.raises(ValueError, match="must be dense|must have the memory layout"):
                    _call(name, bad, kwargs)
                continue
            got = _outputs(_call(name, bad, kwargs))
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e)


def _strided_copy(a):
    """Same values as a, laid out with a stride of 2 in the last dimension."""
    big = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    view = big[..., ::2]
    assert not view.flags.c_contiguous
    return view


def _negative_strided_copy(a):
    """Same values as a, read through a view with negative strides."""
    flipped = np.ascontiguousarray(a[..., ::-1])
    return flipped[..., ::-1]


@pytest.mark.parametrize("name", OP_NAMES)
def test_repeated_calls_are_bit_identical_across_thread_counts(name):
    args, kwargs = _case(name, seed=3)
    before = oxkernels.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 2, 1):
            oxkernels.set_num_threads(threads)
            results.append(_run(name, args, kwargs))
    finally:
        oxkernels.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", OP_NAMES)
def test_concurrent_calls_match_serial(name):
    cases = [_case(name, seed=s) for s in range(4)]
    serial = [_run(name, *c) for c in cases]
    results = [None] * len(cases)

    def worker(k):
        for _ in range(20):
            results[k] = _run(name, *cases[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def _rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


@pytest.mark.measures_memory
@pytest.mark.parametrize("name", OP_NAMES)
def test_ten_thousand_calls_do_not_grow_memory(name):
    args, kwargs = _case(name)
    for _ in range(1000):  # warm up allocator caches
        _call(name, args, kwargs)
    gc.collect()
    before = _rss_kb()
    for _ in range(10_000):
        _call(name, args, kwargs)
    gc.collect()
    growth = _rss_kb() - before
    assert growth < 2048, f"{name}: resident memory grew by {growth} kB over 10 000 calls"


def _as_torch(args, device_of):
    """args with every array a torch tensor, on device_of(slot)."""
    import torch

    def move(x, slot):
        return torch.from_numpy(x).to(device_of(slot)) if isinstance(x, np.ndarray) else x

    return [[move(a, (i, j)) for j, a in enumerate(x)] if isinstance(x, list) else move(x, (i, None))
            for i, x in enumerate(_fresh(args))]


def _outputs_of(name, args, result):
    """An op's outputs: its results, or the arrays it updated in place."""
    if name in IN_PLACE:
        return IN_PLACE[name](args)
    return [o for o in (result if isinstance(result, (tuple, list)) else [result]) if o is not None]


@requires_cuda
@pytest.mark.parametrize("name", OP_NAMES)
def test_cuda_repeated_calls_are_bit_identical(name):
    """No CUDA kernel uses floating-point atomics, so two runs give the same bits."""
    args, kwargs = _case(name, seed=5)
    results = []
    for _ in range(2):
        cuda_args = _as_torch(args, lambda slot: "cuda")
        outs = _outputs_of(name, cuda_args, _call(name, cuda_args, kwargs))
        results.append([o.cpu().numpy() for o in outs])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@requires_cuda
@pytest.mark.parametrize("name", OP_NAMES)
def test_cuda_ops_run_on_their_arrays_device_not_the_current_one(name):
    """Arrays on cuda:1 while cuda:0 is current (torch leaves the current device to the user):
    the kernels run on cuda:1 and give the CPU's results, and cuda:0 stays current."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    args, kwargs = _case(name, seed=3)
    cpu_args = _as_torch(args, lambda slot: "cpu")
    expected = _outputs_of(name, cpu_args, _call(name, cpu_args, kwargs))
    with torch.cuda.device(0):
        gpu_args = _as_torch(args, lambda slot: "cuda:1")
        got = _outputs_of(name, gpu_args, _call(name, gpu_args, kwargs))
        torch.cuda.synchronize(1)
        assert torch.cuda.current_device() == 0
    for a, b in zip(got, expected):
        assert a.device == torch.device("cuda:1")
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)


def _memoryless_call(name, args, kwargs):
    """The call's outputs, or None where it refused with a TypeError saying why."""
    try:
        result = _call(name, args, kwargs)
    except TypeError as error:
        assert "oxkernels runs on cpu and cuda arrays" in str(error), error
        assert "is on device meta" in str(error) or "has no storage" in str(error), error
        return None
    return [] if result is None else [r for r in (result if isinstance(result, (tuple, list)) else [result])
                                      if r is not None]


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("kind", ["meta", "fake"])
def test_tensors_without_memory_give_shapes_or_type_errors(name, kind):
    """Meta tensors (like MPS or XPU ones) and FakeTensors have no memory a kernel could read.
    Where the op's main input is one, the op answers as torch's ops do, with outputs of the
    right shapes from the custom op's fake implementation; otherwise it refuses with a
    TypeError saying why. Never a kernel reading a null pointer (the old build crashed here)."""
    torch = pytest.importorskip("torch")
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    args, kwargs = _case(name)
    expected = None if name in IN_PLACE else [tuple(o.shape) for o in _run(name, args, kwargs)]
    if kind == "meta":
        outputs = _memoryless_call(name, _as_torch(args, lambda slot: "meta"), kwargs)
        for meta_slot in _slots(args):  # one argument on meta, the others on the CPU
            _memoryless_call(name, _as_torch(args, lambda slot: "meta" if slot == meta_slot else "cpu"), kwargs)
    else:
        with FakeTensorMode() as mode, warnings.catch_warnings():
            # torch warns when anything reads a FakeTensor's data pointer; our caster does, and refuses
            warnings.simplefilter("ignore", UserWarning)
            fake = [[mode.from_tensor(t) for t in x] if isinstance(x, list)
                    else mode.from_tensor(x) if isinstance(x, torch.Tensor) else x
                    for x in _as_torch(args, lambda slot: "cpu")]
            outputs = _memoryless_call(name, fake, kwargs)
    if outputs is not None and expected is not None:
        assert [tuple(o.shape) for o in outputs] == expected
        assert all(o.is_meta or isinstance(o, FakeTensor) for o in outputs)



FORKED_CHILD = r"""
import os, sys
import numpy as np
import torch
import oxkernels, oxkernels.nn  # noqa: F401  (loading the torch layer shares torch's OpenMP team)
from oxkernels import ops

assert oxkernels.info()["thread_pool"].startswith("OpenMP"), oxkernels.info()
rng = np.random.default_rng(0)
x, w = rng.standard_normal((512, 784), dtype=np.float32), rng.standard_normal((64, 784), dtype=np.float32)
images, kernels = rng.standard_normal((64, 3, 32, 32), dtype=np.float32), rng.standard_normal((6, 3, 5, 5), dtype=np.float32)
expected = [ops.linear(x, w, None, "relu"), ops.conv2d(images, kernels)]  # the parent runs OpenMP teams
pid = os.fork()
if pid == 0:
    got = [ops.linear(x, w, None, "relu"), ops.conv2d(images, kernels)]
    os._exit(0 if all(np.array_equal(a, b) for a, b in zip(got, expected)) else 3)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_ops_run_in_a_forked_child_after_the_parent_used_openmp(tmp_path):
    """GNU OpenMP does not survive fork (a child waits forever for its parent's team, as
    torch's own ops do): a forked child (DataLoader worker, multiprocessing with fork) must
    still run our kernels, with the parent's results."""
    pytest.importorskip("torch")
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "fork_child.py"
    script.write_text(FORKED_CHILD)
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own group: a hung child is killed with it
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the forked child hung in a kernel")
    assert process.returncode == 0, stderr
