"""FusedTrainer (one native call per step / epoch) against the unfused oxkernels
training loop on real MNIST: losses, parameters, grads and Adam state agree."""
import copy

import pytest

torch = pytest.importorskip("torch")

from conftest import data_root, poison, rel_err, requires_data  # noqa: E402
from oxkernels import data as oxdata, models, nn as oxnn, optim  # noqa: E402
from oxkernels.fused import FusedTrainer  # noqa: E402

REAL = data_root("mnist")
needs_data = requires_data("mnist")

OPTIMIZERS = {
    "adam": lambda params: optim.Adam(params, lr=2e-3),
    "adamw": lambda params: optim.AdamW(params, lr=2e-3, weight_decay=0.05),
    "adam-l2-amsgrad": lambda params: optim.Adam(params, lr=2e-3, weight_decay=1e-3, amsgrad=True),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "sgd-nesterov-wd": lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.8, nesterov=True,
                                                      weight_decay=1e-3),
    "sgd-dampening": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, dampening=0.3, maximize=False),
    "sgd-plain": lambda params: torch.optim.SGD(params, lr=0.05),
}


@pytest.fixture(scope="module")
def mnist():
    if REAL is None:
        pytest.skip("real MNIST / CIFAR-10 not found: set OXKERNELS_DATA to the shared data folder")
    return oxdata.load_dataset("mnist", train=True, root=REAL)


def twins(activation, opt, seed=0):
    """Two identical (model, optimizer) pairs."""
    torch.manual_seed(seed)
    model = models.MLP(activation)
    twin = copy.deepcopy(model)
    return (model, OPTIMIZERS[opt](model.parameters())), (twin, OPTIMIZERS[opt](twin.parameters()))


def unfused_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = oxnn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def assert_same_training_state(fused, unfused, tol=1e-5, n_params=6):
    (m1, o1), (m2, o2) = fused, unfused
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert rel_err(a, b) <= tol, name
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert p1.grad is not None and rel_err(p1.grad, p2.grad) <= tol, f"{name}.grad"
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys()
    assert len(s1["state"]) == (0 if getattr(o1, "defaults", {}).get("momentum", None) == 0 else n_params)
    for index in s1["state"]:
        a, b = s1["state"][index], s2["state"][index]
        assert a.keys() == b.keys()
        if "step" in a:
            assert a["step"].dtype == b["step"].dtype and float(a["step"]) == float(b["step"])
        for key in a.keys() - {"step"}:
            assert rel_err(a[key], b[key]) <= tol, f"state[{index}][{key}]"


