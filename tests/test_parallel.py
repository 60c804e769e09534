"""ParallelTrainer: every one of M copies trained together ends bit for bit where training
it alone with FusedTrainer ends (parameters, grads, optimizer state, per-step losses)."""
import copy

import pytest

torch = pytest.importorskip("torch")

import oxkernels  # noqa: E402
from conftest import data_root  # noqa: E402
from oxkernels import data as oxdata, models, nn as oxnn, optim  # noqa: E402
from oxkernels.fused import FusedTrainer, ParallelTrainer  # noqa: E402

MNIST, CIFAR10 = data_root("mnist"), data_root("cifar10")
NO_DATA = "real MNIST / CIFAR-10 not found: set OXKERNELS_DATA to the shared data folder"
M = 8

# Copy i's optimizer: same class for all copies, hyperparameters varying with i.
OPTIMIZERS = {
    "adam": lambda params, i: optim.Adam(params, lr=5e-4 * (i + 1), betas=(0.9 - 0.02 * i, 0.999 - 0.001 * i),
                                         amsgrad=i % 3 == 0),
    "adamw": lambda params, i: optim.AdamW(params, lr=1e-3 * (1 + i % 4), weight_decay=0.01 * i),
    "sgd-momentum": lambda params, i: torch.optim.SGD(params, lr=0.01 * (i + 1), momentum=0.5 + 0.05 * i,
                                                      weight_decay=1e-4 * (i % 2)),
}


@pytest.fixture(scope="module")
def mnist():
    if MNIST is None:
        pytest.skip(NO_DATA)
    return oxdata.load_dataset("mnist", train=True, root=MNIST)


@pytest.fixture(scope="module")
def cifar10():
    if CIFAR10 is None:
        pytest.skip(NO_DATA)
    return oxdata.load_dataset("cifar10", train=True, root=CIFAR10)


def copies(opt, make_model, m=M):
    """m (model, optimizer) pairs seeded 0 … m−1, and an identical independent twin of each."""
    pairs, twins = [], []
    for i in range(m):
        torch.manual_seed(i)
        model = make_model()
        twin = copy.deepcopy(model)
        pairs.append((model, OPTIMIZERS[opt](model.parameters(), i)))
        twins.append((twin, OPTIMIZERS[opt](twin.parameters(), i)))
    return pairs, twins


def assert_identical(pair, twin, where):
    (m1, o1), (m2, o2) = pair, twin
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), f"{where}: {name}"
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(p1.grad, p2.grad), f"{where}: {name}.grad"
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys() and len(s1["state"]) > 0
    for index in s1["state"]:
        a, b = s1["state"][index], s2["state"][index]
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{where}: state[{index}][{key}]"


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request):
    """Runs the test at 1 and at 2 oxkernels threads (solo and parallel at the same count)."""
    before = oxkernels.get_num_threads()
    oxkernels.set_num_threads(request.param)
    yield request.param
    oxkernels.set_num_threads(before)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_fit_epoch_equals_solo_runs(mnist, threads, activation, opt):
    """8 MLPs, 2 epochs of 25 steps at batch 32 (the last 8 rows), copies sharing some shuffle seeds."""
    n, batch = 24 * 32 + 8, 32
    images, labels = mnist.images_np[:n], mnist.labels_np[:n]
    pairs, twins = copies(opt, lambda: models.MLP(activation))
    trainer = ParallelTrainer(*zip(*pairs))
    solo = [FusedTrainer(*twin) for twin in twins]
    for epoch in range(2):
        seeds = [i // 2 + epoch for i in range(M)]  # copies 2k and 2k + 1 see the same order
        losses = trainer.fit_epoch(images, labels, batch, shuffle_seed=seeds)
        assert losses.shape == (M, 25)
        for i, t in enumerate(solo):
            assert torch.equal(losses[i], t.fit_epoch(images, labels, batch, shuffle_seed=seeds[i])), (epoch, i)
    for i in range(M):
        assert_identical(pairs[i], twins[i], f"model {i}")
    assert not torch.equal(pairs[0][0].fc1.weight, pairs[1][0].fc1.weight)  # the copies did differ
    assert (losses[:, -5:].mean(1) < losses[:, :5].mean(1)).sum() >= M // 2  # and mostly trained


def test_step_shared_and_per_copy_batches(threads):
    """step() on synthetic batches: one batch for all copies, then one per copy (odd sizes)."""
    pairs, twins = copies("adam", models.MLP)
    trainer = ParallelTrainer(*zip(*pairs))
    solo = [FusedTrainer(*twin) for twin in twins]
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        if step % 2 == 0:
            x, y = torch.randn(20, 1, 28, 28, generator=g), torch.randint(0, 10, (20,), generator=g)
            xs, ys = [x] * M, [y] * M
            losses = trainer.step(x, y)
        else:
            rows = [5 + i for i in range(M)]
            xs = [torch.randn(r, 784, generator=g) for r in rows]
            ys = [torch.randint(0, 10, (r,), generator=g) for r in rows]
            losses = trainer.step(xs, ys)
        assert losses.shape == (M,) and losses.dtype == torch.float32
        for i, t in enumerate(solo):
            assert losses[i].item() == t.step(xs[i], ys[i]), (step, i)
    for i in range(M):
        assert_identical(pairs[i], twins[i], f"model {i}")


def test_lenet_copies_equal_solo(cifar10, threads):
    """4 LeNets (fused conv blocks), 6 steps at batch 16, per-copy shuffles."""
    n, batch, m = 6 * 16, 16, 4
    images, labels = cifar10.images_np[:n], cifar10.labels_np[:n]
    pairs, twins = copies("adamw", models.LeNet, m=m)
    losses = ParallelTrainer(*zip(*pairs)).fit_epoch(images, labels, batch, shuffle_seed=list(range(m)))
    for i, twin in enumerate(twins):
        assert torch.equal(losses[i], FusedTrainer(*twin).fit_epoch(images, labels, batch, shuffle_seed=i))
        assert_identical(pairs[i], twins[i], f"lenet {i}")


def test_hyperparameters_picked_up_each_call():
    """An lr changed between calls (a scheduler on one copy) applies to that copy only."""
    pairs, twins = copies("sgd-momentum", models.MLP, m=3)
    trainer = ParallelTrainer(*zip(*pairs))
    solo = [FusedTrainer(*twin) for twin in twins]
    x, y = torch.randn(12, 784), torch.arange(12) % 10
    for step in range(3):
        if step == 1:
            pairs[2][1].param_groups[0]["lr"] = twins[2][1].param_groups[0]["lr"] = 1e-4
        losses = trainer.step(x, y)
        assert [v.item() for v in losses] == [t.step(x, y) for t in solo]
    for i in range(3):
        assert_identical(pairs[i], twins[i], f"model {i}")


# ---------------------------------------------------------------------------- what it refuses

def _adam_copies(*made):
    return list(made), [optim.Adam(m.parameters()) for m in made]


def test_mismatched_copies_are_named():
    class Wide(models.MLP):
        def __init__(self):
            super().__init__()
            self.fc2 = oxnn.Linear(64, 48, activation="relu")
            self.fc3 = oxnn.Linear(48, 10)

    with pytest.raises(ValueError, match=r"model 2: layer 'fc2' is Linear\(64, 48, activation relu\) but model "
                                         r"0's layer 'fc2' is Linear\(64, 32"):
        ParallelTrainer(*_adam_copies(models.MLP(), models.MLP(), Wide()))
    with pytest.raises(ValueError, match="model 1: layer 'fc1' is Linear.*sigmoid.*model 0's.*relu"):
        ParallelTrainer(*_adam_copies(models.MLP("relu"), models.MLP("sigmoid")))
    with pytest.raises(ValueError, match="model 1 has 5 trained layers, model 0 has 3"):
        ParallelTrainer(*_adam_copies(models.MLP(), models.LeNet()))
    dropout = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.Dropout())
    with pytest.raises(ValueError, match=r"model 1: FusedTrainer: layer '2' \(Dropout\) is not supported"):
        ParallelTrainer(*_adam_copies(models.MLP(), dropout))


