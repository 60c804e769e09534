"""Training the course networks: `oxkernels train mnist|cifar10 ...`.

    metrics = fit(TrainConfig(dataset="mnist", epochs=3), out_dir="runs/mnist")

One loop for both backends: `backend="oxkernels"` builds the model from
oxkernels.nn (oxkernels.models.MLP / LeNet) with oxkernels.optim.Adam / AdamW
and oxkernels.nn.CrossEntropyLoss; `backend="torch"` runs the identical loop
with the torch.nn twin (oxkernels.models.torch_reference), torch.optim and
torch's loss. SGD with momentum is torch.optim.SGD on both backends (until
oxkernels.optim has one). The whole data set sits on the device; batches are
drawn by index with a per-epoch seeded shuffle (oxkernels.data.DeviceBatches),
so the same seed gives both backends the same initial weights and the same
batches.

Checkpoints (`save=`, `resume=`) are torch.save'd dicts:
    {"model": state_dict, "optimizer": state_dict, "epoch": epochs done,
     "config": TrainConfig as dict, "history": per-epoch metrics}
`torch_reference(name).load_state_dict(torch.load(path)["model"])` loads the
weights into a plain torch model (and vice versa).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import data as oxdata
from .progress import Progress

try:
    import torch

    from . import models
except ImportError:  # `oxkernels --help` / `info` must work without torch; running `train` says what is missing
    torch = models = None

__all__ = ["TrainConfig", "fit", "train_epoch", "evaluate", "make_optimizer", "make_loss",
           "default_device", "add_parser"]

OPTIMIZERS = ("adam", "adamw", "sgd")
MODELS = ("mlp", "lenet")              # = models.MODELS (spelled out so the CLI needs no torch)
ACTIVATIONS = ("relu", "sigmoid")      # = models.ACTIVATIONS
BACKENDS = ("oxkernels", "torch")
DEFAULT_MODEL = {"mnist": "mlp", "cifar10": "lenet"}
TEST_BATCH = 1000


@dataclass
class TrainConfig:
    dataset: str = "mnist"
    model: str | None = None          # None: mlp for mnist, lenet for cifar10
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9             # SGD only
    weight_decay: float | None = None  # None: the optimizer's own default (AdamW 0.01, others 0)
    activation: str = "relu"
    device: str | None = None         # None: cuda if available, else cpu
    backend: str = "oxkernels"
    seed: int = 0
    limit: int | None = None          # train on the first `limit` samples only
    test_limit: int | None = None     # evaluate on the first `test_limit` test samples only
    fuse: bool = True                 # oxkernels backend: one native call per step where the model allows
    synthetic: bool = False           # random images of the data set's shape (timing without the files)

    def resolved(self) -> "TrainConfig":
        """A copy with the defaults filled in and every field checked."""
        cfg = dataclasses.replace(self)
        cfg.dataset = cfg.dataset.lower()
        if cfg.dataset not in DEFAULT_MODEL:
            raise ValueError(f"dataset must be one of {sorted(DEFAULT_MODEL)}, got {self.dataset!r}")
        cfg.model = cfg.model or DEFAULT_MODEL[cfg.dataset]
        if cfg.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {cfg.model!r}")
        expected_input = {"mlp": "mnist", "lenet": "cifar10"}[cfg.model]
        if cfg.dataset != expected_input:
            raise ValueError(f"model {cfg.model!r} takes {expected_input} images, not {cfg.dataset}")
        if cfg.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
        if cfg.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {cfg.backend!r}")
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {cfg.activation!r}")
        if cfg.epochs < 0 or cfg.batch_size < 1 or not cfg.lr > 0:
            raise ValueError(f"need epochs ≥ 0, batch_size ≥ 1, lr > 0; got {cfg.epochs}, {cfg.batch_size}, {cfg.lr}")
        cfg.device = str(cfg.device or default_device())
        try:
            device = torch.device(cfg.device)
        except RuntimeError as e:
            raise ValueError(f"device {cfg.device!r}: {e}") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {cfg.device!r}: torch {torch.__version__} sees no CUDA device")
            from . import info

            if cfg.backend == "oxkernels" and not info()["cuda_built"]:
                raise ValueError(f"device {cfg.device!r}: this oxkernels was built without CUDA kernels (rebuild "
                                 "with OXKERNELS_CUDA=ON, or use --backend torch)")
        return cfg

    def checked(self, command: str) -> "TrainConfig":
        """resolved(), for the command line: a bad argument ends the command with its message
        (no traceback)."""
        try:
            return self.resolved()
        except ValueError as e:
            raise SystemExit(f"oxkernels {command}: {e}") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------- parts

def make_optimizer(cfg: TrainConfig, params):
    """The optimizer for cfg: oxkernels.optim.Adam/AdamW on the oxkernels backend, torch.optim
    on the torch backend; SGD (with cfg.momentum) is torch.optim.SGD on both."""
    params = list(params)
    extra = {} if cfg.weight_decay is None else {"weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, **extra)
    if cfg.backend == "oxkernels":
        from . import optim as oxoptim

        cls = {"adam": oxoptim.Adam, "adamw": oxoptim.AdamW}[cfg.optimizer]
        # On a GPU the step count stays on the device, so the step can be a CUDA graph
        # (fused or not, the same arithmetic).
        extra["capturable"] = torch.device(cfg.device).type == "cuda"
    else:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(params, lr=cfg.lr, **extra)


def make_loss(backend: str):
    if backend == "oxkernels":
        from . import nn as oxnn

        return oxnn.CrossEntropyLoss()
    return torch.nn.CrossEntropyLoss()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


_dataset_cache: dict = {}


def load_split(name: str, train: bool, root=None, synthetic=False):
    """The data set, loaded once per process (tune and bench train many times on it)."""
    key = (name, train, "synthetic" if synthetic else str(oxdata.data_root(root)))
    if key not in _dataset_cache:
        _dataset_cache[key] = (oxdata.load_dataset(name, train=train, synthetic=True) if synthetic
                               else oxdata.load_dataset(name, train=train, root=root))
    return _dataset_cache[key]


def train_epoch(model, loss_fn, optimizer, batches, *, progress=None, on_step=None, trainer=None):
    """One pass over `batches`; returns (mean training loss, seconds). on_step(step) is called
    after every step (tests use it to interrupt). The loss is summed on the device and read
    back every 50 steps for the progress bar, so the GPU is not synchronised per step.
    With a trainer (FusedTrainer, CudaGraphTrainer), each step is its one call; a FusedTrainer
    runs the whole epoch in one native call (fit_epoch: the same batches and the same result,
    without Python between the steps) unless on_step must run between them."""
    model.train()
    if on_step is None and hasattr(trainer, "fit_epoch"):
        return _native_epoch(trainer, batches, progress)
    device = batches.inputs.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    _sync(device)
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        if trainer is not None:
            loss = trainer.step(x, y)  # a float: the step already ran natively
            total.add_(loss * len(y))
        else:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            loss = loss.detach()
            total.add_(loss, alpha=len(y))
        seen += len(y)
        if progress is not None:
            progress.update(len(y))
            if step % 50 == 0:
                progress.postfix(f"loss {float(loss):.4f}")
        if on_step is not None:
            on_step(step)
    mean_loss = (total / max(seen, 1)).item()  # also synchronises the device
    return mean_loss, time.perf_counter() - start


def epoch_mean_loss(step_losses, batch_size: int, n: int) -> float:
    """The epoch's mean training loss from its per-step mean losses: Σ_s loss_s · rows_s / n, the
    batches all batch_size rows but maybe the last, summed in step order in float64 (as the
    step loop sums them)."""
    total = 0.0
    for step, loss in enumerate(step_losses):
        total += loss * min(batch_size, n - step * batch_size)
    return total / max(n, 1)


def _native_epoch(trainer, batches, progress):
    """trainer.fit_epoch over the epoch DeviceBatches would draw: the same samples, order
    (seed + epoch) and normalisation, from the uint8 images."""
    n, ds = batches.num_samples, batches.dataset
    start = time.perf_counter()
    losses = trainer.fit_epoch(ds.images[:n], ds.labels[:n], batches.batch_size,
                               shuffle_seed=batches.shuffle_seed, mean=ds.mean, std=ds.std)
    seconds = time.perf_counter() - start
    mean_loss = epoch_mean_loss(losses.tolist(), batches.batch_size, n)
    if progress is not None:
        progress.update(n)
        progress.postfix(f"loss {mean_loss:.4f}")
    return mean_loss, seconds


def evaluate(model, batches, num_classes=10):
    """(accuracy, mean loss, predictions (CPU int64), confusion matrix [true, predicted])."""
    with torch.no_grad():
        return _evaluate(model, batches, num_classes)


def _evaluate(model, batches, num_classes):
    model.eval()
    preds, targets, loss_sum = [], [], 0.0
    for x, y in batches:
        logits = model(x)
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        preds.append(logits.argmax(1))
        targets.append(y)
    empty = torch.zeros(0, dtype=torch.int64)
    pred = torch.cat(preds).cpu() if preds else empty
    labels = torch.cat(targets).cpu() if targets else empty
    n = max(len(labels), 1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    accuracy = (pred == labels).sum().item() / n
    return accuracy, loss_sum / n, pred, confusion


def _impl_name(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _versions():
    from . import __version__

    return {"oxkernels": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------- the loop

def build(cfg: TrainConfig):
    """Model (on cfg.device, initialised from cfg.seed), loss and optimizer for a resolved cfg."""
    torch.manual_seed(cfg.seed)
    model = models.build_model(cfg.model, cfg.backend, cfg.activation).to(cfg.device)
    return model, make_loss(cfg.backend), make_optimizer(cfg, model.parameters())


def fit(config: TrainConfig, out_dir=None, save=None, resume=None, *, data_root=None,
        progress=True, log=print, on_step=None, plots=True) -> dict:
    """Train and evaluate after every epoch; returns the metrics (also written to
    out_dir/metrics.json with PNG plots when out_dir is given). Ctrl-C (KeyboardInterrupt)
    stops the run: what was measured so far is still returned and written, with
    metrics["interrupted"] = True. `save` writes a checkpoint after every epoch.

    Inside a torch.distributed process group of W ranks (see oxkernels.distributed) each
    rank trains on its shard of every global batch of W·batch_size samples through
    DistributedDataParallel; rank 0 alone logs, evaluates, saves and writes, and only
    rank 0 returns the metrics (the others return None)."""
    from . import distributed

    cfg = config.resolved()
    rank, world_size = distributed.world()
    if rank != 0:
        log, progress, out_dir, save, plots = None, False, None, None, False
    log = log or (lambda *a, **k: None)
    train_set = load_split(cfg.dataset, True, data_root, cfg.synthetic)
    test_set = load_split(cfg.dataset, False, data_root, cfg.synthetic)
    train_batches = oxdata.DeviceBatches(train_set, cfg.batch_size, cfg.device, shuffle=True,
                                         seed=cfg.seed, limit=cfg.limit, rank=rank, world_size=world_size)
    test_batches = oxdata.DeviceBatches(test_set, TEST_BATCH, cfg.device, limit=cfg.test_limit)
    model, loss_fn, optimizer = build(cfg)
    if world_size > 1:
        if cfg.backend == "oxkernels" and cfg.fuse:
            log("fused step: not used with several processes (DDP must average the gradients "
                "between backward and the update); running the oxkernels modules")
        trainer, stepped = None, distributed.wrap(model, cfg.device)
    else:
        trainer, stepped = fused_trainer(cfg, model, optimizer, log, loss_fn), model

    history, start_epoch = [], 0
    if resume:
        ckpt = torch.load(resume, map_location=cfg.device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
        log(f"resumed from {resume} after epoch {start_epoch}")

    metrics = {
        "config": dataclasses.asdict(cfg),
        "implementation": {"model": _impl_name(model), "optimizer": _impl_name(optimizer),
                           "loss": _impl_name(loss_fn), "fused_step": trainer is not None},
        "versions": _versions(),
        "train_samples": train_batches.num_samples * world_size,
        "test_samples": test_batches.num_samples,
        "classes": list(train_set.classes),
        "epochs": history,
        "interrupted": False,
        "world_size": world_size,
    }
    last_eval = None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_batches.set_epoch(epoch)
            bar = Progress(train_batches.num_samples, f"epoch {epoch + 1}/{cfg.epochs}",
                                  unit="img", enabled=progress)
            try:
                train_loss, seconds = train_epoch(stepped, loss_fn, optimizer, train_batches,
                                                  progress=bar, on_step=on_step, trainer=trainer)
            finally:
                bar.close()
            if world_size > 1:
                train_loss = distributed.mean_over_ranks(train_loss, train_batches.num_samples)
                if rank != 0:
                    continue
            last_eval = evaluate(model, test_batches, len(train_set.classes))
            accuracy, test_loss = last_eval[0], last_eval[1]
            samples = train_batches.num_samples * world_size
            row = {"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test_loss,
                   "test_accuracy": accuracy, "epoch_time_s": seconds,
                   "samples_per_s": samples / seconds if seconds > 0 else math.inf}
            history.append(row)
            log(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
                f"test accuracy {100 * accuracy:.2f}%  time {seconds:.2f} s "
                f"({row['samples_per_s']:.0f} samples/s)")
            if save:
                save_checkpoint(save, model, optimizer, epoch + 1, cfg, history)
    except KeyboardInterrupt:
        metrics["interrupted"] = True
        log(f"interrupted: keeping the {len(history)} finished epoch(s)")

    if history:
        metrics["final_test_accuracy"] = history[-1]["test_accuracy"]
    if last_eval is not None:
        metrics["confusion_matrix"] = last_eval[3].tolist()
    if out_dir is not None:
        _write_outputs(Path(out_dir), metrics, test_set, test_batches, last_eval, plots, log)
    return metrics if rank == 0 else None


def fused_trainer(cfg: TrainConfig, model, optimizer, log, loss_fn=None):
    """When cfg asks for a fused step: on the CPU a FusedTrainer (one native call per step)
    where the model and optimizer allow it, on a GPU a CudaGraphTrainer (the step replayed
    as one CUDA graph); otherwise None, with the reason logged."""
    if cfg.backend != "oxkernels" or not cfg.fuse:
        return None
    if torch.device(cfg.device).type == "cuda":
        from .graphed import CudaGraphTrainer

        return CudaGraphTrainer(model, optimizer, loss_fn or make_loss(cfg.backend), strict=False)
    from .fused import FusedTrainer

    try:
        return FusedTrainer(model, optimizer)
    except (TypeError, ValueError) as e:
        log(f"fused step: not used ({e}); running the unfused oxkernels modules")
        return None


def save_checkpoint(path, model, optimizer, epochs_done, cfg, history):
    """torch.save the state_dicts atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epochs_done, "config": dataclasses.asdict(cfg), "history": list(history)}, tmp)
    os.replace(tmp, path)