@needs_data
@pytest.mark.parametrize("opt", ["adam", "adamw"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_fit_epoch_matches_unfused_loop(mnist, activation, opt):
    """50 steps at batch 64 (one epoch of 3200 shuffled images) natively vs DeviceBatches + autograd."""
    batch, limit, seed = 64, 50 * 64, 7
    fused, unfused = twins(activation, opt)
    losses = FusedTrainer(*fused).fit_epoch(mnist.images_np[:limit], mnist.labels_np[:limit], batch,
                                           shuffle_seed=seed)
    batches = oxdata.DeviceBatches(mnist, batch, "cpu", shuffle=True, seed=seed, limit=limit)
    reference = [unfused_step(*unfused, x, y) for x, y in batches]
    assert losses.shape == (50,) and len(reference) == 50
    assert rel_err(losses, torch.tensor(reference)) <= 1e-6
    assert losses[-1] < losses[0]  # it trains
    assert_same_training_state(fused, unfused)


@needs_data
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_step_matches_unfused_with_odd_batches(mnist, activation):
    """trainer.step on DeviceBatches' batches of 33 rows (the last one 7), amsgrad + L2 decay."""
    fused, unfused = twins(activation, "adam-l2-amsgrad", seed=1)
    trainer = FusedTrainer(*fused)
    batches = oxdata.DeviceBatches(mnist, 33, "cpu", shuffle=True, seed=3, limit=33 * 12 + 7)
    for x, y in batches:
        assert trainer.step(x, y) == pytest.approx(unfused_step(*unfused, x, y), rel=1e-6)
        for buffer in trainer._workspace:  # nothing may be read before this step writes it
            poison(buffer)
    assert_same_training_state(fused, unfused)


@needs_data
@pytest.mark.parametrize("opt", ["sgd-momentum", "sgd-nesterov-wd", "sgd-dampening", "sgd-plain"])
def test_sgd_matches_torch_sgd(mnist, opt):
    """torch.optim.SGD: a fused epoch of 50 steps, then unfused and fused steps alternating."""
    fused, unfused = twins("sigmoid" if opt == "sgd-dampening" else "relu", opt, seed=6)
    trainer = FusedTrainer(*fused)
    limit = 50 * 64
    losses = trainer.fit_epoch(mnist.images_np[:limit], mnist.labels_np[:limit], 64, shuffle_seed=9)
    batches = oxdata.DeviceBatches(mnist, 64, "cpu", shuffle=True, seed=9, limit=limit)
    reference = [unfused_step(*unfused, x, y) for x, y in batches]
    assert rel_err(losses, torch.tensor(reference)) <= 1e-5
    assert_same_training_state(fused, unfused)
    batches.set_epoch(1)
    for step, (x, y) in zip(range(6), batches):
        loss = trainer.step(x, y) if step % 2 else unfused_step(*fused, x, y)
        assert loss == pytest.approx(unfused_step(*unfused, x, y), rel=1e-5)
    assert_same_training_state(fused, unfused)


@needs_data
def test_switching_between_fused_and_unfused(mnist):
    """fused steps → unfused steps → a fused epoch, against the same run all unfused."""
    (m1, o1), (m2, o2) = twins("relu", "adamw", seed=2)
    trainer = FusedTrainer(m1, o1)
    batches = oxdata.DeviceBatches(mnist, 64, "cpu", shuffle=True, seed=5, limit=64 * 30)
    for step, (x, y) in enumerate(batches):
        fused_loss = trainer.step(x, y) if step < 10 else unfused_step(m1, o1, x, y)
        assert fused_loss == pytest.approx(unfused_step(m2, o2, x, y), rel=1e-6)
    assert_same_training_state((m1, o1), (m2, o2))
    # A fused epoch after the unfused steps (new grad tensors: the trainer re-binds), seed 5 + 1 = epoch 1.
    losses = trainer.fit_epoch(mnist.images_np[:64 * 30], mnist.labels_np[:64 * 30], 64, shuffle_seed=6)
    batches.set_epoch(1)
    reference = [unfused_step(m2, o2, x, y) for x, y in batches]
    assert rel_err(losses, torch.tensor(reference)) <= 1e-6
    assert_same_training_state((m1, o1), (m2, o2))
    # lr changed between steps (a scheduler) is picked up.
    for group in (o1.param_groups[0], o2.param_groups[0]):
        group["lr"] = 1e-4
    x, y = next(iter(batches))
    assert trainer.step(x, y) == pytest.approx(unfused_step(m2, o2, x, y), rel=1e-6)
    assert_same_training_state((m1, o1), (m2, o2))


def test_unfused_sees_the_fused_grads_and_no_state_before_a_step():
    (m1, o1), (m2, o2) = twins("sigmoid", "adam", seed=4)
    trainer = FusedTrainer(m1, o1)
    assert len(o1.state) == 0  # state is created at the first step, as torch does
    x, y = torch.randn(5, 784), torch.tensor([0, 9, 3, 3, 1])
    trainer.step(x, y)
    unfused_step(m2, o2, x, y)
    assert_same_training_state((m1, o1), (m2, o2), tol=1e-6)


@pytest.fixture(scope="module")
def cifar10():
    root = data_root("cifar10")
    if root is None:
        pytest.skip("real CIFAR-10 not found: set OXKERNELS_DATA to the shared data folder")
    return oxdata.load_dataset("cifar10", train=True, root=root)


@needs_data
@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_lenet_fit_epoch_matches_unfused_loop(cifar10, opt):
    """LeNet (fused conv-ReLU-pool blocks): 50 steps at batch 64 natively vs DeviceBatches + autograd."""
    batch, limit, seed = 64, 50 * 64, 11
    torch.manual_seed(3)
    model = models.LeNet()
    assert model.fused
    twin = copy.deepcopy(model)
    fused, unfused = (model, OPTIMIZERS[opt](model.parameters())), (twin, OPTIMIZERS[opt](twin.parameters()))
    losses = FusedTrainer(*fused).fit_epoch(cifar10.images_np[:limit], cifar10.labels_np[:limit], batch,
                                           shuffle_seed=seed)
    batches = oxdata.DeviceBatches(cifar10, batch, "cpu", shuffle=True, seed=seed, limit=limit)
    reference = [unfused_step(*unfused, x, y) for x, y in batches]
    assert rel_err(losses, torch.tensor(reference)) <= 1e-6
    assert_same_training_state(fused, unfused, n_params=10)


@needs_data
def test_lenet_step_odd_batch_then_unfused(cifar10):
    torch.manual_seed(5)
    model = models.LeNet()
    twin = copy.deepcopy(model)
    fused, unfused = (model, OPTIMIZERS["adam-l2-amsgrad"](model.parameters())), \
        (twin, OPTIMIZERS["adam-l2-amsgrad"](twin.parameters()))
    trainer = FusedTrainer(*fused)
    batches = oxdata.DeviceBatches(cifar10, 31, "cpu", shuffle=True, seed=2, limit=31 * 6 + 3)
    for step, (x, y) in enumerate(batches):
        loss = trainer.step(x, y) if step % 2 == 0 else unfused_step(*fused, x, y)
        for buffer in trainer._workspace:
            poison(buffer)
        assert loss == pytest.approx(unfused_step(*unfused, x, y), rel=1e-6)
    assert_same_training_state(fused, unfused, n_params=10)


# ---------------------------------------------------------------------------- what it refuses

def test_unsupported_layer_is_named():
    lenet = models.LeNet(fused=False)  # separate Conv2d / ReLU / MaxPool2d modules
    with pytest.raises(ValueError, match=r"layer 'conv1' \(Conv2d\) is not supported"):
        FusedTrainer(lenet, optim.Adam(lenet.parameters()))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.Dropout(), torch.nn.Linear(16, 10))
    with pytest.raises(ValueError, match=r"layer '2' \(Dropout\)"):
        FusedTrainer(net, optim.Adam(net.parameters()))
    net = torch.nn.Sequential(torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10), torch.nn.ReLU())
    with pytest.raises(ValueError, match="layer '2'.*logits and must have no activation"):
        FusedTrainer(net, optim.Adam(net.parameters()))
    net = torch.nn.Sequential(oxnn.Linear(784, 16, activation="relu"), torch.nn.Sigmoid(), torch.nn.Linear(16, 10))
    with pytest.raises(ValueError, match="layer '1'.*after a Linear without one"):
        FusedTrainer(net, optim.Adam(net.parameters()))
    net = torch.nn.Sequential(torch.nn.Linear(784, 16, bias=False), torch.nn.Linear(16, 10))
    with pytest.raises(ValueError, match="layer '0'.*without bias"):
        FusedTrainer(net, optim.Adam(net.parameters()))


