"""Hyperparameter search: `oxkernels tune mnist|cifar10 --search grid|random --trials N`.

Searches learning rate, batch size, activation and optimizer. Each trial is one
`oxkernels.train.fit` run (same seed, so trials differ only in their
hyperparameters); the results are ranked by final test accuracy and written to
OUT/results.json with a plot of accuracy against learning rate (OUT/accuracy_vs_lr.png).

grid:   the product of the value lists (learning rate varies fastest), the first
        --trials of it (all when --trials is 0);
random: --trials draws, seeded: lr log-uniform in [min, max] of the lr list, the others
        uniformly from their lists.
"""
from __future__ import annotations

import dataclasses
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


def run_search(base, configs, out_dir=None, *, data_root=None, log=print, progress=False):
    """Train base (a TrainConfig) with each config's overrides; returns the results sorted
    by test accuracy (best first). Ctrl-C stops the search and keeps the finished trials."""
    from .train import fit

    results = []
    try:
        for i, overrides in enumerate(configs, 1):
            cfg = dataclasses.replace(base, **overrides)
            start = time.perf_counter()
            metrics = fit(cfg, data_root=data_root, progress=progress, log=None)
            if metrics["interrupted"]:
                raise KeyboardInterrupt
            row = {"trial": i, "config": overrides, "test_accuracy": metrics.get("final_test_accuracy", 0.0),
                   "train_loss": metrics["epochs"][-1]["train_loss"] if metrics["epochs"] else math.nan,
                   "seconds": time.perf_counter() - start}
            results.append(row)
            log(f"trial {i}/{len(configs)}  {_describe(overrides)}  test accuracy {100 * row['test_accuracy']:.2f}%  "
                f"({row['seconds']:.2f} s)")
    except KeyboardInterrupt:
        log(f"interrupted: keeping the {len(results)} finished trial(s)")
    results.sort(key=lambda r: (-r["test_accuracy"], r["trial"]))
    if out_dir is not None:
        _write(Path(out_dir), base, results, log)
    return results


def _describe(c):
    return f"{c['optimizer']:<5} {c['activation']:<7} batch {c['batch_size']:<4} lr {c['lr']:<8.3g}"


def format_table(results) -> str:
    lines = ["rank  optimizer  activation  batch  lr        test acc  train loss  time (s)"]
    for rank, r in enumerate(results, 1):
        c = r["config"]
        lines.append(f"{rank:>4}  {c['optimizer']:<9}  {c['activation']:<10}  {c['batch_size']:>5}  "
                     f"{c['lr']:<8.3g}  {100 * r['test_accuracy']:7.2f}%  {r['train_loss']:10.4f}  "
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


def _values(text, cast):
    return [cast(v) for v in text.split(",") if v]


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
    p.add_argument("--out", help="output folder (default runs/tune-DATASET)")
    p.set_defaults(func=run_tune)


def run_tune(args) -> int:
    from .train import TrainConfig, apply_threads, require_torch

    require_torch("tune")
    apply_threads(args.threads)

    space = dict(SPACE)
    for key, arg, cast in (("lr", args.lrs, float), ("batch_size", args.batch_sizes, int),
                           ("activation", args.activations, str), ("optimizer", args.optimizers, str)):
        if arg:
            space[key] = _values(arg, cast)
    base = TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, device=args.device,
                       backend=args.backend, seed=args.seed, limit=args.limit, test_limit=args.test_limit)
    base.resolved()  # check the arguments before the first trial
    if args.search == "grid":
        configs = grid_configs(space, args.trials)
    else:
        configs = random_configs(space, args.trials, seed=args.seed)
    for c in configs:
        dataclasses.replace(base, **c).resolved()
    print(f"{args.search} search: {len(configs)} trials of {base.epochs} epoch(s) on {args.dataset} ({base.backend})")
    results = run_search(base, configs, args.out or f"runs/tune-{args.dataset}", data_root=args.data)
    print(format_table(results))
    if results:
        print(f"best: {_describe(results[0]['config'])}  test accuracy {100 * results[0]['test_accuracy']:.2f}%")
    return 0 if len(results) == len(configs) else 130
