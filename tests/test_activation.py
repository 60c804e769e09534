"""relu / sigmoid forward and backward against torch (float64 references), the
torch integration (autograd, gradcheck, opcheck, compile), drop-in modules and bad input."""
import numpy as np
import pytest

import oxkernels
from oxkernels import _C, ops

from conftest import ISA_ORDER, forced_isa, poison, rel_err, requires_cuda

torch = pytest.importorskip("torch")
import oxkernels.nn as onn  # noqa: E402

SHAPES = [(1,), (7,), (3, 31), (17, 6, 13, 13), (64, 16, 10, 10), (33, 129)]
REFS = {"relu": torch.relu, "sigmoid": torch.sigmoid}


def _ref_grad(name, x64, g64):
    x = x64.clone().requires_grad_(True)
    y = REFS[name](x)
    y.backward(g64)
    return y.detach(), x.grad


@pytest.mark.parametrize("name", ["relu", "sigmoid"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_forward_and_backward_match_torch(rng, name, shape, dtype):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y_ref, dx_ref = _ref_grad(name, torch.from_numpy(x).double(), torch.from_numpy(g).double())
    y = poison(np.empty_like(x))
    getattr(_C, name)(x, y, 0)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert rel_err(y, y_ref) < tol
    dx = poison(np.empty_like(x))
    getattr(_C, f"{name}_backward")(g, y, dx, 0)
    assert rel_err(dx, dx_ref) < tol
    # the public functions give the same
    assert np.array_equal(getattr(ops, name)(x), y)
    assert np.array_equal(getattr(ops, f"{name}_backward")(g, y), dx)


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_every_isa_matches_torch(rng, isa):
    x = (rng.standard_normal(1031) * 30).astype(np.float32)  # 1031: vector body and scalar tail
    with forced_isa(isa):
        y = ops.sigmoid(x)
        r = ops.relu(x)
    assert rel_err(y, torch.sigmoid(torch.from_numpy(x).double())) < 1e-6
    assert np.array_equal(r, np.maximum(x, 0))


def test_special_values_follow_torch():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -100.0, -89.0, -87.0, 88.0, 100.0])
    for name in ("relu", "sigmoid"):
        y = getattr(ops, name)(x)
        ref = REFS[name](x)
        assert torch.equal(torch.isnan(y), torch.isnan(ref)), name
        ok = ~torch.isnan(ref)
        assert torch.allclose(y[ok], ref[ok], rtol=1e-6, atol=1e-38), (name, y, ref)
    # relu's gradient: 0 at x = 0 and below, g at NaN (torch's threshold_backward)
    xg = x.clone().requires_grad_(True)
    ops.relu(xg).backward(torch.ones_like(x))
    xr = x.clone().requires_grad_(True)
    torch.relu(xr).backward(torch.ones_like(x))
    assert torch.equal(xg.grad, xr.grad)


@pytest.mark.parametrize("name", ["relu", "sigmoid"])
def test_torch_autograd_matches_torch(rng, name):
    x = torch.from_numpy(rng.standard_normal((17, 6, 13, 13)).astype(np.float32))
    g = torch.from_numpy(rng.standard_normal((17, 6, 13, 13)).astype(np.float32))
    y_ref, dx_ref = _ref_grad(name, x.double(), g.double())
    for fn in (getattr(ops, name), getattr(torch.ops.oxkernels, name)):  # eager fast path and custom op
        xg = x.clone().requires_grad_(True)
        y = fn(xg)
        assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
        y.backward(g)
        assert rel_err(y, y_ref) < 1e-6
        assert rel_err(xg.grad, dx_ref) < 1e-6


@pytest.mark.parametrize("name", ["relu", "sigmoid"])
def test_gradcheck_float64(rng, name):
    x = torch.from_numpy(rng.standard_normal((3, 7)) + 0.05).requires_grad_(True)  # away from relu's kink
    assert torch.autograd.gradcheck(getattr(ops, name), (x,))
    assert torch.autograd.gradcheck(getattr(torch.ops.oxkernels, name), (x,))