def test_unknown_forward_order_and_wrong_optimizer():
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(10, 10), torch.nn.Linear(10, 10)

        def forward(self, x):
            return self.a(self.b(x))

    model = Custom()
    with pytest.raises(ValueError, match="cannot tell in which order Custom"):
        FusedTrainer(model, optim.Adam(model.parameters()))
    model = models.MLP()
    with pytest.raises(TypeError, match="Adam, AdamW or torch.optim.SGD, got torch.optim.adam.Adam"):
        FusedTrainer(model, torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="exactly the model's"):
        FusedTrainer(model, optim.Adam(list(model.parameters())[:2]))
    with pytest.raises(TypeError, match="float32 on the CPU"):
        FusedTrainer(models.MLP().double(), optim.Adam(models.MLP().parameters()))
    with pytest.raises(ValueError, match="'loss'"):
        FusedTrainer(model, optim.Adam(model.parameters()), loss="mse")


def test_bad_batches():
    model = models.MLP()
    trainer = FusedTrainer(model, optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="784 values per sample"):
        trainer.step(torch.randn(4, 783), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="target"):
        trainer.step(torch.randn(4, 784), torch.tensor([0, 1, 10, 2]))
    with pytest.raises(TypeError, match="x"):
        trainer.step(torch.randn(4, 784, dtype=torch.float64), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="uint8"):
        trainer.fit_epoch(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match=r"labels\[3\] = 12"):
        trainer.fit_epoch(torch.zeros(8, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2, 12, 0, 0, 0, 0]), 4)
    before = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing was stepped
    assert all(len(st) == 0 or float(st["step"]) == 0 for st in trainer.optimizer.state.values())


@pytest.mark.parametrize("opt", ["adam", "adam-l2-amsgrad", "sgd-nesterov-wd"])
def test_fit_epoch_same_bits_at_one_and_two_threads(mnist, opt):
    # With two threads the first layer runs split by rows of W (fused.cpp: owner_split) and the
    # products split C among the threads; with one thread neither happens. Every element must
    # still be summed in the same order: the same losses, weights, grads and state, bit for bit.
    import oxkernels

    n, batch = 20 * 64 + 24, 64  # 21 steps, the last one short
    images, labels = mnist.images_np[:n], mnist.labels_np[:n]
    results = []
    before = oxkernels.get_num_threads()
    try:
        for count in (1, 2):
            oxkernels.set_num_threads(count)
            model, optimizer = twins("relu", opt)[0]
            losses = FusedTrainer(model, optimizer).fit_epoch(images, labels, batch, shuffle_seed=3)
            results.append((losses, model, optimizer))
    finally:
        oxkernels.set_num_threads(before)
    (l1, m1, o1), (l2, m2, o2) = results
    assert torch.equal(l1, l2)
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(p1.grad, p2.grad), f"{name}.grad"
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys() and len(s1) == 6
    for index in s1:
        for key in s1[index]:
            assert torch.equal(s1[index][key], s2[index][key]), f"state[{index}][{key}]"
