"""cross_entropy, softmax and log_softmax against torch (float64 references):
reductions, label smoothing, ignore_index, extreme logits, any softmax dim, the
torch integration, the drop-in CrossEntropyLoss and bad input."""
import numpy as np
import pytest

from oxkernels import _C, ops

from conftest import poison, rel_err, requires_cuda

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import oxkernels.nn as onn  # noqa: E402

RED = {"none": 0, "mean": 1, "sum": 2}


def _targets(rng, n, c, ignore_frac=0.0, ignore_index=-100):
    t = rng.integers(0, c, size=n).astype(np.int64)
    t[rng.random(n) < ignore_frac] = ignore_index
    return t


def _torch_ce(x64, t, g64, **kw):
    x = x64.clone().requires_grad_(True)
    loss = F.cross_entropy(x, torch.from_numpy(t), **kw)
    loss.backward(g64)
    return loss.detach(), x.grad


@pytest.mark.parametrize("n,c", [(1, 1), (3, 10), (64, 10), (127, 7), (33, 1000)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_matches_torch(rng, n, c, reduction, eps, dtype):
    x = (rng.standard_normal((n, c)) * 3).astype(dtype)
    t = _targets(rng, n, c, ignore_frac=0.2)
    if (t != -100).sum() == 0:
        t[0] = 0
    shape = (n,) if reduction == "none" else ()
    g = rng.standard_normal(shape).astype(dtype) + 2
    ref, dx_ref = _torch_ce(torch.from_numpy(x).double(), t, torch.from_numpy(np.asarray(g)).double(),
                            reduction=reduction, label_smoothing=eps)
    out = poison(np.empty(shape, dtype))
    _C.cross_entropy(x, t, out, RED[reduction], eps, -100)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    assert rel_err(out, ref) < tol
    dx = poison(np.empty_like(x))
    _C.cross_entropy_backward(np.asarray(g), x, t, dx, RED[reduction], eps, -100)
    assert rel_err(dx, dx_ref) < tol
    assert np.array_equal(ops.cross_entropy(x, t, reduction, eps), out)


def test_extreme_logits_do_not_overflow(rng):
    x = np.where(rng.random((31, 10)) < 0.5, -1e4, 1e4).astype(np.float32)
    x[:, 3] = 1e4
    t = _targets(rng, 31, 10)
    for eps in (0.0, 0.2):
        ref, dx_ref = _torch_ce(torch.from_numpy(x).double(), t, torch.tensor(1.0, dtype=torch.float64),
                                label_smoothing=eps)
        xt = torch.from_numpy(x).requires_grad_(True)
        loss = ops.cross_entropy(xt, torch.from_numpy(t), label_smoothing=eps)
        loss.backward()
        assert torch.isfinite(loss) and rel_err(loss, ref) < 1e-6
        assert rel_err(xt.grad, dx_ref) < 1e-6
    y = ops.log_softmax(x)
    assert np.all(np.isfinite(y)) and rel_err(y, F.log_softmax(torch.from_numpy(x).double(), -1)) < 1e-6


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_masked_classes_with_minus_inf_logits_like_torch(rng, device, reduction, eps):
    """−inf logits (the usual way to mask classes out): without label smoothing the loss is
    finite and the masked classes get zero gradient; with it the loss is +inf, as in torch."""
    x = (rng.standard_normal((17, 10)) * 3).astype(np.float32)
    t = _targets(rng, 17, 10)
    x[np.arange(17), (t + 1) % 10] = -np.inf  # one masked class per row, never the target
    x[np.arange(4), (t[:4] + 2) % 10] = -np.inf
    g = torch.tensor(1.0 if reduction != "none" else np.ones(17), dtype=torch.float64)
    ref, dx_ref = _torch_ce(torch.from_numpy(x).double(), t, g, reduction=reduction, label_smoothing=eps)
    xt = torch.from_numpy(x).to(device).requires_grad_(True)
    loss = ops.cross_entropy(xt, torch.from_numpy(t).to(device), reduction, eps)
    assert torch.isfinite(loss).all() == (eps == 0)
    torch.testing.assert_close(loss.cpu().double(), ref, rtol=1e-6, atol=1e-6)
    if eps == 0:
        loss.backward(g.float().to(device))
        torch.testing.assert_close(xt.grad.cpu().double(), dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignore_index_and_all_ignored_like_torch(rng, reduction):
    x = rng.standard_normal((7, 5))
    for t in (np.array([1, 3, 3, 0, 4, 2, 1]), np.full(7, 2)):
        for eps in (0.0, 0.3):
            ref, dx_ref = _torch_ce(torch.from_numpy(x), t, torch.ones(7 if reduction == "none" else ()),
                                    reduction=reduction, label_smoothing=eps, ignore_index=2)
            xt = torch.from_numpy(x).requires_grad_(True)
            loss = ops.cross_entropy(xt, torch.from_numpy(t), reduction, eps, ignore_index=2)
            loss.backward(torch.ones_like(loss))
            assert torch.equal(torch.isnan(loss), torch.isnan(ref))  # all ignored + mean: NaN, as torch
            assert torch.allclose(loss.nan_to_num(), ref.nan_to_num(), rtol=1e-12)
            assert torch.allclose(xt.grad, dx_ref, rtol=1e-12, atol=1e-15)


def test_single_sample_and_empty_batch():
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(4)
    assert torch.allclose(ops.cross_entropy(x, t), F.cross_entropy(x, t))
    assert ops.cross_entropy(x, t, "none").shape == ()
    empty = np.zeros((0, 10), np.float32)
    te = np.zeros(0, np.int64)
    assert np.isnan(ops.cross_entropy(empty, te))  # torch: nan
    assert ops.cross_entropy(empty, te, "sum") == 0
    assert ops.cross_entropy(empty, te, "none").shape == (0,)
    xe = torch.zeros(0, 10, requires_grad=True)
    ops.cross_entropy(xe, torch.from_numpy(te), "sum").backward()
    assert xe.grad.shape == (0, 10)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_paths_and_gradcheck(rng, reduction):
    x = torch.from_numpy(rng.standard_normal((9, 4))).requires_grad_(True)
    t = torch.from_numpy(_targets(rng, 9, 4, ignore_frac=0.3))
    t[0] = 1
    r = RED[reduction]
    assert torch.autograd.gradcheck(lambda v: ops.cross_entropy(v, t, reduction, 0.1), (x,))
    assert torch.autograd.gradcheck(lambda v: torch.ops.oxkernels.cross_entropy(v, t, r, 0.1, -100), (x,))
    torch.library.opcheck(torch.ops.oxkernels.cross_entropy, (x, t, r, 0.1, -100))
    g = torch.rand(9 if reduction == "none" else (), dtype=torch.float64)
    torch.library.opcheck(torch.ops.oxkernels.cross_entropy_backward, (g, x.detach(), t, r, 0.1, -100))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_with_gradient_equals_backward_of_one(rng, reduction, eps, dtype):
    # The eager autograd path saves the gradient the forward kernel writes (grad_logits) and
    # backward only scales it: it must be the backward kernel's result for g = 1, bit for bit,
    # and the loss must not change when it is asked for.
    for n, c in [(1, 1), (64, 10), (127, 7), (5000, 10), (3, 2000)]:
        x = (rng.standard_normal((n, c)) * 3).astype(dtype)
        t = _targets(rng, n, c, ignore_frac=0.2)
        shape = (n,) if reduction == "none" else ()
        out, out_plain, grad = poison(np.empty(shape, dtype)), poison(np.empty(shape, dtype)), poison(np.empty_like(x))
        _C.cross_entropy(x, t, out, RED[reduction], eps, -100, grad_logits=grad)
        _C.cross_entropy(x, t, out_plain, RED[reduction], eps, -100)
        dx = poison(np.empty_like(x))
        _C.cross_entropy_backward(np.ones(shape, dtype), x, t, dx, RED[reduction], eps, -100)
        assert np.array_equal(out, out_plain, equal_nan=True) and np.array_equal(grad, dx)
    with pytest.raises(ValueError, match="'grad_logits' must have shape"):
        _C.cross_entropy(x, t, out, RED[reduction], eps, -100, grad_logits=np.empty((3, 7), dtype))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_eager_backward_scales_and_retains(rng, device, reduction):
    # backward with g = 1 hands the saved gradient over (CPU); g ≠ 1 scales it; a second backward
    # through a retained graph recomputes it (always, on CUDA); a gradient accumulated in place
    # into the first result must not leak into the second.
    dtype, tol = (torch.float64, 1e-12) if device == "cpu" else (torch.float32, 2e-6)
    x0 = torch.from_numpy(rng.standard_normal((33, 10))).to(dtype)
    t = torch.from_numpy(_targets(rng, 33, 10, ignore_frac=0.2))
    t[0] = 4
    shape = (33,) if reduction == "none" else ()
    for g in (torch.ones(shape, dtype=torch.float64), torch.rand(shape, dtype=torch.float64) + 0.5):
        _, ref = _torch_ce(x0.double(), t.numpy(), g, reduction=reduction, label_smoothing=0.1)
        x = x0.clone().to(device).requires_grad_(True)
        loss = ops.cross_entropy(x, t.to(device), reduction, 0.1)
        gd = g.to(device, dtype)
        loss.backward(gd, retain_graph=True)
        assert rel_err(x.grad, ref) < tol
        (dx,) = torch.autograd.grad(loss, x, gd, retain_graph=True)
        assert rel_err(dx, ref) < tol
        dx.mul_(3)  # in place, into what may be the saved gradient handed over
        (dx,) = torch.autograd.grad(loss, x, gd)  # the retained graph again
        assert rel_err(dx, ref) < tol


@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 31), -1), ((33, 10), 1), ((5, 7, 3), 1), ((4, 3, 2, 5), 0),
                                       ((2, 129), 0)])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_any_dim(rng, shape, dim, name):
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    ref_fn = getattr(F, name)
    y = poison(np.empty_like(x))
    getattr(_C, name)(x, dim, y, 0)
    assert rel_err(y, ref_fn(torch.from_numpy(x).double(), dim)) < 1e-6
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    g = torch.from_numpy(rng.standard_normal(shape))
    yo = getattr(ops, name)(xt, dim)
    yo.backward(g)
    xr = xt.detach().clone().requires_grad_(True)
    ref_fn(xr, dim).backward(g)
    assert rel_err(yo, ref_fn(xr.detach(), dim)) < 1e-13 and rel_err(xt.grad, xr.grad) < 1e-12
    small = torch.from_numpy(rng.standard_normal((3, 4, 2))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: getattr(ops, name)(v, 1), (small,))
    torch.library.opcheck(getattr(torch.ops.oxkernels, name), (small, 1))


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_module_reads_its_reduction_at_each_call_like_torch(rng, reduction):
    x, t = torch.randn(5, 4), torch.from_numpy(_targets(rng, 5, 4))
    ours, theirs = onn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    ours.reduction = theirs.reduction = reduction
    torch.testing.assert_close(ours(x, t), theirs(x, t))


