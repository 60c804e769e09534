"""Torch tensors of any memory layout through every differentiable op, custom op and
drop-in module: the values and gradients are those of the same values laid out
row-major, bit for bit (inputs are copied row-major before the kernels read them).
The NumPy side of the same rule is in test_reliability.test_non_contiguous_views_match."""
import pytest

torch = pytest.importorskip("torch")

import oxkernels.nn as onn  # noqa: E402
from oxkernels import ops  # noqa: E402

F64 = torch.float64


def strided(t):
    """The values of t through a view whose last dimension has stride 2 (not contiguous)."""
    v = torch.stack([t, torch.zeros_like(t)], -1)[..., 0]
    assert t.numel() < 2 or not v.is_contiguous()
    return v


def rand(seed, *shape):
    return torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


# name -> (fn(*tensors), float64 inputs, which inputs are differentiable)
def _cases():
    target = torch.tensor([0, 4, 2, 2, 1, 3, 0, 4, 1])
    return {
        "relu": (ops.relu, [rand(0, 3, 5, 7)], [True]),
        "sigmoid": (ops.sigmoid, [rand(1, 3, 5, 7)], [True]),
        "max_pool2d": (lambda x: ops.max_pool2d(x, 2), [rand(2, 2, 3, 9, 9)], [True]),
        "softmax": (lambda x: ops.softmax(x, 0), [rand(3, 4, 6)], [True]),
        "log_softmax": (lambda x: ops.log_softmax(x, -1), [rand(4, 4, 6)], [True]),
        "cross_entropy": (lambda x, t: ops.cross_entropy(x, t, label_smoothing=0.1), [rand(5, 9, 5), target],
                          [True, False]),
        "cross_entropy_none": (lambda x, t: ops.cross_entropy(x, t, reduction="none"), [rand(6, 9, 5), target],
                               [True, False]),
        "linear": (lambda x, w, b: ops.linear(x, w, b, "relu"), [rand(7, 7, 5), rand(8, 3, 5), rand(9, 3)],
                   [True, True, True]),
        "conv2d": (lambda x, w, b: ops.conv2d(x, w, b, padding=1), [rand(10, 2, 3, 8, 8), rand(11, 4, 3, 3, 3),
                                                                    rand(12, 4)], [True, True, True]),
        "conv2d_relu_maxpool2d": (lambda x, w, b: ops.conv2d_relu_maxpool2d(x, w, b),
                                  [rand(13, 2, 3, 9, 9), rand(14, 4, 3, 3, 3), rand(15, 4)], [True, True, True]),
        "linreg_loss": (lambda X, y, th: ops.linreg_loss(X, y, th), [rand(16, 11, 4), rand(17, 11), rand(18, 5)],
                        [False, False, True]),
    }


CASES = _cases()


def _run(fn, inputs, differentiable, layout):
    leaves = [t.clone().requires_grad_(d) for t, d in zip(inputs, differentiable)]
    args = [layout(t) for t in leaves]
    out = fn(*args)
    grad_out = layout(rand(99, *out.shape))  # the incoming gradient is a view too
    wrt = [t for t, d in zip(leaves, differentiable) if d]
    return out.detach(), torch.autograd.grad(out, wrt, grad_out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_strided_inputs_match_row_major(name):
    fn, inputs, differentiable = CASES[name]
    out, grads = _run(fn, inputs, differentiable, lambda t: t)
    out_s, grads_s = _run(fn, inputs, differentiable, strided)
    assert torch.equal(out_s, out)
    for g_s, g in zip(grads_s, grads):
        assert torch.equal(g_s, g)


@pytest.mark.parametrize("name", ["relu", "max_pool2d", "softmax", "cross_entropy", "linear", "conv2d"])
def test_custom_ops_accept_strided_inputs(name):
    """What torch.compile calls: the registered ops, checked by opcheck with strided inputs."""
    x = strided(rand(20, 2, 3, 8, 8))
    o = torch.ops.oxkernels
    calls = {
        "relu": (o.relu, (x,)),
        "max_pool2d": (o.max_pool2d, (x, 2, 2, 2, 2)),
        "softmax": (o.softmax, (strided(rand(21, 4, 6)), 1)),
        "cross_entropy": (o.cross_entropy, (strided(rand(22, 9, 5)), torch.tensor([0, 4, 2, 2, 1, 3, 0, 4, 1]),
                                            1, 0.0, -100)),
        "linear": (o.linear, (strided(rand(23, 7, 5)), strided(rand(24, 3, 5)), strided(rand(25, 3)), "sigmoid")),
        "conv2d": (o.conv2d, (x, strided(rand(26, 4, 3, 3, 3)), strided(rand(27, 4)), [1, 1], [1, 1])),
    }
    op, args = calls[name]
    torch.library.opcheck(op, args)
    row_major = tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)
    assert torch.equal(op(*args), op(*row_major))


def _modules():
    return {
        "ReLU": (onn.ReLU(), torch.nn.ReLU(), (2, 3, 6, 6)),
        "Sigmoid": (onn.Sigmoid(), torch.nn.Sigmoid(), (2, 3, 6, 6)),
        "MaxPool2d": (onn.MaxPool2d(2), torch.nn.MaxPool2d(2), (2, 3, 6, 6)),
        "Linear": (onn.Linear(6, 4).double(), torch.nn.Linear(6, 4).double(), (5, 6)),
        "Conv2d": (onn.Conv2d(3, 4, 3).double(), torch.nn.Conv2d(3, 4, 3).double(), (2, 3, 6, 6)),
        "ConvReLUMaxPool2d": (onn.ConvReLUMaxPool2d(3, 4, 3).double(), None, (2, 3, 8, 8)),
    }


@pytest.mark.parametrize("name", ["ReLU", "Sigmoid", "MaxPool2d", "Linear", "Conv2d", "ConvReLUMaxPool2d"])
def test_drop_in_modules_accept_permuted_inputs(name):
    ours, theirs, shape = _modules()[name]
    if theirs is not None:
        theirs.load_state_dict(ours.state_dict())
    # a channels-last / transposed tensor, as a permute or a transpose in a model makes
    base = rand(30, *shape[:-2], shape[-1], shape[-2]).requires_grad_()
    x = base.transpose(-1, -2)
    assert not x.is_contiguous()
    y = ours(x)
    (gx,) = torch.autograd.grad(y.sum(), base)
    base_ref = base.detach().contiguous().requires_grad_()
    y_ref = ours(base_ref.transpose(-1, -2).contiguous())
    (gx_ref,) = torch.autograd.grad(y_ref.sum(), base_ref)
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)
    if theirs is not None:  # and the same as torch's module on the same view
        torch.testing.assert_close(y, theirs(x), rtol=1e-12, atol=1e-12)


def test_cross_entropy_loss_module_accepts_transposed_logits():
    logits = rand(31, 5, 9).requires_grad_()  # (C, N) transposed to (N, C)
    target = torch.tensor([0, 4, 2, 2, 1, 3, 0, 4, 1])
    loss = onn.CrossEntropyLoss(label_smoothing=0.05)(logits.t(), target)
    (g,) = torch.autograd.grad(loss, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.05)(ref_logits.t(), target)
    (g_ref,) = torch.autograd.grad(ref, ref_logits)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
