"""End-to-end benchmark: `oxkernels bench` (also benchmarks/bench_e2e.py).

Trains the course networks on the real data with torch eager and with
oxkernels on the same machine, with the same seed and hyperparameters (so both
start from the same weights and see the same batches), and reports per case:
epoch time (median over the measured epochs), samples/s, the speed-up over
torch eager (torch epoch time / this epoch time), and the final test accuracy.
On a GPU it adds torch with the whole training step captured in one CUDA graph
("torch-cudagraph"), the fastest plain torch has; that variant drops the last,
smaller batch of an epoch (a graph has fixed shapes).

Cases (the issue's): MLP on MNIST with Adam lr 1e-3 at batch 64 and 256; LeNet
on CIFAR-10 with Adam lr 1e-3 and with SGD lr 1e-3 momentum 0.9, batch 64.
--epochs / --limit / --test-limit shrink the run (e.g. a few minutes on a small CPU).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

__all__ = ["CASES", "run_case", "fit_cuda_graph", "format_markdown", "add_parser"]

CASES = {
    "mlp-adam-b64": dict(dataset="mnist", model="mlp", optimizer="adam", lr=1e-3, batch_size=64),
    "mlp-adam-b256": dict(dataset="mnist", model="mlp", optimizer="adam", lr=1e-3, batch_size=256),
    "lenet-adam-b64": dict(dataset="cifar10", model="lenet", optimizer="adam", lr=1e-3, batch_size=64),
    "lenet-sgd-b64": dict(dataset="cifar10", model="lenet", optimizer="sgd", lr=1e-3, momentum=0.9, batch_size=64),
}
IMPLS = ("torch", "oxkernels", "oxkernels-fused", "torch-cudagraph")


def fit_cuda_graph(config, *, data_root=None) -> dict:
    """The torch backend's training loop with forward, backward and optimizer step captured
    in one CUDA graph and replayed per batch. Same seed → same initial weights and batches
    as train.fit (the warm-up steps that capture needs are undone before training)."""
    import torch

    from . import data as oxdata
    from .train import build, evaluate, load_split

    cfg = dataclasses.replace(config, backend="torch").resolved()
    if torch.device(cfg.device).type != "cuda":
        raise ValueError("torch-cudagraph needs a CUDA device")
    train_set = load_split(cfg.dataset, True, data_root, cfg.synthetic)
    test_set = load_split(cfg.dataset, False, data_root, cfg.synthetic)
    batches = oxdata.DeviceBatches(train_set, cfg.batch_size, cfg.device, shuffle=True, seed=cfg.seed, limit=cfg.limit)
    test_batches = oxdata.DeviceBatches(test_set, 1000, cfg.device, limit=cfg.test_limit)
    model, loss_fn, _ = build(cfg)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    else:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
        optimizer = cls(model.parameters(), lr=cfg.lr, capturable=True)

    B = cfg.batch_size
    static_x = torch.zeros((B, *batches.inputs.shape[1:]), device=cfg.device)
    static_y = torch.zeros(B, dtype=torch.int64, device=cfg.device)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: lets lazy state (optimizer buffers, cuBLAS handles) exist
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(static_x), static_y).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    with torch.no_grad():  # undo the warm-up: initial weights, fresh (zero) optimizer state
        for k, v in model.state_dict().items():
            v.copy_(initial[k])
        for state in optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    v.zero_()
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = loss_fn(model(static_x), static_y)
        static_loss.backward()
        optimizer.step()

    history = []
    full = (batches.num_samples // B) * B
    for epoch in range(cfg.epochs):
        batches.set_epoch(epoch)
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=cfg.device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for x, y in batches:
            if len(y) != B:
                continue
            static_x.copy_(x)
            static_y.copy_(y)
            graph.replay()
            total += static_loss.detach()
        train_loss = (total * B / max(full, 1)).item()
        seconds = time.perf_counter() - start
        accuracy, test_loss, _, _ = evaluate(model, test_batches)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "test_loss": test_loss,
                        "test_accuracy": accuracy, "epoch_time_s": seconds, "samples_per_s": full / seconds})
    return {"epochs": history, "train_samples": full, "final_test_accuracy": history[-1]["test_accuracy"]
            if history else None, "interrupted": False}


def case_config(case: str, impl: str, *, epochs=1, limit=None, test_limit=None, device=None, seed=0,
                synthetic=False):
    """The TrainConfig that `impl` trains `case` with."""
    from .train import TrainConfig

    return TrainConfig(**CASES[case], epochs=epochs, limit=limit, test_limit=test_limit, device=device,
                       seed=seed, backend="torch" if impl.startswith("torch") else "oxkernels",
                       fuse=impl == "oxkernels-fused", synthetic=synthetic)


def run_case(case: str, impl: str, *, epochs=1, limit=None, test_limit=None, device=None, seed=0,
             data_root=None, synthetic=False) -> dict:
    """One benchmark row: train `case` with `impl`; returns timing and accuracy."""
    from .train import fit

    cfg = case_config(case, impl, epochs=epochs, limit=limit, test_limit=test_limit, device=device, seed=seed,
                      synthetic=synthetic)
    if impl == "torch-cudagraph":
        metrics = fit_cuda_graph(cfg, data_root=data_root)
    else:
        metrics = fit(cfg, data_root=data_root, progress=False, log=None)
    if metrics["interrupted"]:
        raise KeyboardInterrupt
    times = [e["epoch_time_s"] for e in metrics["epochs"]]
    epoch_s = statistics.median(times[1:] if len(times) > 2 else times)
    return {"case": case, "impl": impl, "device": cfg.resolved().device, "epochs": len(times),
            "train_samples": metrics["train_samples"], "epoch_s": epoch_s,
            "samples_per_s": metrics["train_samples"] / epoch_s, "epoch_times_s": times,
            "test_accuracy": metrics.get("final_test_accuracy")}


def machine_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        # torch's cuDNN convolutions may round float32 inputs to TF32 (its default); ours do not
        tf32 = "on" if torch.backends.cudnn.allow_tf32 else "off"
        return f"GPU {torch.cuda.get_device_name()}, torch's cuDNN TF32 {tf32}"
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import oxkernels

    return (f"{cpu}, {os.cpu_count()} cores, threads: torch {torch.get_num_threads()}, "
            f"oxkernels {oxkernels.get_num_threads()}")


def format_markdown(rows, settings) -> str:
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["impl"]] = r
    lines = [
        f"### End-to-end training ({settings['device']}: {settings['machine']}), {settings['date']}",
        "",
        f"torch {settings['torch']}, oxkernels {settings['oxkernels']}; {settings['epochs']} epoch(s), "
        f"train samples {settings['limit'] or 'all'}, test samples {settings['test_limit'] or 'all'}, seed {settings['seed']}, "
        f"{settings['data']} data. "
        "Epoch time = median over epochs (the first excluded when there are 3 or more), "
        "training only (no evaluation, data already on the device). Speed-up = torch eager time / this time.",
        "",
        "| case | impl | epoch (s) | samples/s | speed-up vs torch eager | test accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for case, impls in by_case.items():
        base = impls.get("torch")
        for impl, r in impls.items():
            if "error" in r:
                lines.append(f"| {case} | {impl} | – | – | – | {r['error']} |")
                continue
            speedup = f"{base['epoch_s'] / r['epoch_s']:.2f}×" if base and "epoch_s" in base else "–"
            acc = "–" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.2f}%"
            lines.append(f"| {case} | {impl} | {r['epoch_s']:.3f} | {r['samples_per_s']:.0f} | {speedup} | {acc} |")
    return "\n".join(lines) + "\n"


def run_benchmark(cases, impls, *, epochs, limit, test_limit, device, seed, data_root, synthetic=False, log=print):
    import torch

    from . import __version__
    from .train import default_device

    device = device or default_device()
    if not device.startswith("cuda") and "torch-cudagraph" in impls:
        log("torch-cudagraph needs a CUDA device: left out on " + device)
        impls = [i for i in impls if i != "torch-cudagraph"]
    rows = []
    for case in cases:
        for impl in impls:
            try:
                row = run_case(case, impl, epochs=epochs, limit=limit, test_limit=test_limit, device=device,
                               seed=seed, data_root=data_root, synthetic=synthetic)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # an unavailable backend is a row, not the end of the run
                row = {"case": case, "impl": impl, "error": f"{type(e).__name__}: {e}"}
                log(f"{case:<15} {impl:<16} failed: {row['error']}")
            else:
                log(f"{case:<15} {impl:<16} epoch {row['epoch_s']:.3f} s  {row['samples_per_s']:.0f} samples/s  "
                    f"test accuracy {100 * row['test_accuracy']:.2f}%")
            rows.append(row)
    settings = {"device": device, "machine": machine_description(device), "epochs": epochs, "limit": limit,
                "data": "synthetic (random images, accuracy meaningless)" if synthetic else "real",
                "test_limit": test_limit, "seed": seed, "torch": torch.__version__, "oxkernels": __version__,
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    return rows, settings


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="end-to-end training benchmark: torch eager vs oxkernels")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated from {', '.join(CASES)}")
    p.add_argument("--impls", default=",".join(IMPLS),
                   help="comma-separated from torch, oxkernels, torch-cudagraph (GPU only)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, help="train on the first N samples only")
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test samples only")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="data folder (default: $OXKERNELS_DATA, else ~/.cache/oxkernels)")
    p.add_argument("--synthetic", action="store_true",
                   help="random images of the data sets' shapes: epoch times without the files (accuracy meaningless)")
    from .train import add_threads_argument

    add_threads_argument(p)
    p.add_argument("--markdown", help="append the results table to this file (e.g. benchmarks/RESULTS_e2e.md)")
    p.add_argument("--json", help="write the rows and settings to this JSON file")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    from .train import apply_threads, require_torch

    require_torch("bench")
    apply_threads(args.threads)
    cases = [c for c in args.cases.split(",") if c]
    impls = [i for i in args.impls.split(",") if i]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r}; expected some of {', '.join(CASES)}")
    for i in impls:
        if i not in IMPLS:
            raise SystemExit(f"unknown impl {i!r}; expected some of {', '.join(IMPLS)}")
    for c in cases:  # the arguments checked before anything trains
        for i in impls:
            case_config(c, i, epochs=args.epochs, limit=args.limit, test_limit=args.test_limit, device=args.device,
                        seed=args.seed, synthetic=args.synthetic).checked("bench")
    rows, settings = run_benchmark(cases, impls, epochs=args.epochs, limit=args.limit, test_limit=args.test_limit,
                                   device=args.device, seed=args.seed, data_root=args.data,
                                   synthetic=args.synthetic)
    table = format_markdown(rows, settings)
    print()
    print(table)
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write("\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    return 1 if any("error" in r for r in rows) else 0
