"""Index arrays written by another thread while an op runs.

Class targets, row indices and pooling offsets are range-checked and then address memory.
Every native call releases the GIL, so another Python thread can overwrite such an array
between the check and the kernel's reads. Each test here keeps a writer thread flipping
the array between its valid values and out-of-range ones while the main thread calls the
op, and asserts that every call either refuses the array (ValueError naming it) or returns
exactly what a call on the valid array alone returns: an op that read the array after its
check would write or read out of bounds, or mix values, and differ (or crash)."""
import threading
import time

import numpy as np
import pytest

from oxkernels import ops

RACE_SECONDS = 0.4


def _race(index_array, bad_values, call, expected, argument):
    """Runs call() for RACE_SECONDS while a thread swaps index_array's contents between its
    current (valid) values and bad_values; checks each outcome and returns how many calls
    were refused and how many returned."""
    good_values = index_array.copy()
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            np.copyto(index_array, bad_values)
            np.copyto(index_array, good_values)

    thread = threading.Thread(target=writer)
    thread.start()
    refused = returned = 0
    try:
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            try:
                got = call()
            except ValueError as e:
                assert f"'{argument}'" in str(e)
                refused += 1
                continue
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e)
            returned += 1
    finally:
        stop.set()
        thread.join()
    return refused, returned


def test_cross_entropy_targets():
    rng = np.random.default_rng(0)
    N, C = 100_000, 10
    logits = rng.standard_normal((N, C), dtype=np.float32)
    target = rng.integers(0, C, N)
    grad = np.array(1.0, dtype=np.float32)
    expected = (ops.cross_entropy(logits, target), ops.cross_entropy_backward(grad, logits, target))
    bad = np.full(N, 10**12, dtype=np.int64)

    def call():
        return ops.cross_entropy(logits, target), ops.cross_entropy_backward(grad, logits, target)

    refused, returned = _race(target, bad, call, expected, "target")
    assert refused + returned > 0


def test_linreg_rows():
    rng = np.random.default_rng(1)
    n, d = 20_000, 40
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    theta = rng.standard_normal(d + 1)
    rows = rng.integers(0, n, 50_000)
    expected = (ops.linreg_grad(X, y, theta, rows),)
    bad = np.full(rows.shape, 10**12, dtype=np.int64)
    refused, returned = _race(rows, bad, lambda: (ops.linreg_grad(X, y, theta, rows),), expected, "rows")
    assert refused + returned > 0


def test_fused_conv_pool_offsets():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 3, 32, 32), dtype=np.float32)
    w = rng.standard_normal((6, 3, 5, 5), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    pooled, indices = ops.conv2d_relu_maxpool2d(x, w, b, return_indices=True)
    grad_out = rng.standard_normal(pooled.shape, dtype=np.float32)
    expected = ops.conv2d_relu_maxpool2d_backward(grad_out, indices, x, w)
    bad = np.full(indices.shape, 200, dtype=np.uint8)  # 255 means "no gradient": valid

    def call():
        return ops.conv2d_relu_maxpool2d_backward(grad_out, indices, x, w)

    refused, returned = _race(indices, bad, call, expected, "indices")
    assert refused + returned > 0


@pytest.mark.parametrize("size", [0, 1])
def test_a_private_copy_of_tiny_and_empty_targets_still_checks(size):
    # The copy is skipped for empty arrays; both must still reach the checks.
    logits = np.zeros((size, 3), dtype=np.float32)
    target = np.full(size, 7, dtype=np.int64)
    if size:
        with pytest.raises(ValueError, match="'target'"):
            ops.cross_entropy(logits, target)
    else:
        assert np.isnan(ops.cross_entropy(logits, target))


def test_fused_trainer_step_targets():
    torch = pytest.importorskip("torch")
    from oxkernels import models
    from oxkernels.fused import FusedTrainer

    torch.manual_seed(0)
    model = models.MLP()
    trainer = FusedTrainer(model, torch.optim.SGD(model.parameters(), lr=0.0))  # every step: the same loss
    x = torch.randn(1024, 784)
    y = torch.randint(0, 10, (1024,))
    expected = (trainer.step(x, y),)
    bad = np.full(1024, 10**12, dtype=np.int64)
    refused, returned = _race(y.numpy(), bad, lambda: (trainer.step(x, y),), expected, "target")
    assert refused + returned > 0
