"""cross_entropy with class weights and with class-probability targets, against torch
(float64 references): every reduction, label smoothing, ignore_index, spatial inputs, the
eager and custom-op paths, the drop-in module, and what stays refused."""
import numpy as np
import pytest

from oxkernels import ops
from conftest import poison, rel_err, requires_cuda

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import oxkernels.nn as onn  # noqa: E402
from oxkernels._torch import loss as torch_loss  # noqa: E402

REDUCTIONS = ["mean", "sum", "none"]


def _problem(rng, n, c, dtype=np.float64, ignore_frac=0.2):
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
    index = rng.integers(0, c, n)
    index[rng.random(n) < ignore_frac] = -100
    probs = rng.dirichlet(np.ones(c), n).astype(dtype)
    weight = (rng.random(c) + 0.25).astype(dtype)
    return logits, index, probs, weight


def _torch_reference(logits, target, weight, reduction, smoothing, g):
    x = torch.from_numpy(logits).double().requires_grad_(True)
    t = torch.from_numpy(target)
    t = t.double() if t.is_floating_point() else t
    w = None if weight is None else torch.from_numpy(weight).double()
    loss = F.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=smoothing)
    loss.backward(torch.from_numpy(g).double())
    return loss.detach().numpy(), x.grad.numpy()


def _numpy_results(logits, target, w, g, reduction, smoothing):
    loss = ops.cross_entropy(logits, target, reduction, smoothing, weight=w)
    grad = ops.cross_entropy_backward(g, logits, target, reduction, smoothing, weight=w)
    assert loss.dtype == logits.dtype and grad.dtype == logits.dtype
    return loss, [grad]