@pytest.mark.parametrize("name", ["relu", "sigmoid"])
def test_opcheck(rng, name):
    x = torch.from_numpy(rng.standard_normal((5, 9))).requires_grad_(True)
    torch.library.opcheck(getattr(torch.ops.oxkernels, name), (x,))
    y = getattr(ops, name)(x.detach())
    torch.library.opcheck(getattr(torch.ops.oxkernels, f"{name}_backward"), (torch.randn(5, 9, dtype=torch.float64), y))


def test_modules_compile_fullgraph(rng):
    model = torch.nn.Sequential(onn.Flatten(), onn.ReLU(), onn.Sigmoid())
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.ReLU(), torch.nn.Sigmoid())
    x = torch.from_numpy(rng.standard_normal((4, 3, 5)).astype(np.float32))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = compiled(xa), ref(xb)
    ya.sum().backward()
    yb.sum().backward()
    assert ya.shape == (4, 15)
    assert rel_err(ya, yb) < 1e-6 and rel_err(xa.grad, xb.grad) < 1e-6


def test_modules_are_torch_modules():
    assert isinstance(onn.ReLU(), torch.nn.ReLU)
    assert onn.Flatten(0, 1)(torch.zeros(2, 3, 4)).shape == (6, 4)


def _inplace_relu_twins(rng, shape, transpose=False):
    """The same float64 tensor twice, each the output of a multiplication (not a leaf), as
    (ours, torch's) pairs of (leaf, tensor to apply ReLU(inplace=True) to)."""
    x = torch.from_numpy(rng.standard_normal(shape))
    pairs = []
    for _ in range(2):
        leaf = x.clone().requires_grad_(True)
        y = leaf * 3
        pairs.append((leaf, y.transpose(0, 1) if transpose else y))
    return pairs


@pytest.mark.parametrize("transpose", [False, True], ids=["contiguous", "transposed"])
def test_inplace_relu_overwrites_its_input_and_differentiates_like_torch(rng, transpose):
    (ours_leaf, ours_y), (ref_leaf, ref_y) = _inplace_relu_twins(rng, (6, 7), transpose)
    ours_out = onn.ReLU(inplace=True)(ours_y)
    ref_out = torch.nn.ReLU(inplace=True)(ref_y)
    assert ours_out is ours_y  # the input itself, overwritten
    assert torch.equal(ours_y, ref_y) and ours_y._version == ref_y._version > 0
    g = torch.from_numpy(rng.standard_normal(ref_out.shape))
    ours_out.backward(g)
    ref_out.backward(g)
    assert torch.equal(ours_leaf.grad, ref_leaf.grad)


def test_inplace_relu_without_grad_and_under_compile(rng):
    x = torch.from_numpy(rng.standard_normal((5, 8)).astype(np.float32))
    y = x.clone()
    with torch.no_grad():
        assert onn.ReLU(inplace=True)(y) is y
    assert torch.equal(y, torch.relu(x))
    model = torch.nn.Sequential(onn.Flatten(), onn.ReLU(inplace=True))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x.clone()), torch.relu(x))


def test_inplace_relu_refuses_what_torch_refuses(rng):
    """A leaf that requires grad cannot be overwritten, and a tensor that another op saved for
    its backward must not be: autograd says so, for ours as for torch's."""
    for relu in (onn.ReLU(inplace=True), torch.nn.ReLU(inplace=True)):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            relu(torch.randn(3, requires_grad=True))
        leaf = torch.randn(4, requires_grad=True)
        saved = leaf.exp()  # exp saves its result for the backward
        relu(saved)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            saved.sum().backward()
        weight, data = torch.randn(4, requires_grad=True), torch.randn(4)
        product = weight * data  # saves data (no grad of its own) for weight's gradient
        relu(data)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            product.sum().backward()


@pytest.mark.parametrize("name", ["relu", "sigmoid"])
def test_empty_input(name):
    assert getattr(ops, name)(np.zeros((0, 3), np.float32)).shape == (0, 3)
    x = torch.zeros(0, 5, requires_grad=True)
    getattr(ops, name)(x).sum().backward()
    assert x.grad.shape == (0, 5)


