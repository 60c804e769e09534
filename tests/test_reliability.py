"""Every public op under hostile conditions: bad arguments, odd memory layouts,
repeated and concurrent calls, thread counts, many calls (leaks).

The ops are enumerated from `oxkernels.ops.__all__`; each must have a case in
CASES (a factory of valid float32 NumPy arguments), so a new op cannot be
forgotten.
"""
import gc
import resource
import threading

import numpy as np
import pytest

import oxkernels
from oxkernels import ops


def _linreg(rng):
    X = rng.standard_normal((37, 5)).astype(np.float32)
    return (X, rng.standard_normal(37).astype(np.float32), rng.standard_normal((3, 6)).astype(np.float32)), {}


# op name -> factory(rng) -> (positional array-or-scalar args, keyword args)
CASES = {
    "linreg_grad": _linreg,
    "linreg_loss": _linreg,
}


def _case(name, seed=0):
    return CASES[name](np.random.default_rng(seed))


def _call(name, args, kwargs):
    return getattr(ops, name)(*args, **kwargs)


def _outputs(result):
    if result is None:
        return []
    if isinstance(result, (tuple, list)):
        return [np.asarray(r) for r in result if r is not None]
    return [np.asarray(result)]


def _array_positions(args):
    return [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]


OP_NAMES = sorted(ops.__all__)


def test_every_public_op_has_a_case():
    missing = sorted(set(ops.__all__) - set(CASES))
    assert not missing, f"ops without a reliability case: {missing}"


@pytest.mark.parametrize("name", OP_NAMES)
def test_non_array_arguments_are_type_errors(name):
    args, kwargs = _case(name)
    for i in _array_positions(args):
        bad = list(args)
        bad[i] = args[i].tolist()
        with pytest.raises(TypeError, match="must be a NumPy array or a torch tensor"):
            _call(name, bad, kwargs)


@pytest.mark.parametrize("name", OP_NAMES)
def test_wrong_dtype_is_an_error_or_correct(name):
    args, kwargs = _case(name)
    for i in _array_positions(args):
        if args[i].dtype != np.float32:
            continue
        bad = list(args)
        bad[i] = args[i].astype(np.int32)
        with pytest.raises((TypeError, ValueError)):
            _call(name, bad, kwargs)


@pytest.mark.parametrize("name", OP_NAMES)
def test_wrong_rank_is_a_value_error(name):
    args, kwargs = _case(name)
    for i in _array_positions(args):
        bad = list(args)
        bad[i] = args[i][..., None]
        with pytest.raises((TypeError, ValueError)):
            _call(name, bad, kwargs)


@pytest.mark.parametrize("name", OP_NAMES)
def test_non_contiguous_views_error_or_match(name):
    args, kwargs = _case(name)
    expected = _outputs(_call(name, [a.copy() if isinstance(a, np.ndarray) else a for a in args], kwargs))
    for i in _array_positions(args):
        if args[i].ndim == 0 or args[i].size < 2:
            continue
        for view in (_strided_copy(args[i]), _negative_strided_copy(args[i])):
            bad = list(args)
            bad[i] = view
            try:
                got = _outputs(_call(name, bad, kwargs))
            except ValueError as e:
                assert "contiguous" in str(e)
                continue
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
            results.append(_outputs(_call(name, args, kwargs)))
    finally:
        oxkernels.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", OP_NAMES)
def test_concurrent_calls_match_serial(name):
    cases = [_case(name, seed=s) for s in range(4)]
    serial = [_outputs(_call(name, *c)) for c in cases]
    results = [None] * len(cases)

    def worker(k):
        for _ in range(20):
            results[k] = _outputs(_call(name, *cases[k]))

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
