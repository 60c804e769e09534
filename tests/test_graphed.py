"""CudaGraphTrainer: the whole oxkernels training step replayed as a CUDA graph must leave
the parameters, their .grad and the optimizer state exactly where the eager loop does.
Everything but the argument checks needs a GPU."""
import copy

import pytest

torch = pytest.importorskip("torch")

from conftest import rel_err, requires_cuda  # noqa: E402
from oxkernels import models, nn as oxnn, optim  # noqa: E402
from oxkernels.graphed import CudaGraphTrainer  # noqa: E402

OPTIMIZERS = {
    "adam": lambda ps: optim.Adam(ps, lr=2e-3, capturable=True),
    "adamw-amsgrad": lambda ps: optim.AdamW(ps, lr=2e-3, weight_decay=0.05, amsgrad=True, capturable=True),
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd-dampening": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.3),
}
NETWORKS = {
    "mlp-relu": (lambda: models.MLP("relu"), (1, 28, 28)),
    "mlp-sigmoid": (lambda: models.MLP("sigmoid"), (1, 28, 28)),
    "lenet": (lambda: models.LeNet(), (3, 32, 32)),
}


def batches(shape, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g).cuda(), torch.randint(0, 10, (n,), generator=g).cuda())
            for n in sizes]


def twins(network, opt):
    torch.manual_seed(0)
    model = NETWORKS[network][0]().cuda()
    twin = copy.deepcopy(model)
    return (model, OPTIMIZERS[opt](model.parameters())), (twin, OPTIMIZERS[opt](twin.parameters()))


def eager_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = oxnn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def assert_same_state(a, b, tol=1e-6):
    (m1, o1), (m2, o2) = a, b
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        assert rel_err(p, q) <= tol, name
        assert rel_err(p.grad, q.grad) <= tol, f"{name}.grad"
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys() and len(s1) == len(list(m1.parameters()))
    for i in s1:
        for key in s1[i]:
            assert rel_err(s1[i][key], s2[i][key]) <= tol, f"state[{i}][{key}]"


def test_rejects_a_cpu_model():
    model = models.MLP()
    with pytest.raises(TypeError, match="parameter '.*' is on cpu"):
        CudaGraphTrainer(model, optim.Adam(model.parameters()), oxnn.CrossEntropyLoss())


@requires_cuda
def test_rejects_adam_without_capturable():
    model = models.MLP().cuda()
    with pytest.raises(ValueError, match="capturable=True"):
        CudaGraphTrainer(model, optim.Adam(model.parameters()), oxnn.CrossEntropyLoss())


@requires_cuda
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("network", list(NETWORKS))
def test_graph_steps_equal_eager_steps(network, opt):
    """50 steps, among them short batches (run eagerly) and a second graph for the size 37."""
    graphed, eager = twins(network, opt)
    trainer = CudaGraphTrainer(*graphed, oxnn.CrossEntropyLoss())
    sizes = [64] * 20 + [37] + [64] * 20 + [37] * 3 + [64] * 6
    for x, y in batches(NETWORKS[network][1], sizes):
        got = trainer.step(x, y)
        want = eager_step(*eager, x, y)
        assert rel_err(got, want) <= 1e-6
    assert len(trainer._graphs) == 2  # 64 and 37: each size seen twice was captured
    assert_same_state(graphed, eager)


@requires_cuda
def test_switching_and_lr_changes_recapture():
    """Graph steps, then eager steps on the same model, a new learning rate (the graph baked
    the old one in), and graph steps again: the same as eager all along."""
    graphed, eager = twins("mlp-relu", "adam")
    trainer = CudaGraphTrainer(*graphed, oxnn.CrossEntropyLoss())
    data = batches((1, 28, 28), [32] * 30, seed=1)
    for step, (x, y) in enumerate(data):
        if step == 15:
            for _, opt in (graphed, eager):
                opt.param_groups[0]["lr"] = 5e-4
        if 10 <= step < 13:
            eager_step(*graphed, x, y)  # the unfused loop on the graphed model
        else:
            trainer.step(x, y)
        eager_step(*eager, x, y)
    assert_same_state(graphed, eager)


@requires_cuda
def test_load_state_dict_is_followed():
    """optimizer.load_state_dict replaces the state tensors the graph wrote: it recaptures."""
    graphed, eager = twins("mlp-relu", "adam")
    trainer = CudaGraphTrainer(*graphed, oxnn.CrossEntropyLoss())
    data = batches((1, 28, 28), [16] * 12, seed=2)
    for step, (x, y) in enumerate(data):
        if step == 6:
            graphed[1].load_state_dict(copy.deepcopy(eager[1].state_dict()))
        trainer.step(x, y)
        eager_step(*eager, x, y)
    assert_same_state(graphed, eager)