@pytest.mark.parametrize("name", ["relu", "sigmoid"])
def test_bad_input(name):
    fn = getattr(ops, name)
    with pytest.raises(TypeError, match="'x'.*float32 or float64.*int64"):
        fn(np.arange(4))
    with pytest.raises(TypeError, match="'x' must be a NumPy array or a torch tensor"):
        fn([1.0, 2.0])
    with pytest.raises(TypeError, match="'y' is a torch array but 'grad' is a numpy"):
        getattr(ops, f"{name}_backward")(np.zeros(3, np.float32), torch.zeros(3))
    with pytest.raises(TypeError, match="'y' must have the dtype of 'grad'"):
        getattr(ops, f"{name}_backward")(np.zeros(3, np.float32), np.zeros(3))
    with pytest.raises(ValueError, match="'y' must have shape"):
        getattr(ops, f"{name}_backward")(np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="'out' must have shape"):
        getattr(_C, name)(np.zeros(3, np.float32), np.zeros(4, np.float32), 0)
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="'x' must be dense"):
        getattr(_C, name)(x[:, ::2], np.zeros((4, 3), np.float32), 0)
    with pytest.raises(ValueError, match="'out' must have the memory layout of 'x'"):
        getattr(_C, name)(x, np.zeros((6, 4), np.float32).T, 0)
    with pytest.raises(ValueError, match="'y' must have the memory layout of 'grad'"):
        getattr(_C, f"{name}_backward")(x, np.zeros((6, 4), np.float32).T, np.zeros_like(x), 0)


@pytest.mark.parametrize("name", ["relu", "sigmoid"])
@pytest.mark.parametrize("path", ["eager", "custom_op", "no_grad"])
def test_channels_last_stays_channels_last(rng, name, path):
    # As torch's element-wise ops: the output takes the input's layout (no row-major copy of
    # it), and the values and gradients are those of the row-major call.
    x = torch.from_numpy(rng.standard_normal((3, 4, 5, 6))).to(memory_format=torch.channels_last)
    fn = {"eager": getattr(ops, name), "custom_op": getattr(torch.ops.oxkernels, name),
          "no_grad": getattr(ops, name)}[path]
    xg = x.clone().requires_grad_(path != "no_grad")
    xr = x.contiguous().requires_grad_(path != "no_grad")
    y, y_row = fn(xg), fn(xr)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.stride() == getattr(torch, name)(x).stride()
    assert torch.equal(y, y_row)
    if path != "no_grad":
        g = torch.from_numpy(rng.standard_normal((3, 4, 5, 6)))  # row-major: copied into y's layout
        y.backward(g)
        y_row.backward(g)
        assert torch.equal(xg.grad, xr.grad)
        torch.library.opcheck(getattr(torch.ops.oxkernels, name), (xg,))
        torch.library.opcheck(getattr(torch.ops.oxkernels, f"{name}_backward"), (g, y.detach()))


@requires_cuda
@pytest.mark.parametrize("name", ["relu", "sigmoid"])
@pytest.mark.parametrize("shape", [(1,), (3, 31), (17, 6, 13, 13), (256, 6, 28, 28)])
def test_cuda_matches_torch(rng, name, shape):
    x = torch.from_numpy((rng.standard_normal(shape) * 4).astype(np.float32))
    g = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    y_ref, dx_ref = _ref_grad(name, x.double(), g.double())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xc = x.cuda().requires_grad_(True)
        y = getattr(ops, name)(xc)
        y.backward(g.cuda())
    stream.synchronize()
    assert y.is_cuda and rel_err(y, y_ref) < 1e-6 and rel_err(xc.grad, dx_ref) < 1e-6
    with pytest.raises(TypeError, match="one device"):
        getattr(ops, f"{name}_backward")(g, y.detach())


def test_thread_pool_resize_after_a_parallel_run(rng):
    # Regression: a worker started by set_num_threads used to replay the last
    # parallel job (dangling context) and crash.
    x = rng.standard_normal(1 << 18).astype(np.float32)
    before = oxkernels.get_num_threads()
    try:
        oxkernels.set_num_threads(2)
        ops.relu(x)  # a multi-chunk parallel_for
        oxkernels.set_num_threads(1)
        oxkernels.set_num_threads(2)
        assert np.array_equal(ops.relu(x), np.maximum(x, 0))
    finally:
        oxkernels.set_num_threads(before)
