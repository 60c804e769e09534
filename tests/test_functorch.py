"""functorch transforms over the torch ops: inside torch.vmap the eager entry points hand
the call to the registered custom ops (the wrapper tensors have no memory a kernel could
read), so vmap gives torch's results instead of a crash in the kernel's argument check."""
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from oxkernels import ops  # noqa: E402


def _rand(seed, *shape):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


W_CONV, W_LIN, B_LIN = _rand(1, 4, 3, 3, 3), _rand(2, 5, 6), _rand(3, 5)
TARGET = torch.tensor([0, 2, 4, 1, 3, 2])

# name -> (ours, torch's), each applied to one (3, 6, 6) sample of a batch of 4
CASES = {
    "relu": (ops.relu, torch.relu),
    "sigmoid": (ops.sigmoid, torch.sigmoid),
    "max_pool2d": (lambda s: ops.max_pool2d(s, 2), lambda s: F.max_pool2d(s, 2)),
    "softmax": (lambda s: ops.softmax(s, 0), lambda s: torch.softmax(s, 0)),
    "log_softmax": (lambda s: ops.log_softmax(s, -1), lambda s: torch.log_softmax(s, -1)),
    "linear": (lambda s: ops.linear(s, W_LIN, B_LIN, "sigmoid"), lambda s: torch.sigmoid(F.linear(s, W_LIN, B_LIN))),
    "conv2d": (lambda s: ops.conv2d(s, W_CONV, None, 1, 1), lambda s: F.conv2d(s, W_CONV, None, 1, 1)),
    "conv2d_relu_maxpool2d": (lambda s: ops.conv2d_relu_maxpool2d(s, W_CONV, None, 1, 1),
                              lambda s: F.max_pool2d(F.relu(F.conv2d(s, W_CONV, None, 1, 1)), 2)),
    "cross_entropy": (lambda s: ops.cross_entropy(s.reshape(6, -1)[:, :5], TARGET, "none"),
                      lambda s: F.cross_entropy(s.reshape(6, -1)[:, :5], TARGET, reduction="none")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_matches_torch(name):
    ours, theirs = CASES[name]
    batch = _rand(0, 4, 3, 6, 6)
    got = torch.vmap(ours)(batch)
    torch.testing.assert_close(got, torch.vmap(theirs)(batch), rtol=1e-12, atol=1e-12)


def test_grad_transform_is_refused_clearly():
    """torch.func.grad over a torch.library custom op needs autograd support that this torch's
    custom ops do not have: torch's own error, not a crash inside our kernels."""
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(lambda s: ops.relu(s).sum())(_rand(0, 3, 4))