def test_module_and_compile(rng):
    x = torch.from_numpy(rng.standard_normal((17, 10)).astype(np.float32))
    t = torch.from_numpy(_targets(rng, 17, 10, ignore_frac=0.2, ignore_index=3))
    for kwargs in ({}, {"reduction": "sum", "label_smoothing": 0.1, "ignore_index": 3}, {"reduction": "none"},
                   {"size_average": False}):
        ours, ref = onn.CrossEntropyLoss(**kwargs), torch.nn.CrossEntropyLoss(**kwargs)
        assert isinstance(ours, torch.nn.CrossEntropyLoss) and ours.reduction == ref.reduction
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        la, lb = ours(xa, t), ref(xb, t)
        la.sum().backward()
        lb.sum().backward()
        assert rel_err(la, lb) < 1e-6 and rel_err(xa.grad, xb.grad) < 1e-6
    model = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.ReLU())
    loss_fn = onn.CrossEntropyLoss(label_smoothing=0.05)

    def step(v, target):
        return loss_fn(model(v), target) + ops.log_softmax(v).sum() * 0 + ops.softmax(v, 0).sum() * 0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    tt = torch.from_numpy(_targets(rng, 17, 5))
    la = compiled(x, tt)
    la.backward()
    assert rel_err(la, F.cross_entropy(model(x), tt, label_smoothing=0.05)) < 1e-6