def _write_outputs(out: Path, metrics, test_set, test_batches, last_eval, plots, log):
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    written = ["metrics.json"]
    if plots and metrics["epochs"]:
        try:
            from . import plots_train
        except ImportError as e:  # matplotlib missing
            log(f"plots skipped: {e}")
        else:
            written += plots_train.write_training_plots(out, metrics, test_set, test_batches.num_samples,
                                                        None if last_eval is None else last_eval[2])
    log(f"wrote {', '.join(written)} to {out}")


# ---------------------------------------------------------------------------- command line

def add_common_arguments(p, epochs=3):
    p.add_argument("dataset", choices=sorted(DEFAULT_MODEL), help="data set")
    p.add_argument("--model", choices=MODELS, help="network (default: mlp for mnist, lenet for cifar10)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--backend", choices=BACKENDS, default="oxkernels",
                   help="oxkernels modules, or the identical loop on torch.nn/torch.optim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="train on the first N samples only (quick runs)")
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test samples only")
    p.add_argument("--data", help="data folder (default: $OXKERNELS_DATA, else ~/.cache/oxkernels)")
    add_threads_argument(p)


def add_threads_argument(p):
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch and oxkernels (default: torch's; on a busy machine 1 can be "
                        "much faster than oversubscribed cores)")


def apply_threads(n) -> None:
    if n:
        import oxkernels

        torch.set_num_threads(n)
        oxkernels.set_num_threads(n)


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train the course MLP (mnist) or CNN (cifar10)")
    add_common_arguments(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, help="default: the optimizer's own")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    p.add_argument("--out", help="folder for metrics.json and plots (default: runs/DATASET-MODEL-BACKEND)")
    p.add_argument("--save", help="checkpoint file written after every epoch")
    p.add_argument("--resume", help="checkpoint to continue from (runs up to --epochs in total)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-fuse", action="store_true",
                   help="oxkernels backend: run the modules op by op instead of one native call per step")
    p.add_argument("--synthetic", action="store_true",
                   help="random images of the data set's shape instead of the files: for timing only")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel training on N local processes (torch.distributed: gloo on the CPU, "
                        "NCCL on N GPUs); --batch-size is per process")
    p.set_defaults(func=run_train)


def require_torch(command: str) -> None:
    if torch is None:
        raise SystemExit(f"oxkernels {command} needs PyTorch: pip install 'oxkernels[torch]'")


def run_train(args) -> int:
    require_torch("train")
    if args.nproc < 1:
        raise SystemExit(f"--nproc must be ≥ 1, got {args.nproc}")
    cfg = TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                      weight_decay=args.weight_decay, activation=args.activation, device=args.device,
                      backend=args.backend, seed=args.seed, limit=args.limit, test_limit=args.test_limit,
                      fuse=not args.no_fuse, synthetic=args.synthetic)
    cfg = cfg.checked("train")
    out = args.out or f"runs/{cfg.dataset}-{cfg.model}-{cfg.backend}"
    if os.environ.get("RANK", "0") == "0":  # one banner under torchrun
        print(f"training {cfg.model} on {'synthetic ' if cfg.synthetic else ''}{cfg.dataset} ({cfg.backend}, {cfg.device}): {cfg.optimizer} lr {cfg.lr} "
              f"batch {cfg.batch_size}, {cfg.epochs} epochs, seed {cfg.seed}")
    fit_kwargs = dict(out_dir=out, save=args.save, resume=args.resume, data_root=args.data,
                      progress=not args.no_progress)
    from . import distributed

    if distributed.launched_by_torchrun():  # torchrun started this process as one rank
        metrics = distributed.worker(cfg, args.threads, fit_kwargs)
    elif args.nproc > 1:
        print(f"{args.nproc} processes, global batch {args.nproc * cfg.batch_size}")
        metrics = distributed.launch(cfg, args.nproc, args.threads, **fit_kwargs)
    else:
        apply_threads(args.threads)
        metrics = fit(cfg, **fit_kwargs)
    return 130 if metrics is not None and metrics["interrupted"] else 0
