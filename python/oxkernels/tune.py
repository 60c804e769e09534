"""Hyperparameter search: `oxkernels tune mnist|cifar10 --search grid|random --trials N`.

Searches learning rate, batch size, activation and optimizer. Each trial is one
`oxkernels.train.fit` run (same seed, so trials differ only in their
hyperparameters); the results are ranked by final test accuracy and written to
OUT/results.json with a plot of accuracy against learning rate (OUT/accuracy_vs_lr.png).

grid:   the product of the value lists (learning rate varies fastest), the first
        --trials of it (all when --trials is 0);
random: --trials draws, seeded: lr log-uniform in [min, max] of the lr list, the others
        uniformly from their lists.

--seeds S1,S2,...: every config is trained once per seed (its "config" then holds "seed":
initial weights and shuffle order), so a result can be told from seed noise.

--parallel (oxkernels backend, CPU): the trials that differ only in learning rate and seed
are trained together by one oxkernels.fused.ParallelTrainer, one native call per epoch for
all of them. Each copy gets its solo run's initial weights (torch.manual_seed(seed)) and
batches (shuffle seed seed + epoch), and ParallelTrainer's copies are bit-identical to solo
runs, so the results are the ones the one-by-one search gives (test accuracy, train loss,
ranking); "seconds" is then the group's time divided by its size. A group whose model the
fused trainer cannot run (LeNet with sigmoid) is trained one by one, saying so.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import json
import math
import random
import time
from pathlib import Path

__all__ = ["grid_configs", "random_configs", "run_search", "add_parser", "SPACE"]

SPACE = {
    "lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    "batch_size": [32, 64, 128, 256],
    "activation": ["relu", "sigmoid"],
    "optimizer": ["adam", "adamw", "sgd"],
}


def grid_configs(space=SPACE, trials=0):
    """The grid in a fixed order, learning rate fastest; the first `trials` (all if 0)."""
    keys = ["optimizer", "activation", "batch_size", "lr"]
    combos = [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]
    return combos[:trials] if trials else combos


def random_configs(space=SPACE, trials=10, seed=0):
    """`trials` seeded draws: lr log-uniform over the lr range, the rest uniform over their lists."""
    rng = random.Random(seed)
    lo, hi = math.log10(min(space["lr"])), math.log10(max(space["lr"]))
    out = []
    for _ in range(trials):
        out.append({
            "optimizer": rng.choice(space["optimizer"]),
            "activation": rng.choice(space["activation"]),
            "batch_size": rng.choice(space["batch_size"]),
            "lr": float(f"{10 ** rng.uniform(lo, hi):.3g}"),
        })
    return out


def run_search(base, configs, out_dir=None, *, data_root=None, log=print, progress=False, parallel=False):
    """Train base (a TrainConfig) with each config's overrides; returns the results sorted
    by test accuracy (best first). Ctrl-C stops the search and keeps the finished trials.
    parallel=True trains the configs that differ only in lr and seed together (module docstring)."""
    from .train import load_split

    for train in (True, False):  # loaded (and cached) before the first trial's clock starts
        load_split(base.dataset, train, data_root, base.synthetic)
    with contextlib.suppress(ImportError):  # so is what torch's first optimizer imports (≈ 1.5 s here)
        importlib.import_module("torch._dynamo")
    results = []

    def done(row):
        results.append(row)
        log(f"trial {row['trial']}/{len(configs)}  {_describe(row['config'])}  "
            f"test accuracy {100 * row['test_accuracy']:.2f}%  ({row['seconds']:.2f} s)")

    try:
        if parallel:
            for group in _lr_seed_groups(configs):
                for row in _run_group(base, [(i, configs[i - 1]) for i in group], data_root, log):
                    done(row)
        else:
            for i, overrides in enumerate(configs, 1):
                done(_run_one(base, i, overrides, data_root, progress))
    except KeyboardInterrupt:
        log(f"interrupted: keeping the {len(results)} finished trial(s)")
    results.sort(key=lambda r: (-r["test_accuracy"], r["trial"]))
    if out_dir is not None:
        _write(Path(out_dir), base, results, log)
    return results


def _run_one(base, trial, overrides, data_root, progress=False):
    """One trial by oxkernels.train.fit: its results row."""
    from .train import fit

    start = time.perf_counter()
    metrics = fit(dataclasses.replace(base, **overrides), data_root=data_root, progress=progress, log=None)
    if metrics["interrupted"]:
        raise KeyboardInterrupt
    return {"trial": trial, "config": overrides, "test_accuracy": metrics.get("final_test_accuracy", 0.0),
            "train_loss": metrics["epochs"][-1]["train_loss"] if metrics["epochs"] else math.nan,
            "seconds": time.perf_counter() - start}


def _lr_seed_groups(configs):
    """Trial numbers (1-based) grouped by everything but lr and seed, in order of first appearance."""
    groups = {}
    for i, c in enumerate(configs, 1):
        key = tuple(sorted((k, v) for k, v in c.items() if k not in ("lr", "seed")))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _run_group(base, trials, data_root, log):
    """The trials [(number, overrides)] of one lr/seed group trained together by a ParallelTrainer,
    as fit() would train each: same initial weights, batches and epochs; the last epoch's train
    loss summed as train_epoch sums it; test accuracy by train.evaluate."""
    from .fused import ParallelTrainer
    from .train import TEST_BATCH, build, epoch_mean_loss, evaluate, load_split

    cfgs = [dataclasses.replace(base, **overrides).resolved() for _, overrides in trials]
    first = cfgs[0]
    if first.backend != "oxkernels" or first.device != "cpu" or not first.fuse:
        raise ValueError("tune --parallel trains with the oxkernels backend on the CPU, got backend "
                         f"{first.backend!r} on {first.device!r}; drop --parallel for this search")
    start = time.perf_counter()
    built = [build(cfg)[::2] for cfg in cfgs]  # (model, optimizer), seeded as fit() seeds them
    try:
        trainer = ParallelTrainer([m for m, _ in built], [o for _, o in built])
    except (TypeError, ValueError) as e:
        log(f"trials {', '.join(str(i) for i, _ in trials)}: not trained in parallel ({e}); one by one instead")
        return [_run_one(base, i, overrides, data_root) for i, overrides in trials]
    train_set = load_split(first.dataset, True, data_root, first.synthetic)
    test_set = load_split(first.dataset, False, data_root, first.synthetic)
    n = len(train_set) if first.limit is None else min(int(first.limit), len(train_set))
    images, labels = train_set.images_np[:n], train_set.labels_np[:n]
    train_loss = [math.nan] * len(cfgs)
    for epoch in range(first.epochs):
        losses = trainer.fit_epoch(images, labels, first.batch_size, shuffle_seed=[c.seed + epoch for c in cfgs])
        train_loss = [epoch_mean_loss(row, first.batch_size, n) for row in losses.tolist()]
    from .data import DeviceBatches

    test_batches = DeviceBatches(test_set, TEST_BATCH, "cpu", limit=first.test_limit)
    accuracy = [evaluate(model, test_batches, len(train_set.classes))[0] if first.epochs else 0.0
                for model, _ in built]
    seconds = (time.perf_counter() - start) / len(trials)
    return [{"trial": i, "config": overrides, "test_accuracy": accuracy[k], "train_loss": train_loss[k],
             "seconds": seconds} for k, (i, overrides) in enumerate(trials)]


def _describe(c):
    seed = f" seed {c['seed']}" if "seed" in c else ""
    return f"{c['optimizer']:<5} {c['activation']:<7} batch {c['batch_size']:<4} lr {c['lr']:<8.3g}{seed}"


def format_table(results) -> str:
    seeds = any("seed" in r["config"] for r in results)
    lines = ["rank  optimizer  activation  batch  lr        " + ("seed  " if seeds else "") +
             "test acc  train loss  time (s)"]
    for rank, r in enumerate(results, 1):
        c = r["config"]
        seed = f"{c.get('seed', ''):<4}  " if seeds else ""
        lines.append(f"{rank:>4}  {c['optimizer']:<9}  {c['activation']:<10}  {c['batch_size']:>5}  "
                     f"{c['lr']:<8.3g}  {seed}{100 * r['test_accuracy']:7.2f}%  {r['train_loss']:10.4f}  "
                     f"{r['seconds']:8.2f}")
    return "\n".join(lines)


def _write(out: Path, base, results, log):
    out.mkdir(parents=True, exist_ok=True)
    payload = {"base_config": dataclasses.asdict(base.resolved()), "results": results,
               "best": results[0] if results else None}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    written = ["results.json"]
    if results:
        try:
            from . import plots_train
        except ImportError as e:
            log(f"plot skipped: {e}")
        else:
            plots_train.plot_accuracy_vs_lr(results, out / "accuracy_vs_lr.png")
            written.append("accuracy_vs_lr.png")
    log(f"wrote {', '.join(written)} to {out}")


def _values(flag, text, cast):
    """The comma-separated values of a command-line flag."""
    try:
        return [cast(v) for v in text.split(",") if v]
    except ValueError:
        raise SystemExit(f"oxkernels tune: {flag} must be a comma-separated list of {cast.__name__}s, "
                         f"got {text!r}") from None


def add_parser(subparsers):
    from .train import add_common_arguments

    p = subparsers.add_parser("tune", help="hyperparameter search (grid or random) over lr, batch size, "
                                           "activation, optimizer")
    add_common_arguments(p, epochs=1)
    p.add_argument("--search", choices=("grid", "random"), default="random")
    p.add_argument("--trials", type=int, default=10, help="number of trials (grid: 0 runs the whole grid)")
    p.add_argument("--lrs", help=f"comma-separated (default {','.join(map(str, SPACE['lr']))})")
    p.add_argument("--batch-sizes", help=f"comma-separated (default {','.join(map(str, SPACE['batch_size']))})")
    p.add_argument("--activations", help="comma-separated (default relu,sigmoid)")
    p.add_argument("--optimizers", help="comma-separated (default adam,adamw,sgd)")
    p.add_argument("--seeds", help="comma-separated seeds: train every config once per seed (default: --seed only)")
    p.add_argument("--parallel", action="store_true",
                   help="oxkernels backend on the CPU: train the trials that differ only in lr and seed together "
                        "(oxkernels.fused.ParallelTrainer, same results as one by one)")
    p.add_argument("--out", help="output folder (default runs/tune-DATASET)")
    p.set_defaults(func=run_tune)


def run_tune(args) -> int:
    from .train import TrainConfig, apply_threads, require_torch

    require_torch("tune")
    apply_threads(args.threads)

    space = dict(SPACE)
    for key, flag, arg, cast in (("lr", "--lrs", args.lrs, float),
                                 ("batch_size", "--batch-sizes", args.batch_sizes, int),
                                 ("activation", "--activations", args.activations, str),
                                 ("optimizer", "--optimizers", args.optimizers, str)):
        if arg:
            space[key] = _values(flag, arg, cast)
    if not all(lr > 0 for lr in space["lr"]):  # random search draws log-uniformly between them
        raise SystemExit(f"oxkernels tune: --lrs must all be > 0, got {args.lrs}")
    base = TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, device=args.device,
                       backend=args.backend, seed=args.seed, limit=args.limit, test_limit=args.test_limit)
    base.checked("tune")  # check the arguments before the first trial
    if args.trials < 0 or (args.search == "random" and args.trials == 0):
        raise SystemExit(f"oxkernels tune: --trials must be ≥ 1 (≥ 0 for a grid, 0: all of it), got {args.trials}")
    if args.search == "grid":
        configs = grid_configs(space, args.trials)
    else:
        configs = random_configs(space, args.trials, seed=args.seed)
    if args.seeds:
        configs = [dict(c, seed=seed) for c in configs for seed in _values("--seeds", args.seeds, int)]
    for c in configs:
        cfg = dataclasses.replace(base, **c).checked("tune")
        if args.parallel and (cfg.backend != "oxkernels" or cfg.device != "cpu"):
            raise SystemExit(f"oxkernels tune: --parallel needs --backend oxkernels on the CPU (--device cpu), got "
                             f"backend {cfg.backend} on {cfg.device}")
    how = " (lr and seed in parallel)" if args.parallel else ""
    print(f"{args.search} search: {len(configs)} trials of {base.epochs} epoch(s) on {args.dataset} "
          f"({base.backend}){how}")
    results = run_search(base, configs, args.out or f"runs/tune-{args.dataset}", data_root=args.data,
                         parallel=args.parallel)
    print(format_table(results))
    if results:
        print(f"best: {_describe(results[0]['config'])}  test accuracy {100 * results[0]['test_accuracy']:.2f}%")
    return 0 if len(results) == len(configs) else 130
