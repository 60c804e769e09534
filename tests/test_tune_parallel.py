"""`oxkernels tune --parallel` (ParallelTrainer over the lr and seed axes) gives the results
of the one-by-one search: same trials, test accuracies, train losses and ranking."""
import json

import pytest

torch = pytest.importorskip("torch")

from conftest import data_root, requires_data  # noqa: E402
from oxkernels import cli, tune  # noqa: E402
from oxkernels.train import TrainConfig  # noqa: E402

REAL = data_root("mnist")
pytestmark = requires_data("mnist")


def _cli(*argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    return exit_info.value.code


def _without_time(results):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results]


def test_cli_parallel_equals_sequential(tmp_path):
    """A 2 × 2 × 2 grid (optimizer × lr × seed), 2 epochs of 300 images at batch 64 (last batch 44)."""
    common = ["tune", "mnist", "--search", "grid", "--trials", "0", "--epochs", "2", "--lrs", "3e-4,3e-3",
              "--batch-sizes", "64", "--activations", "sigmoid", "--optimizers", "adamw,sgd", "--seeds", "0,5",
              "--limit", "300", "--test-limit", "300", "--device", "cpu", "--data", str(REAL)]
    runs = {}
    for mode in ("sequential", "parallel"):
        out = tmp_path / mode
        assert _cli(*common, "--out", str(out), *(["--parallel"] if mode == "parallel" else [])) == 0
        runs[mode] = json.loads((out / "results.json").read_text())
    seq, par = runs["sequential"]["results"], runs["parallel"]["results"]
    assert len(seq) == 8 and {r["config"]["seed"] for r in seq} == {0, 5}
    assert _without_time(par) == _without_time(seq)
    assert len({r["train_loss"] for r in seq}) == 8  # the trials did differ
    assert runs["parallel"]["base_config"] == runs["sequential"]["base_config"]


@requires_data("cifar10")
def test_run_search_falls_back_for_unfusable_models_and_refuses_torch():
    """LeNet with sigmoid has no fused blocks: its group is trained one by one, with a log line."""
    base = TrainConfig(dataset="cifar10", epochs=1, limit=64, test_limit=100, device="cpu", seed=1)
    configs = [{"optimizer": "adam", "activation": "sigmoid", "batch_size": 32, "lr": lr} for lr in (1e-3, 1e-2)]
    lines = []
    par = tune.run_search(base, configs, data_root=REAL, log=lines.append, parallel=True)
    assert any("not trained in parallel" in line and "Conv2d" in line for line in lines)
    seq = tune.run_search(base, configs, data_root=REAL, log=lambda *a: None)
    assert _without_time(par) == _without_time(seq)
    torch_base = TrainConfig(dataset="mnist", epochs=1, limit=64, device="cpu", backend="torch")
    with pytest.raises(ValueError, match="--parallel trains with the oxkernels backend on the CPU"):
        tune.run_search(torch_base, [dict(configs[0], activation="relu")], data_root=REAL, parallel=True)


@pytest.mark.parametrize("parallel", [False, True])
def test_data_is_loaded_before_the_first_trial_is_timed(monkeypatch, parallel):
    """Each trial's seconds cover its training and evaluation: the one-time load of the data
    set happens before the first trial starts (it used to be counted in trial 1's time), and
    a --synthetic search never reads the files."""
    from oxkernels import data as oxdata
    from oxkernels import train as oxtrain

    events = []
    real_load, real_fit = oxdata.load_dataset, oxtrain.fit
    monkeypatch.setattr(oxtrain, "_dataset_cache", {})
    monkeypatch.setattr(oxdata, "load_dataset",
                        lambda *a, **k: events.append(("load", k.get("synthetic", False))) or real_load(*a, **k))
    monkeypatch.setattr(oxtrain, "fit", lambda *a, **k: events.append("fit") or real_fit(*a, **k))
    real_perf_counter = tune.time.perf_counter
    monkeypatch.setattr(tune.time, "perf_counter", lambda: events.append("clock") or real_perf_counter())
    base = TrainConfig(dataset="mnist", epochs=1, limit=64, test_limit=64, device="cpu", synthetic=True)
    configs = [{"optimizer": "adam", "activation": "relu", "batch_size": 32, "lr": lr} for lr in (1e-3, 1e-2)]
    results = tune.run_search(base, configs, data_root=REAL, log=lambda *a: None, parallel=parallel)
    assert len(results) == 2
    loads = [e for e in events if isinstance(e, tuple)]
    assert loads == [("load", True), ("load", True)]  # train and test splits, synthetic, once each
    assert events.index("clock") > max(i for i, e in enumerate(events) if isinstance(e, tuple))