def test_optimizer_and_argument_mismatches():
    a, b = models.MLP(), models.MLP()
    with pytest.raises(TypeError, match=r"model 1: optimizer is oxkernels.optim.AdamW but model 0's is "
                                        r"oxkernels.optim.Adam"):
        ParallelTrainer([a, b], [optim.Adam(a.parameters()), optim.AdamW(b.parameters())])
    with pytest.raises(TypeError, match="model 0: FusedTrainer: argument 'optimizer'"):
        ParallelTrainer([a], [torch.optim.Adam(a.parameters())])
    with pytest.raises(ValueError, match="2 models but 1 optimizers"):
        ParallelTrainer([a, b], [optim.Adam(a.parameters())])
    with pytest.raises(ValueError, match="'models' is empty"):
        ParallelTrainer([], [])
    with pytest.raises(ValueError, match="models 0 and 1 share"):
        ParallelTrainer([a, a], [optim.Adam(a.parameters()), optim.Adam(a.parameters())])
    meta = models.MLP().to("meta")
    with pytest.raises(TypeError, match="model 1: parameter 'fc1.weight' is on meta; .*CPU only"):
        ParallelTrainer([a, meta], [optim.Adam(a.parameters()), optim.Adam(meta.parameters())])


def test_bad_batches_step_no_copy():
    made = [models.MLP() for _ in range(4)]
    trainer = ParallelTrainer(*_adam_copies(*made))
    before = [[p.detach().clone() for p in m.parameters()] for m in made]
    good_x, good_y = torch.randn(6, 784), torch.zeros(6, dtype=torch.int64)
    xs = [good_x, good_x, good_x, torch.randn(6, 783)]
    with pytest.raises(ValueError, match="ParallelTrainer: model 3: FusedTrainer: .*784 values per sample"):
        trainer.step(xs, [good_y] * 4)
    with pytest.raises(ValueError, match=r"model 1: .*target"):
        trainer.step(good_x, [good_y, torch.tensor([0, 1, 10, 2, 0, 0]), good_y, good_y])
    with pytest.raises(ValueError, match="argument 'x' holds 3 batches for 4 models"):
        trainer.step([good_x] * 3, good_y)
    with pytest.raises(TypeError, match="argument 'y' \\(model 2\\) must be a torch tensor"):
        trainer.step(good_x, [good_y, good_y, [0] * 6, good_y])
    images = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="'shuffle_seed' holds 2 seeds for 4 models"):
        trainer.fit_epoch(images, torch.zeros(8, dtype=torch.int64), 4, shuffle_seed=[0, 1])
    with pytest.raises(ValueError, match=r"model 0: .*labels\[3\] = 12"):
        trainer.fit_epoch(images, torch.tensor([0, 1, 2, 12, 0, 0, 0, 0]), 4)
    with pytest.raises(TypeError, match="'images_u8' must be uint8"):
        trainer.fit_epoch(images.float(), torch.zeros(8, dtype=torch.int64), 4)
    for m, saved in zip(made, before):  # nothing was stepped
        assert all(torch.equal(a, b) for a, b in zip(saved, m.parameters()))
    assert all(float(st["step"]) == 0 for o in trainer.optimizers for st in o.state.values())