def test_uint8_targets_give_the_int64_results():
    """torch takes uint8 class targets as well as int64 (MNIST's labels are bytes); so do we,
    with the same bits as the int64 targets."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 4)).astype(np.float32)
    t = rng.integers(0, 4, 9)
    for reduction in ("mean", "sum", "none"):
        np.testing.assert_array_equal(ops.cross_entropy(x, t.astype(np.uint8), reduction),
                                      ops.cross_entropy(x, t, reduction))
    g = np.ones(9, np.float32)
    np.testing.assert_array_equal(ops.cross_entropy_backward(g, x, t.astype(np.uint8), "none"),
                                  ops.cross_entropy_backward(g, x, t, "none"))
    results = []
    for target in (torch.from_numpy(t), torch.from_numpy(t.astype(np.uint8))):
        logits = torch.from_numpy(x).requires_grad_()
        loss = onn.CrossEntropyLoss(label_smoothing=0.1)(logits, target)
        loss.backward()
        results.append((loss.detach(), logits.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    expected = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t.astype(np.uint8)), label_smoothing=0.1)
    torch.testing.assert_close(results[1][0], expected)


def test_bad_input():
    x = np.zeros((4, 3), np.float32)
    t = np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match="'target' holds class 3 at position 2"):
        ops.cross_entropy(x, np.array([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="'target' holds class -1"):
        ops.cross_entropy(torch.zeros(4, 3, requires_grad=True), torch.tensor([0, -1, 0, 0]))
    with pytest.raises(TypeError, match="'target' must be int64"):
        ops.cross_entropy(x, t.astype(np.int32))
    probabilities = np.full((4, 3), 1 / 3, np.float32)  # torch's other target kind
    with pytest.raises(TypeError, match="'target' must have the dtype of 'logits'"):
        ops.cross_entropy(x, probabilities.astype(np.float64))
    with pytest.raises(ValueError, match="'target' must have shape"):
        ops.cross_entropy(x, probabilities[:, :2])
    with pytest.raises(ValueError, match=r"'target' must have shape \(4, 2\) \(class indices\) or \(4, 3, 2\)"):
        ops.cross_entropy(np.zeros((4, 3, 2), np.float32), np.zeros((4, 2, 3), np.float32))
    with pytest.raises(ValueError, match="'weight' must have shape"):
        ops.cross_entropy(x, t, weight=np.ones(4, np.float32))
    with pytest.raises(TypeError, match="'weight' must have the dtype of 'logits'"):
        ops.cross_entropy(x, t, weight=np.ones(3))
    with pytest.raises(TypeError, match="'weight' must be a NumPy array or a torch tensor"):
        ops.cross_entropy(x, t, weight=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="'target' must have shape \\(4,\\)"):
        ops.cross_entropy(x, t[:3])
    with pytest.raises(ValueError, match=r"'target' must have shape \(4, 2\) .* for logits of shape \(4, 3, 2\)"):
        ops.cross_entropy(np.zeros((4, 3, 2), np.float32), t)
    with pytest.raises(ValueError, match=r"'target' must have shape \(2, 4\)"):
        ops.cross_entropy(torch.zeros(2, 3, 4), torch.zeros(4, 2, dtype=torch.long))  # same count, wrong shape
    with pytest.raises(TypeError, match="'logits' must be float32 or float64"):
        ops.cross_entropy(np.zeros((4, 3), np.int64), t)
    with pytest.raises(ValueError, match="'reduction' must be"):
        ops.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="'label_smoothing' must be in"):
        ops.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(TypeError, match="'target' is a torch array but 'logits' is a numpy"):
        ops.cross_entropy(x, torch.from_numpy(t))
    with pytest.raises(ValueError, match="'dim' is out of range"):
        ops.softmax(x, 2)
    with pytest.raises(TypeError, match="'dim' must be an int"):
        ops.log_softmax(x, 1.0)
    with pytest.raises(ValueError, match="'grad' must have shape"):
        ops.cross_entropy_backward(np.zeros(4, np.float32), x, t)


@requires_cuda
@pytest.mark.parametrize("n,c", [(1, 10), (64, 10), (1024, 10), (33, 1000)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cuda_matches_torch(rng, n, c, reduction):
    x = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    t = _targets(rng, n, c, ignore_frac=0.2)
    t[0] = 1
    g = torch.rand(n if reduction == "none" else (), dtype=torch.float64) + 0.5
    ref, dx_ref = _torch_ce(torch.from_numpy(x).double(), t, g, reduction=reduction, label_smoothing=0.1)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xc = torch.from_numpy(x).cuda().requires_grad_(True)
        loss = ops.cross_entropy(xc, torch.from_numpy(t).cuda(), reduction, 0.1)
        loss.backward(g.float().cuda())
        sm = ops.softmax(xc.detach(), 0)
        ls = ops.log_softmax(xc.detach())
    stream.synchronize()
    assert rel_err(loss, ref) < 2e-6 and rel_err(xc.grad, dx_ref) < 2e-6
    assert rel_err(sm, F.softmax(torch.from_numpy(x).double(), 0)) < 1e-6
    assert rel_err(ls, F.log_softmax(torch.from_numpy(x).double(), 1)) < 1e-6


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_spatial_logits_as_torch(reduction):
    """(N, C, d1, d2) logits against (N, d1, d2) targets (torch's K-dimensional form): values and
    gradients, NumPy and torch, the module too; ignored positions and smoothing included."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, 5, (2, 3, 4), generator=g)
    t[0, 1, 2] = t[1, 0, 0] = -100
    kw = dict(reduction=reduction, label_smoothing=0.1)
    ref = F.cross_entropy(x, t, **kw)
    (gx_ref,) = torch.autograd.grad(ref.sum(), x)
    for got in (ops.cross_entropy(x, t, **kw), onn.CrossEntropyLoss(**kw)(x, t)):
        assert got.shape == ref.shape and rel_err(got, ref) < 1e-12
        (gx,) = torch.autograd.grad(got.sum(), x)
        assert rel_err(gx, gx_ref) < 1e-12
    got_np = ops.cross_entropy(x.detach().numpy(), t.numpy(), **kw)
    assert np.shape(got_np) == tuple(ref.shape) and rel_err(got_np, ref.detach()) < 1e-12
