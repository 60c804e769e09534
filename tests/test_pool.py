"""max_pool2d forward and backward against torch (float64 references): odd
shapes, overlapping windows, padding, dilation and ceil_mode, ties / −inf / NaN,
the torch integration, the drop-in MaxPool2d and bad input."""
import numpy as np
import pytest

from oxkernels import _C, ops

from conftest import poison, rel_err, requires_cuda

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import oxkernels.nn as onn  # noqa: E402

# (shape, kernel, stride): 2×2/2 (the course), odd planes, overlapping (stride < kernel), gaps (stride > kernel)
CASES = [
    ((64, 6, 28, 28), 2, None),
    ((3, 16, 10, 10), 2, 2),
    ((1, 1, 5, 7), 2, None),
    ((17, 3, 13, 9), 3, 1),
    ((3, 6, 33, 31), (3, 2), (2, 1)),
    ((2, 1, 9, 11), 1, 2),
    ((3, 3, 11, 12), 2, 3),
    ((6, 7, 5), 5, 1),  # (C, H, W) input, window = whole plane
]
# (shape, kernel, stride, torch's other arguments): padding (windows partly outside the
# plane), dilation, ceil_mode (a last window hanging over the edge), and all of them.
WINDOW_CASES = [
    ((2, 3, 9, 10), 3, 2, dict(padding=1)),
    ((3, 2, 11, 12), 2, None, dict(ceil_mode=True)),
    ((4, 6, 28, 28), 2, None, dict(ceil_mode=True)),  # even planes: ceil = floor, the 2×2 path
    ((1, 4, 13, 9), 3, 2, dict(padding=1, dilation=2, ceil_mode=True)),
    ((2, 2, 8, 11), (3, 2), (2, 1), dict(padding=(1, 1), dilation=(1, 3))),
    ((3, 7, 7), 3, 3, dict(padding=1, ceil_mode=True)),
    ((1, 2, 5, 5), 4, 3, dict(padding=2, ceil_mode=True)),
]
ALL_CASES = [(shape, kernel, stride, {}) for shape, kernel, stride in CASES] + WINDOW_CASES


def _torch_pool(x64, kernel, stride, g64, **window):
    x = x64.clone().requires_grad_(True)
    y = F.max_pool2d(x, kernel, stride, **window)
    y.backward(g64)
    return y.detach(), x.grad