def _cuda_results(logits, target, w, g, reduction, smoothing):
    """On a non-default stream: through autograd (the eager Function) and the backward op."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = torch.from_numpy(logits).cuda().requires_grad_(True)
        t, wc = torch.from_numpy(target).cuda(), None if w is None else torch.from_numpy(w).cuda()
        gc = torch.from_numpy(g).cuda()
        loss = ops.cross_entropy(x, t, reduction, smoothing, weight=wc)
        loss.backward(gc)
        grad_op = ops.cross_entropy_backward(gc, x.detach(), t, reduction, smoothing, weight=wc)
    stream.synchronize()
    return loss.detach().cpu().numpy(), [x.grad.cpu().numpy(), grad_op.cpu().numpy()]


@pytest.mark.parametrize("where", ["numpy", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("target_kind,weighted", [("index", True), ("probs", False), ("probs", True)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("n,c", [(1, 1), (7, 3), (33, 10), (129, 31), (300, 100)])
def test_matches_torch(rng, where, reduction, smoothing, target_kind, weighted, dtype, tol, n, c):
    logits, index, probs, weight = _problem(rng, n, c, dtype)
    target = index if target_kind == "index" else probs
    w = weight if weighted else None
    g = np.asarray(rng.standard_normal(n if reduction == "none" else ()).astype(dtype))
    ref_loss, ref_grad = _torch_reference(logits, target, w, reduction, smoothing, g)
    results = _numpy_results if where == "numpy" else _cuda_results
    loss, grads = results(logits, target, w, g, reduction, smoothing)
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol, equal_nan=True)
    for grad in grads:
        assert rel_err(grad, ref_grad) < tol


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_torch_eager_and_custom_op_match_torch(rng, reduction, target_kind):
    logits, index, probs, weight = _problem(rng, 64, 10, np.float32)
    target = torch.from_numpy(index if target_kind == "index" else probs)
    w = torch.from_numpy(weight)
    code = torch_loss.REDUCTIONS[reduction]
    for call in (lambda x: ops.cross_entropy(x, target, reduction, 0.1, weight=w),
                 lambda x: torch.ops.oxkernels.cross_entropy(x, target, code, 0.1, -100, w)):
        x, xr = (torch.from_numpy(logits).requires_grad_(True) for _ in range(2))
        loss, ref = call(x), F.cross_entropy(xr, target, weight=w, reduction=reduction, label_smoothing=0.1)
        g = torch.randn_like(ref)
        loss.backward(g, retain_graph=True)
        ref.backward(g)
        assert rel_err(loss, ref) < 2e-6 and rel_err(x.grad, xr.grad) < 2e-6
        x.grad = None
        loss.backward(g)  # a second backward of the same graph recomputes the gradient
        assert rel_err(x.grad, xr.grad) < 2e-6


@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_spatial_inputs(rng, target_kind):
    x = torch.from_numpy(rng.standard_normal((3, 5, 4, 2)))
    if target_kind == "index":
        target = torch.from_numpy(rng.integers(0, 5, (3, 4, 2)))
    else:
        target = torch.softmax(torch.from_numpy(rng.standard_normal((3, 5, 4, 2))), 1)
    w = torch.from_numpy(rng.random(5) + 0.5)
    for reduction in REDUCTIONS:
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        la = onn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=0.2)(xa, target)
        lb = torch.nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=0.2)(xb, target)
        assert la.shape == lb.shape
        la.sum().backward()
        lb.sum().backward()
        assert rel_err(la, lb) < 1e-12 and rel_err(xa.grad, xb.grad) < 1e-12


def test_all_targets_ignored_gives_torchs_nan():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.full((4,), -100)
    w = torch.rand(3, dtype=torch.float64)
    loss = ops.cross_entropy(x, t, weight=w)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x, t, weight=w))


def test_gradcheck_and_opcheck(rng):
    x = torch.from_numpy(rng.standard_normal((6, 4))).requires_grad_(True)
    w = torch.from_numpy(rng.random(4) + 0.5)
    index = torch.tensor([0, 3, -100, 1, 2, 2])
    probs = torch.softmax(torch.from_numpy(rng.standard_normal((6, 4))), 1)
    for target in (index, probs):
        for reduction in REDUCTIONS:
            assert torch.autograd.gradcheck(
                lambda v: ops.cross_entropy(v, target, reduction, 0.1, weight=w), (x,))
        code = torch_loss.REDUCTIONS["mean"]
        torch.library.opcheck(torch.ops.oxkernels.cross_entropy, (x, target, code, 0.1, -100, w))
        g = torch.tensor(1.5, dtype=torch.float64)
        torch.library.opcheck(torch.ops.oxkernels.cross_entropy_backward, (g, x.detach(), target, code, 0.1, -100, w))


def test_module_weight_is_torchs_buffer_and_compiles(rng):
    w = torch.from_numpy((rng.random(10) + 0.5).astype(np.float32))
    ours, ref = onn.CrossEntropyLoss(weight=w), torch.nn.CrossEntropyLoss(weight=w)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight"]
    fresh = onn.CrossEntropyLoss(weight=torch.ones(10))
    fresh.load_state_dict(ref.state_dict())
    assert torch.equal(fresh.weight, w)
    x = torch.from_numpy(rng.standard_normal((16, 10)).astype(np.float32))
    probs = torch.softmax(torch.from_numpy(rng.standard_normal((16, 10)).astype(np.float32)), 1)
    compiled = torch.compile(lambda v, t: ours(v, t), fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = compiled(xa, probs), ref(xb, probs)
    la.backward()
    lb.backward()
    assert rel_err(la, lb) < 2e-6 and rel_err(xa.grad, xb.grad) < 2e-6


def test_forward_writes_every_element(rng):
    logits, _, probs, weight = _problem(rng, 9, 4, np.float32)
    out = poison(np.empty(9, np.float32))
    from oxkernels import _C

    _C.cross_entropy(logits, probs, out, 0, 0.0, -100, weight=weight)
    assert np.isfinite(out).all()
    grad = poison(np.empty_like(logits))
    _C.cross_entropy_backward(np.ones(9, np.float32), logits, probs, grad, 0, 0.0, -100, weight=weight)
    assert np.isfinite(grad).all()


def test_gradients_of_target_or_weight_are_refused():
    x = torch.randn(4, 3, requires_grad=True)
    probs = torch.softmax(torch.randn(4, 3), 1).requires_grad_(True)
    with pytest.raises(NotImplementedError, match="argument 'target'"):
        onn.CrossEntropyLoss()(x, probs)
    with pytest.raises(NotImplementedError, match="argument 'weight'"):
        ops.cross_entropy(x, torch.tensor([0, 1, 2, 0]), weight=torch.ones(3, requires_grad=True))
    with torch.no_grad():  # nothing to differentiate: fine
        assert torch.isfinite(onn.CrossEntropyLoss()(x, probs))


@requires_cuda
def test_cuda_weighted_rows_with_bad_class_give_nan_without_reading_the_weight_past_its_end():
    x = torch.randn(4, 3, device="cuda")
    t = torch.tensor([0, 7, 2, -100], device="cuda")
    w = torch.rand(3, device="cuda") + 0.5
    rows = ops.cross_entropy(x, t, "none", weight=w).cpu()
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all() and rows[3] == 0
    grad = ops.cross_entropy_backward(torch.ones(4, device="cuda"), x, t, "none", weight=w).cpu()
    assert torch.isnan(grad[1]).all() and torch.isfinite(grad[[0, 2]]).all() and (grad[3] == 0).all()
