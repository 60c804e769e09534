"""oxkernels train / tune / bench on small slices of the real data (both backends)."""
import json

import pytest

torch = pytest.importorskip("torch")

from conftest import data_root, rel_err, requires_data  # noqa: E402
from oxkernels import bench, cli, models, tune  # noqa: E402
from oxkernels.train import TrainConfig, fit  # noqa: E402

REAL = data_root("mnist")
pytestmark = requires_data("mnist")
WITH_CIFAR10 = requires_data("cifar10")

SMALL = dict(limit=256, test_limit=200, device="cpu")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli(*argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    return exit_info.value.code


def _check_run_folder(out, epochs, test_samples, classes):
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, epochs + 1))
    for e in metrics["epochs"]:
        assert 0.0 <= e["test_accuracy"] <= 1.0 and e["epoch_time_s"] > 0 and e["train_loss"] > 0
    cm = metrics["confusion_matrix"]
    assert len(cm) == classes and sum(map(sum, cm)) == test_samples
    correct = sum(cm[i][i] for i in range(classes))
    assert abs(correct / test_samples - metrics["final_test_accuracy"]) < 1e-12
    for name in ("curves.png", "confusion.png", "misclassified.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    return metrics


@pytest.mark.parametrize("backend", ["torch", "oxkernels"])
def test_train_mnist_command(backend, tmp_path):
    out = tmp_path / "run"
    code = _cli("train", "mnist", "--backend", backend, "--epochs", "2", "--limit", "512", "--test-limit", "200",
                "--device", "cpu", "--data", str(REAL), "--out", str(out), "--no-progress")
    assert code == 0
    metrics = _check_run_folder(out, 2, 200, 10)
    assert metrics["config"]["backend"] == backend and metrics["train_samples"] == 512
    assert metrics["epochs"][1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    expected_model = "oxkernels.models.MLP" if backend == "oxkernels" else "oxkernels.models.TorchMLP"
    assert metrics["implementation"]["model"] == expected_model


@WITH_CIFAR10
@pytest.mark.parametrize("backend", ["torch", "oxkernels"])
def test_train_cifar10_lenet(backend, tmp_path):
    cfg = TrainConfig("cifar10", epochs=1, batch_size=32, optimizer="sgd", lr=1e-2, backend=backend,
                      limit=128, test_limit=100, device="cpu")
    metrics = fit(cfg, out_dir=tmp_path, data_root=REAL, progress=False, log=None)
    _check_run_folder(tmp_path, 1, 100, 10)
    assert metrics["config"]["model"] == "lenet" and metrics["classes"][0] == "airplane"


@pytest.mark.parametrize("backend", ["torch", "oxkernels"])
def test_resume_continues_exactly(backend, tmp_path):
    cfg = TrainConfig("mnist", epochs=2, backend=backend, **SMALL)
    straight = tmp_path / "straight.pt"
    fit(cfg, save=straight, data_root=REAL, progress=False, log=None)

    halfway = tmp_path / "halfway.pt"
    first = fit(TrainConfig("mnist", epochs=1, backend=backend, **SMALL), save=halfway, data_root=REAL,
                progress=False, log=None)
    resumed = tmp_path / "resumed.pt"
    second = fit(cfg, save=resumed, resume=halfway, data_root=REAL, progress=False, log=None)
    assert len(first["epochs"]) == 1 and len(second["epochs"]) == 2
    a, b = (torch.load(p, weights_only=True) for p in (straight, resumed))
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert rel_err(b["model"][key], a["model"][key]) < 1e-6, key
    # The checkpoint's weights load into a plain torch model.
    plain = models.torch_reference("mlp")
    plain.load_state_dict(b["model"])


def test_ctrl_c_keeps_finished_epochs(tmp_path):
    steps = {"n": 0}

    def interrupt_in_second_epoch(step):
        steps["n"] += 1
        if steps["n"] == 6:  # 256 samples / 64 = 4 steps per epoch: this is epoch 2, step 2
            raise KeyboardInterrupt

    metrics = fit(TrainConfig("mnist", epochs=3, backend="torch", **SMALL), out_dir=tmp_path, data_root=REAL,
                  progress=False, log=None, on_step=interrupt_in_second_epoch)
    assert metrics["interrupted"] is True and len(metrics["epochs"]) == 1
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["interrupted"] is True and len(written["epochs"]) == 1
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_backends_agree_with_the_same_seed():
    """Same seed → same initial weights and batches: losses and accuracy track each other."""
    runs = [fit(TrainConfig("mnist", epochs=1, backend=b, limit=1024, test_limit=1000, device="cpu"),
                data_root=REAL, progress=False, log=None) for b in ("torch", "oxkernels")]
    torch_epoch, ox_epoch = (r["epochs"][0] for r in runs)
    assert abs(ox_epoch["train_loss"] - torch_epoch["train_loss"]) < 1e-3 * torch_epoch["train_loss"]
    assert abs(ox_epoch["test_accuracy"] - torch_epoch["test_accuracy"]) <= 0.005


def test_bad_configs():
    with pytest.raises(ValueError, match="takes mnist"):
        TrainConfig("cifar10", model="mlp").resolved()
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig("mnist", optimizer="lbfgs").resolved()


@pytest.mark.parametrize("argv,message", [
    ("train mnist --batch-size 0", "oxkernels train: need epochs ≥ 0, batch_size ≥ 1, lr > 0; got 3, 0"),
    ("train mnist --model lenet", "oxkernels train: model 'lenet' takes cifar10 images, not mnist"),
    ("train mnist --device gpu0", "oxkernels train: device 'gpu0': "),
    ("tune mnist --trials -1", "oxkernels tune: --trials must be ≥ 1 (≥ 0 for a grid, 0: all of it), got -1"),
    ("tune mnist --search random --trials 0", "oxkernels tune: --trials must be ≥ 1"),
    ("tune mnist --lrs -1", "oxkernels tune: --lrs must all be > 0, got -1"),
    ("tune mnist --batch-sizes 64,x", "oxkernels tune: --batch-sizes must be a comma-separated list of ints"),
    ("tune mnist --seeds 1,two", "oxkernels tune: --seeds must be a comma-separated list of ints"),
    ("tune mnist --batch-sizes 0 --search grid", "oxkernels tune: need epochs ≥ 0, batch_size ≥ 1"),
    ("bench --epochs -1", "oxkernels bench: need epochs ≥ 0"),
])
def test_bad_arguments_end_the_command_with_their_message(argv, message):
    """A command-line mistake ends the command with one line naming it (SystemExit with the
    message: status 1, no traceback), before any data is read or any trial runs."""
    code = _cli(*argv.split())
    assert isinstance(code, str) and code.startswith(message), code


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("command", ["train mnist", "tune mnist", "bench"])
def test_device_cuda_without_a_gpu_says_so(command):
    code = _cli(*command.split(), "--device", "cuda", "--epochs", "1")
    assert code == f"oxkernels {command.split()[0]}: device 'cuda': torch {torch.__version__} sees no CUDA device"


# ---------------------------------------------------------------------------- tune

def test_tune_grid_two_trials(tmp_path):
    out = tmp_path / "tune"
    code = _cli("tune", "mnist", "--search", "grid", "--trials", "2", "--epochs", "1", "--backend", "torch",
                "--lrs", "1e-4,3e-3", "--batch-sizes", "64", "--activations", "relu", "--optimizers", "adam",
                "--limit", "256", "--test-limit", "200", "--device", "cpu", "--data", str(REAL), "--out", str(out))
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    accs = [r["test_accuracy"] for r in results["results"]]
    assert len(accs) == 2 and accs == sorted(accs, reverse=True)
    assert sorted(r["config"]["lr"] for r in results["results"]) == [1e-4, 3e-3]
    assert results["best"] == results["results"][0]
    assert (out / "accuracy_vs_lr.png").read_bytes()[:8] == PNG_MAGIC


def test_search_spaces():
    grid = tune.grid_configs(trials=0)
    assert len(grid) == 5 * 4 * 2 * 3 and len({tuple(sorted(c.items())) for c in grid}) == len(grid)
    assert [c["lr"] for c in grid[:5]] == tune.SPACE["lr"]  # learning rate varies fastest
    draws = tune.random_configs(trials=20, seed=3)
    assert draws == tune.random_configs(trials=20, seed=3) and draws != tune.random_configs(trials=20, seed=4)
    for c in draws:
        assert 1e-4 <= c["lr"] <= 1e-2 and c["batch_size"] in tune.SPACE["batch_size"]


# ---------------------------------------------------------------------------- bench

def test_bench_rows_and_table():
    rows, settings = bench.run_benchmark(["mlp-adam-b256"], ["torch", "torch-cudagraph"], epochs=1, limit=512,
                                         test_limit=200, device="cpu", seed=0, data_root=REAL, log=lambda *a: None)
    assert [r["impl"] for r in rows] == ["torch"]  # no CUDA graph on the CPU
    row = rows[0]
    assert row["train_samples"] == 512 and row["epoch_s"] > 0 and 0 <= row["test_accuracy"] <= 1
    broken = {"case": "mlp-adam-b256", "impl": "oxkernels", "error": "AttributeError: missing"}
    table = bench.format_markdown(rows + [broken], settings)
    assert "| mlp-adam-b256 | torch |" in table and "1.00×" in table and "AttributeError" in table


def test_cli_names_match_models():
    from oxkernels import train

    assert train.MODELS == models.MODELS and train.ACTIVATIONS == models.ACTIVATIONS


def test_cli_without_torch():
    """`oxkernels info` and --help work without torch; `train` says torch is needed."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from oxkernels import cli\n"
            "try:\n    cli.main(['train', 'mnist'])\nexcept SystemExit as e:\n    print(e.code)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "needs PyTorch" in out.stdout, out.stderr


# ---------------------------------------------------------------------------- CUDA (skipped without a GPU)

from conftest import requires_cuda  # noqa: E402

CUDA_SMALL = dict(limit=640, test_limit=500, device="cuda")  # 640 = 10 full batches of 64


@requires_cuda
@pytest.mark.parametrize("dataset", ["mnist", pytest.param("cifar10", marks=WITH_CIFAR10)])
def test_cuda_backends_agree(dataset, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32 on both sides
    runs = [fit(TrainConfig(dataset, epochs=2, backend=b, **CUDA_SMALL), data_root=REAL, progress=False, log=None)
            for b in ("torch", "oxkernels")]
    for torch_epoch, ox_epoch in zip(runs[0]["epochs"], runs[1]["epochs"]):
        assert abs(ox_epoch["train_loss"] - torch_epoch["train_loss"]) < 1e-3 * torch_epoch["train_loss"]
        assert abs(ox_epoch["test_accuracy"] - torch_epoch["test_accuracy"]) <= 0.01


@requires_cuda
@pytest.mark.parametrize("case", ["mlp-adam-b64", pytest.param("lenet-sgd-b64", marks=WITH_CIFAR10)])
def test_cuda_graph_trains_like_eager(case):
    """The captured step (warm-up undone) follows eager torch on the same batches."""
    cfg = TrainConfig(**bench.CASES[case], epochs=2, backend="torch", **CUDA_SMALL)
    eager = fit(cfg, data_root=REAL, progress=False, log=None)
    graphed = bench.fit_cuda_graph(cfg, data_root=REAL)
    for e, g in zip(eager["epochs"], graphed["epochs"]):
        assert abs(g["train_loss"] - e["train_loss"]) < 1e-4 * e["train_loss"]
        assert abs(g["test_accuracy"] - e["test_accuracy"]) <= 0.004


def test_fused_step_is_the_default_and_matches_the_unfused_loop():
    runs = {fuse: fit(TrainConfig("mnist", epochs=1, fuse=fuse, **SMALL), data_root=REAL, progress=False, log=None)
            for fuse in (True, False)}
    assert runs[True]["implementation"]["fused_step"] is True
    assert runs[False]["implementation"]["fused_step"] is False
    fused, unfused = runs[True]["epochs"][0], runs[False]["epochs"][0]
    assert abs(fused["train_loss"] - unfused["train_loss"]) <= 1e-5 * unfused["train_loss"]
    assert fused["test_accuracy"] == unfused["test_accuracy"]