@pytest.mark.parametrize("shape,kernel,stride,window", ALL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_matches_torch(rng, shape, kernel, stride, window, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    y_ref = F.max_pool2d(torch.from_numpy(x).double(), kernel, stride, **window)
    g = rng.standard_normal(tuple(y_ref.shape)).astype(dtype)
    y_ref, dx_ref = _torch_pool(torch.from_numpy(x).double(), kernel, stride, torch.from_numpy(g).double(), **window)
    w = ops.pool.window("test", kernel, stride, **window)
    y = poison(np.empty(tuple(y_ref.shape), dtype))
    _C.max_pool2d(x, y, *w)
    np.testing.assert_array_equal(y, y_ref.numpy())  # the maxima are inputs: exact (−inf included)
    dx = poison(np.empty_like(x))
    _C.max_pool2d_backward(g, x, dx, *w)
    assert rel_err(dx, dx_ref) < (1e-6 if dtype == np.float32 else 1e-14)
    assert np.array_equal(ops.max_pool2d(x, kernel, stride, **window), y)
    assert np.array_equal(ops.max_pool2d_backward(g, x, kernel, stride, **window), dx)
    y2, indices = ops.max_pool2d(x, kernel, stride, **window, return_indices=True)
    _, ref_indices = F.max_pool2d(torch.from_numpy(x), kernel, stride, **window, return_indices=True)
    assert np.array_equal(y2, y) and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, ref_indices.numpy())


@pytest.mark.parametrize("kind", ["numpy", "torch", pytest.param("cuda", marks=requires_cuda)])
def test_window_with_every_tap_in_the_padding(kind):
    # 2×2 window, dilation 3, padding 1 on a 2×2 plane: taps at rows/columns −1 and 2, none
    # inside. y = −inf (torch's value) and no gradient. (torch's own backward writes that
    # window's gradient at a flat index past the plane, so it cannot be the reference here.)
    x = np.arange(8, dtype=np.float64).reshape(2, 1, 2, 2)
    if kind != "numpy":
        xt = torch.from_numpy(x).to("cuda" if kind == "cuda" else "cpu").requires_grad_(True)
        y = ops.max_pool2d(xt, 2, 1, padding=1, dilation=3)
        y.backward(torch.ones_like(y))
        y, grad = y.detach().cpu().numpy(), xt.grad.cpu().numpy()
    else:
        y = ops.max_pool2d(x, 2, 1, padding=1, dilation=3)
        grad = ops.max_pool2d_backward(np.ones_like(y), x, 2, 1, padding=1, dilation=3)
    assert y.shape == (2, 1, 1, 1) and np.all(y == -np.inf)
    assert np.array_equal(grad, np.zeros_like(x))
    if kind == "numpy":
        _, indices = ops.max_pool2d(x, 2, 1, padding=1, dilation=3, return_indices=True)
        assert np.all(indices == -1)


def _special_input(rng, shape):
    """Small integers (many ties) with −inf, +inf and NaN sprinkled in, and whole −inf / NaN windows."""
    x = rng.integers(-2, 3, size=shape).astype(np.float32)
    flat = x.reshape(-1)
    idx = rng.permutation(flat.size)
    flat[idx[: flat.size // 8]] = -np.inf
    flat[idx[flat.size // 8: flat.size // 6]] = np.nan
    flat[idx[flat.size // 6: flat.size // 5]] = np.inf
    x[0, 0, :2, :2] = -np.inf
    x[0, 0, 2:4, 2:4] = np.nan
    return x


@pytest.mark.parametrize("kernel,stride,window", [(2, None, {}), (3, 1, {}), (2, 1, {}), ((2, 3), (1, 2), {}),
                                                  (3, 2, dict(padding=1)), (2, None, dict(ceil_mode=True)),
                                                  (3, 1, dict(padding=1, dilation=2))])
def test_ties_inf_nan_route_like_torch(rng, kernel, stride, window):
    x = _special_input(rng, (3, 4, 9, 11))
    xt = torch.from_numpy(x)
    y_ref = F.max_pool2d(xt, kernel, stride, **window)
    g = torch.from_numpy(rng.standard_normal(tuple(y_ref.shape)).astype(np.float32))
    y_ref, dx_ref = _torch_pool(xt, kernel, stride, g, **window)
    xo = xt.clone().requires_grad_(True)
    y = ops.max_pool2d(xo, kernel, stride, **window)
    y.backward(g)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
    assert torch.equal(y.nan_to_num(), y_ref.nan_to_num())
    assert torch.equal(xo.grad, dx_ref)  # same positions, same accumulation
    _, indices = ops.max_pool2d(xt, kernel, stride, **window, return_indices=True)
    assert torch.equal(indices, F.max_pool2d(xt, kernel, stride, **window, return_indices=True)[1])


@pytest.mark.parametrize("shape,kernel,stride,window", ALL_CASES[1:6] + WINDOW_CASES[:2] + WINDOW_CASES[3:5])
def test_torch_autograd_and_custom_op(rng, shape, kernel, stride, window):
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    y_ref = F.max_pool2d(x.double(), kernel, stride, **window)
    g = torch.from_numpy(rng.standard_normal(tuple(y_ref.shape)).astype(np.float32))
    y_ref, dx_ref = _torch_pool(x.double(), kernel, stride, g.double(), **window)
    w = ops.pool.window("test", kernel, stride, **window)
    _, ref_indices = F.max_pool2d(x, kernel, stride, **window, return_indices=True)
    for fn in (lambda t: ops.max_pool2d(t, kernel, stride, **window), lambda t: torch.ops.oxkernels.max_pool2d(t, *w),
               lambda t: ops.max_pool2d(t, kernel, stride, **window, return_indices=True),
               lambda t: torch.ops.oxkernels.max_pool2d_with_indices(t, *w)):
        xg = x.clone().requires_grad_(True)
        y = fn(xg)
        if isinstance(y, tuple):
            y, indices = y
            assert torch.equal(indices, ref_indices) and not indices.requires_grad
        y.backward(g)
        assert rel_err(y, y_ref) == 0 and rel_err(xg.grad, dx_ref) < 1e-6


@pytest.mark.parametrize("kernel,stride,window", [(2, None, {}), (3, 1, {}), (2, 3, {}),
                                                  (3, 2, dict(padding=1, dilation=2, ceil_mode=True))])
def test_gradcheck_float64(rng, kernel, stride, window):
    x = torch.from_numpy(rng.standard_normal((2, 3, 7, 8))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ops.max_pool2d(t, kernel, stride, **window), (x,))
    w = ops.pool.window("test", kernel, stride, **window)
    assert torch.autograd.gradcheck(lambda t: torch.ops.oxkernels.max_pool2d(t, *w), (x,))


def test_opcheck(rng):
    x = torch.from_numpy(rng.standard_normal((2, 3, 7, 8))).requires_grad_(True)
    torch.library.opcheck(torch.ops.oxkernels.max_pool2d, (x, 3, 2, 1, 2))
    g = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.oxkernels.max_pool2d_backward, (g, x.detach(), 3, 2, 1, 2))
    window = (3, 3, 2, 2, 1, 1, 2, 1, True)  # padding, dilation, ceil_mode
    torch.library.opcheck(torch.ops.oxkernels.max_pool2d, (x, *window))
    g = torch.randn_like(F.max_pool2d(x.detach(), 3, 2, 1, (2, 1), ceil_mode=True))
    torch.library.opcheck(torch.ops.oxkernels.max_pool2d_backward, (g, x.detach(), *window))
    torch.library.opcheck(torch.ops.oxkernels.max_pool2d_with_indices, (x, *window))


def test_module_compile_fullgraph(rng):
    model = torch.nn.Sequential(onn.ReLU(), onn.MaxPool2d(2, 2), onn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
                                onn.Flatten())
    ref = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
                              torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), torch.nn.Flatten())
    x = torch.from_numpy(rng.standard_normal((3, 6, 11, 10)).astype(np.float32))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = compiled(xa), ref(xb)
    ya.sum().backward()
    yb.sum().backward()
    assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)


def test_module_arguments():
    m = onn.MaxPool2d(3)
    assert isinstance(m, torch.nn.MaxPool2d) and m.stride == 3
    assert onn.MaxPool2d((2, 3), (1, 2), padding=0, dilation=(1, 1))(torch.randn(1, 1, 6, 7)).shape == (1, 1, 5, 3)
    x = torch.randn(2, 3, 11, 10)
    for kwargs in [dict(padding=1), dict(dilation=2), dict(ceil_mode=True), dict(padding=(1, 0), dilation=(2, 1))]:
        ours, theirs = onn.MaxPool2d(3, 2, **kwargs), torch.nn.MaxPool2d(3, 2, **kwargs)
        assert repr(ours) == repr(theirs)
        assert torch.equal(ours(x), theirs(x))
    ours, theirs = onn.MaxPool2d(3, 2, padding=1, return_indices=True), torch.nn.MaxPool2d(3, 2, padding=1,
                                                                                          return_indices=True)
    (ya, ia), (yb, ib) = ours(x), theirs(x)
    assert torch.equal(ya, yb) and torch.equal(ia, ib)
    unpool = torch.nn.MaxUnpool2d(3, 2, padding=1)  # what the indices are for
    assert torch.equal(unpool(ya, ia, output_size=x.shape), unpool(yb, ib, output_size=x.shape))
    with pytest.raises(ValueError, match="stride"):  # torch: "stride should not be zero"
        onn.MaxPool2d(2, stride=0)(torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="'padding' must be in"):  # torch: "pad should be at most half"
        onn.MaxPool2d(2, padding=2)(torch.randn(1, 1, 4, 4))


def test_module_reads_its_attributes_at_each_call_like_torch():
    x = torch.randn(1, 2, 8, 8)
    ours, theirs = onn.MaxPool2d(2), torch.nn.MaxPool2d(2)
    for m in (ours, theirs):
        m.kernel_size, m.stride = 4, 2
    assert torch.equal(ours(x), theirs(x)) and ours(x).shape == (1, 2, 3, 3)
    for m in (ours, theirs):
        m.padding, m.dilation, m.ceil_mode = 1, 2, True
    assert torch.equal(ours(x), theirs(x)) and ours(x).shape == (1, 2, 3, 3)


def test_empty_batch():
    y = ops.max_pool2d(np.zeros((0, 3, 8, 8), np.float32), 2)
    assert y.shape == (0, 3, 4, 4)
    x = torch.zeros(0, 3, 8, 8, requires_grad=True)
    ops.max_pool2d(x, 2).sum().backward()
    assert x.grad.shape == (0, 3, 8, 8)


def test_bad_input():
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="'x' must have 3 to 4 dimensions"):
        ops.max_pool2d(np.zeros((8, 8), np.float32), 2)
    with pytest.raises(ValueError, match="'x' must have 3 to 4 dimensions"):
        ops.max_pool2d(np.zeros((1, 2, 3, 8, 8), np.float32), 2)
    with pytest.raises(ValueError, match="'kernel_size' must be positive"):
        ops.max_pool2d(x, 0)
    with pytest.raises(ValueError, match="'stride' must be positive"):
        ops.max_pool2d(x, 2, -1)
    with pytest.raises(ValueError, match="'stride' must be positive"):
        ops.max_pool2d(torch.zeros(2, 3, 8, 8), 2, 0)
    with pytest.raises(ValueError, match="'kernel_size' .* is larger than the input plane"):
        ops.max_pool2d(x, 9)
    with pytest.raises(TypeError, match="'kernel_size' must be an int or a pair"):
        ops.max_pool2d(x, 2.5)
    with pytest.raises(TypeError, match="'stride' must be an int or a pair"):
        ops.max_pool2d(x, 2, (1, 2, 3))
    with pytest.raises(TypeError, match="'x' must be float32 or float64, got int64"):
        ops.max_pool2d(np.zeros((2, 3, 8, 8), np.int64), 2)
    with pytest.raises(TypeError, match="'x' is a torch array but 'grad' is a numpy"):
        ops.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), torch.zeros(2, 3, 8, 8), 2)
    with pytest.raises(TypeError, match="'grad' must have the dtype of 'x'"):
        ops.max_pool2d_backward(np.zeros((2, 3, 4, 4)), x, 2)
    with pytest.raises(ValueError, match="'grad' must have shape"):
        ops.max_pool2d_backward(np.zeros((2, 3, 3, 4), np.float32), x, 2)
    with pytest.raises(ValueError, match=r"'padding' must be in \[0, kernel_size / 2\].*got \(2, 2\)"):
        ops.max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="'padding' must be in"):
        ops.max_pool2d(x, 3, padding=(0, -1))
    with pytest.raises(ValueError, match="'dilation' must be positive"):
        ops.max_pool2d(x, 3, dilation=0)
    with pytest.raises(ValueError, match=r"larger than the input plane \(8, 8\).* padded by \(1, 1\) at "
                                         r"dilation \(5, 5\)"):
        ops.max_pool2d(x, 3, padding=1, dilation=5)
    with pytest.raises(TypeError, match="'padding' must be an int or a pair"):
        ops.max_pool2d(x, 3, padding=0.5)
    y = np.empty((2, 3, 4, 4), np.float32)
    with pytest.raises(TypeError, match="'indices' must be int64"):
        _C.max_pool2d(x, y, 2, 2, 2, 2, 0, 0, 1, 1, False, 0, np.empty((2, 3, 4, 4), np.int32))
    with pytest.raises(ValueError, match="'indices' must have shape"):
        _C.max_pool2d(x, y, 2, 2, 2, 2, 0, 0, 1, 1, False, 0, np.empty((2, 3, 4, 3), np.int64))


