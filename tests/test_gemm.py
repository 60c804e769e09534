"""Our matrix product (_C.gemm / ops.matmul): every micro-kernel (AVX-512, AVX2,
scalar), transposes through strides, odd shapes across the tile and cache-block
edges, the fused bias/activation epilogue, alpha/beta, determinism across thread
counts, bad input; CUDA parity (skipped without a GPU)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import oxkernels
from oxkernels import _C

from conftest import forced_isa, poison, rel_err, requires_cuda, runnable_isas

@pytest.fixture(params=runnable_isas())
def isa(request):
    with forced_isa(request.param):
        yield request.param


def reference(a, b, trans_a, trans_b, bias=None, activation=None, alpha=1.0, beta=0.0, c=None):
    A = a.T if trans_a else a
    B = b.T if trans_b else b
    z = alpha * (A.astype(np.float64) @ B.astype(np.float64))
    if beta:
        z = z + beta * c.astype(np.float64)
    if bias is not None:
        z = z + bias
    if activation == "relu":
        z = np.maximum(z, 0)
    elif activation == "sigmoid":
        z = 1 / (1 + np.exp(-z))
    return z


def operands(rng, m, n, k, trans_a, trans_b, dtype=np.float32):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


SHAPES = [(1, 1, 1), (3, 7, 1), (7, 33, 31), (33, 31, 129), (127, 129, 7), (13, 65, 300), (129, 1, 257),
          (37, 16, 100), (50, 17, 3)]


DTYPES = [(np.float32, 1e-5), (np.float64, 1e-13)]  # float64 has its own vector tiles (MR × NR, KC)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_float64_on_every_isa(isa, rng, m, n, k, trans_a, trans_b, dtype, tol):
    a, b = operands(rng, m, n, k, trans_a, trans_b, dtype)
    out = poison(np.empty((m, n), dtype))
    _C.gemm(a, b, out, trans_a, trans_b)
    assert rel_err(out, reference(a, b, trans_a, trans_b)) < tol


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
def test_gemm_epilogue_bias_activation_alpha_beta(isa, rng, activation, dtype, tol):
    m, n, k = 37, 75, 301  # several tiles and two k blocks, ragged edges
    a, b = operands(rng, m, n, k, False, True, dtype)
    bias = rng.standard_normal(n).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    out = c.copy()
    _C.gemm(a, b, out, False, True, 0.5, -1.5, bias, activation)
    ref = reference(a, b, False, True, bias, activation, 0.5, -1.5, c)
    assert rel_err(out, ref) < tol


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("m,n,k", [(37, 40, 100), (8, 33, 64), (20, 7, 5), (64, 64, 784), (3, 100, 120)])
def test_gemm_operands_read_in_place_or_packed_give_the_same_bits(isa, rng, m, n, k, dtype, tol):
    # Row-major operands may be read in place (gemm.cpp: direct A / direct B); the same values
    # in column-major order are always packed first. Same k order either way: equal bits.
    a, b = operands(rng, m, n, k, False, False, dtype)
    results = []
    for a_in, b_in in [(a, b), (np.asfortranarray(a), b), (a, np.asfortranarray(b)),
                       (np.asfortranarray(a), np.asfortranarray(b))]:
        out = poison(np.empty((m, n), dtype))
        _C.gemm(a_in, b_in, out)
        results.append(out)
    assert rel_err(results[0], reference(a, b, False, False)) < tol
    for out in results[1:]:
        assert np.array_equal(out, results[0])


def test_gemm_large_blocks_and_threads_are_deterministic(rng, tmp_path):
    # One thread (in a fresh process: resizing the pool in-process is avoided) and the
    # default pool give bitwise the same result: each element sums in one fixed k order.
    m, n, k = 301, 2100, 520  # crosses MC, NC and KC blocks
    a, b = operands(rng, m, n, k, False, False)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    code = (
        "import numpy as np, sys; from oxkernels import _C\n"
        f"p = {str(tmp_path)!r}; a = np.load(p + '/a.npy'); b = np.load(p + '/b.npy')\n"
        "out = np.full((a.shape[0], b.shape[1]), np.nan, np.float32); _C.gemm(a, b, out)\n"
        "assert _C.num_threads() == 1; np.save(p + '/out1.npy', out)\n"
    )
    env = dict(os.environ, OXKERNELS_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    out = poison(np.empty((m, n), np.float32))
    _C.gemm(a, b, out)
    assert rel_err(out, reference(a, b, False, False)) < 1e-5
    assert np.array_equal(out, np.load(tmp_path / "out1.npy"))


def test_gemm_float64_and_strided_inputs(isa, rng):
    big_a = rng.standard_normal((40, 90))
    big_b = rng.standard_normal((90, 70))
    a, b = big_a[::2, 1:80:3], big_b[:80:3, ::2]  # non-contiguous views, read in place
    out = poison(np.empty((a.shape[0], b.shape[1])))
    _C.gemm(a, b, out)
    assert rel_err(out, a @ b) < 1e-13


def test_gemm_empty_and_zero_k(rng):
    out = np.empty((0, 5), np.float32)
    _C.gemm(np.ones((0, 3), np.float32), np.ones((3, 5), np.float32), out)
    bias = rng.standard_normal(4).astype(np.float32)
    out = poison(np.empty((3, 4), np.float32))
    _C.gemm(np.ones((3, 0), np.float32), np.ones((0, 4), np.float32), out, bias=bias, activation="relu")
    assert np.array_equal(out, np.broadcast_to(np.maximum(bias, 0), (3, 4)))


def test_matmul_numpy_and_torch(rng):
    torch = pytest.importorskip("torch")
    a, b = operands(rng, 31, 33, 7, False, True)
    ref = reference(a, b, False, True)
    assert rel_err(oxkernels.ops.matmul(a, b, trans_b=True), ref) < 1e-5
    out = oxkernels.ops.matmul(torch.from_numpy(a), torch.from_numpy(b), trans_b=True)
    assert isinstance(out, torch.Tensor) and rel_err(out, ref) < 1e-5


def test_gemm_bad_input_is_named():
    f = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        _C.gemm(f, np.ones((5, 2), np.float32), np.empty((3, 2), np.float32))
    with pytest.raises(TypeError, match="'b'"):
        _C.gemm(f, np.ones((4, 2)), np.empty((3, 2), np.float32))
    with pytest.raises(TypeError, match="'a'.*int64"):
        _C.gemm(np.ones((3, 4), np.int64), np.ones((4, 2), np.int64), np.empty((3, 2), np.int64))
    with pytest.raises(ValueError, match="'a'"):
        _C.gemm(np.ones(3, np.float32), np.ones((3, 2), np.float32), np.empty((1, 2), np.float32))
    with pytest.raises(ValueError, match="'out'"):
        _C.gemm(f, np.ones((4, 2), np.float32), np.empty((3, 3), np.float32))
    with pytest.raises(ValueError, match="'activation'"):
        _C.gemm(f, np.ones((4, 2), np.float32), np.empty((3, 2), np.float32), activation="tanh")


def cuda_workspace(m, n, k):
    import torch

    size = _C.gemm_cuda_workspace(m, n, k)
    return torch.empty(size, device="cuda") if size else None


# Course products whose few output tiles make the CUDA kernel split K (see the rule test).
SPLIT_K = [(64, 64, 784), (10, 84, 1024), (33, 7, 4097)]


def test_gemm_cuda_split_rule():
    for m, n, k in SPLIT_K:
        assert _C.gemm_cuda_workspace(m, n, k) >= 2 * m * n, (m, n, k)
    assert _C.gemm_cuda_workspace(1024, 1024, 1024) == 0  # enough 64×64 tiles
    assert _C.gemm_cuda_workspace(64, 64, 100) == 0       # K too short to split


@requires_cuda
@pytest.mark.parametrize("m,n,k", SHAPES + SPLIT_K + [(1024, 784, 64), (70000, 10, 33)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_cuda_matches_float64(rng, m, n, k, trans_a, trans_b):
    import torch

    a, b = operands(rng, m, n, k, trans_a, trans_b)
    bias = rng.standard_normal(n).astype(np.float32)
    out = poison(torch.empty((m, n), device="cuda"))
    _C.gemm(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda(), out, trans_a, trans_b, 1.0, 0.0,
            torch.from_numpy(bias).cuda(), "sigmoid", torch.cuda.current_stream().cuda_stream, cuda_workspace(m, n, k))
    torch.cuda.synchronize()
    assert rel_err(out, reference(a, b, trans_a, trans_b, bias, "sigmoid")) < 1e-5


@requires_cuda
@pytest.mark.parametrize("m,n,k", SPLIT_K)
def test_gemm_cuda_split_k_epilogue_and_bits(rng, m, n, k):
    """alpha, beta·C and relu after the slices are added; the same bits on every call; and a
    clear error without the workspace."""
    import torch

    a, b = (torch.from_numpy(t).cuda() for t in operands(rng, m, n, k, False, False))
    c0 = torch.from_numpy(rng.standard_normal((m, n)).astype(np.float32)).cuda()
    outs = []
    for _ in range(2):
        out = c0.clone()
        _C.gemm(a, b, out, False, False, 0.5, -1.5, None, "relu", 0, cuda_workspace(m, n, k))
        outs.append(out)
    want = torch.relu(0.5 * (a.double() @ b.double()) - 1.5 * c0.double())
    assert rel_err(outs[0], want) < 1e-5
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="argument 'workspace' is required"):
        _C.gemm(a, b, c0.clone(), False, False)


def test_linear_workspace_request_on_any_machine():
    """The CUDA-only Python path sizes the split-K scratch for the layer's products."""
    pytest.importorskip("torch")
    from oxkernels._torch.linear import _workspace

    from test_conv import _CudaShaped

    x, w = _CudaShaped(4, 16, 784), _CudaShaped(64, 784)  # 64 rows of 784 -> 64
    assert _workspace(x, w, forward=True) == (_C.gemm_cuda_workspace(64, 64, 784),)
    assert _workspace(x, w, forward=True)[0] > 0
    assert _workspace(x, w, need_x=True, need_weight=True) is None  # K = 64 rows in both: too short to split
    rows = _CudaShaped(1024, 84)
    assert _workspace(rows, _CudaShaped(10, 84), need_weight=True) == (_C.gemm_cuda_workspace(10, 84, 1024),)
