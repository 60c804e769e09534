"""Second derivatives: our backwards are native kernels without autograd, so
differentiating a gradient again must raise a clear error, never return a gradient
that silently treats our op's derivative as a constant (a gradient penalty would lose
its term). create_graph=True on its own still gives the right first derivative."""
import pytest

torch = pytest.importorskip("torch")

from oxkernels import ops  # noqa: E402

MESSAGE = "second derivatives are not implemented"


def _weight(*shape):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


# name -> (ours, torch's) on an input of shape (2, 3, 8, 8)
OPS = {
    "relu": (ops.relu, torch.relu),
    "sigmoid": (ops.sigmoid, torch.sigmoid),
    "max_pool2d": (lambda x: ops.max_pool2d(x, 2), lambda x: torch.nn.functional.max_pool2d(x, 2)),
    "softmax": (lambda x: ops.softmax(x, 1), lambda x: torch.softmax(x, 1)),
    "log_softmax": (lambda x: ops.log_softmax(x, -1), lambda x: torch.log_softmax(x, -1)),
    "conv2d": (lambda x: ops.conv2d(x, _weight(4, 3, 3, 3)), lambda x: torch.nn.functional.conv2d(x, _weight(4, 3, 3, 3))),
    "conv2d_relu_maxpool2d": (
        lambda x: ops.conv2d_relu_maxpool2d(x, _weight(4, 3, 3, 3)),
        lambda x: torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(x, _weight(4, 3, 3, 3))), 2)),
    "linear": (lambda x: ops.linear(x, _weight(5, 8), activation="sigmoid"),
               lambda x: torch.sigmoid(torch.nn.functional.linear(x, _weight(5, 8)))),
    # a strided (non-contiguous) slice of x as logits
    "cross_entropy": (lambda x: ops.cross_entropy(x.reshape(6, -1)[:, :10], torch.arange(6)),
                      lambda x: torch.nn.functional.cross_entropy(x.reshape(6, -1)[:, :10], torch.arange(6))),
}


def _x():
    return torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                       requires_grad=True)


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradient_penalty_raises_instead_of_dropping_the_term(name):
    ours, _ = OPS[name]
    x = _x()
    (g,) = torch.autograd.grad(ours(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=f"oxkernels.*{MESSAGE}"):
        torch.autograd.grad((g ** 2).sum(), x)
    x = _x()
    y = ours(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=MESSAGE):
        (y.sum() + (g ** 2).sum()).backward()  # the penalty beside the ordinary loss


@pytest.mark.parametrize("name", sorted(OPS))
def test_create_graph_alone_gives_the_first_derivative(name):
    ours, theirs = OPS[name]
    x = _x()
    (g,) = torch.autograd.grad(ours(x).sum(), x, create_graph=True)
    x_ref = _x()
    (g_ref,) = torch.autograd.grad(theirs(x_ref).sum(), x_ref)
    torch.testing.assert_close(g.detach(), g_ref, rtol=1e-10, atol=1e-12)


def test_create_graph_where_nothing_the_gradient_reads_requires_grad():
    """Only the bias requires grad: dW, dx and db read x, W and the incoming gradient alone,
    so they are exact constants under create_graph=True, and no error is raised."""
    x, w = torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    (gb,) = torch.autograd.grad(ops.linear(x, w, b).sum(), b, create_graph=True)
    torch.testing.assert_close(gb, torch.full((3,), 5.0, dtype=torch.float64))
    assert not gb.requires_grad