@requires_cuda
@pytest.mark.parametrize("shape,kernel,stride,window", ALL_CASES)
def test_cuda_matches_torch(rng, shape, kernel, stride, window):
    special = len(shape) == 4 and shape[2] >= 4 and shape[3] >= 4
    x = torch.from_numpy(_special_input(rng, shape) if special else rng.standard_normal(shape).astype(np.float32))
    y_ref = F.max_pool2d(x, kernel, stride, **window)
    g = torch.from_numpy(rng.standard_normal(tuple(y_ref.shape)).astype(np.float32))
    y_ref, dx_ref = _torch_pool(x, kernel, stride, g, **window)  # torch's CPU kernel defines the routing
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xc = x.cuda().requires_grad_(True)
        y = ops.max_pool2d(xc, kernel, stride, **window)
        _, indices = ops.max_pool2d(xc.detach(), kernel, stride, **window, return_indices=True)
        y.backward(g.cuda())
    stream.synchronize()
    assert torch.equal(indices.cpu(), F.max_pool2d(x, kernel, stride, **window, return_indices=True)[1])
    assert torch.equal(torch.isnan(y.cpu()), torch.isnan(y_ref))
    assert torch.equal(y.cpu().nan_to_num(), y_ref.nan_to_num())
    assert rel_err(xc.grad, dx_ref) < 1e-6
