"""M course MLPs (different seeds and learning rates, Adam) trained for an epoch on MNIST at
batch 64: oxkernels.fused.ParallelTrainer.fit_epoch (all M in one native call, one copy per
thread) against M FusedTrainer.fit_epoch runs one after another (each using every thread),
and against one model alone, on the CPU:
    OXKERNELS_DATA=/path/to/data pytest benchmarks/bench_parallel.py --benchmark-only
Each round is an epoch of the first $OXKERNELS_PARALLEL_LIMIT training images (default
6400 = 100 steps; 60000 is the full epoch, so a full epoch takes about 60000 / LIMIT times
the figure). Every copy has its own shuffle seed, as `oxkernels tune --parallel --seeds`
gives them. impl "oxkernels" is ParallelTrainer, "sequential" the M FusedTrainers (at
M = 1: one model alone).

    OXKERNELS_DATA=/path/to/data python benchmarks/bench_parallel.py [--rounds 5]
runs the same cases interleaved round by round (parallel and sequential in turn), which is
fairer on a shared machine, and prints medians, the time per model, the time against one
model alone (sequential at M = 1), and the figure scaled to a full 60000-image epoch.
"""
import os

import pytest

LIMIT = int(os.environ.get("OXKERNELS_PARALLEL_LIMIT", "6400"))
BATCH = 64


def _setup(impl, copies, images, labels):
    """A function that trains `copies` MLPs (seed i, Adam lr 1e-3 · (1 + i mod 8)) for one epoch per call."""
    import torch

    from oxkernels import models, optim
    from oxkernels.fused import FusedTrainer, ParallelTrainer

    pairs = []
    for i in range(copies):
        torch.manual_seed(i)
        model = models.MLP()
        pairs.append((model, optim.Adam(model.parameters(), lr=1e-3 * (1 + i % 8))))
    epochs = iter(range(10**6))
    if impl == "oxkernels":
        trainer = ParallelTrainer(*zip(*pairs))

        def one_epoch():
            e = next(epochs)
            trainer.fit_epoch(images, labels, BATCH, shuffle_seed=[i + e for i in range(copies)])
    else:
        trainers = [FusedTrainer(m, o) for m, o in pairs]

        def one_epoch():
            e = next(epochs)
            for i, t in enumerate(trainers):
                t.fit_epoch(images, labels, BATCH, shuffle_seed=i + e)

    one_epoch()  # warm-up: buffers, optimizer state
    return one_epoch


@pytest.mark.parametrize("impl", ["oxkernels", "sequential"])
@pytest.mark.parametrize("copies", [1, 8, 64])
def test_parallel_mlp_epoch_cpu(benchmark, impl, copies):
    import oxkernels
    from oxkernels import data

    try:
        train_set = data.load_dataset("mnist", train=True)
    except data.DatasetNotFoundError as e:
        pytest.skip(f"real data not found: {e}")
    images, labels = train_set.images_np[:LIMIT], train_set.labels_np[:LIMIT]
    one_epoch = _setup(impl, copies, images, labels)
    benchmark.group = f"parallel: {copies} MLP(s), one epoch each, batch {BATCH} (cpu, {LIMIT} samples)"
    benchmark.extra_info.update(impl=impl, device="cpu", samples=LIMIT, copies=copies,
                                steps=copies * -(-LIMIT // BATCH), threads=oxkernels.get_num_threads(),
                                flops=copies * 3 * 2 * LIMIT * (784 * 64 + 64 * 32 + 32 * 10))
    benchmark.pedantic(one_epoch, rounds=3 if copies < 64 else 2, iterations=1)


def main(argv=None):
    import argparse
    import statistics
    import time

    import oxkernels
    from oxkernels import data

    p = argparse.ArgumentParser(description="ParallelTrainer vs sequential FusedTrainers, interleaved rounds")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--copies", default="1,8,64")
    args = p.parse_args(argv)
    train_set = data.load_dataset("mnist", train=True)
    images, labels = train_set.images_np[:LIMIT], train_set.labels_np[:LIMIT]
    print(f"MNIST, batch {BATCH}, {LIMIT} samples per epoch, {oxkernels.get_num_threads()} oxkernels threads, "
          f"{args.rounds} interleaved rounds, medians")
    print("| M | impl | median | per model | vs one model | full epoch (×60000/LIMIT) | sequential / parallel |")
    print("|---|---|---|---|---|---|---|")
    one = None
    for copies in (int(c) for c in args.copies.split(",")):
        impls = ["oxkernels", "sequential"]
        runs = {impl: _setup(impl, copies, images, labels) for impl in impls}
        times = {impl: [] for impl in impls}
        for _ in range(args.rounds):
            for impl in impls:
                start = time.perf_counter()
                runs[impl]()
                times[impl].append(time.perf_counter() - start)
        med = {impl: statistics.median(t) for impl, t in times.items()}
        if copies == 1:
            one = med["sequential"]
        for impl in impls:
            ratio = f"{med[impl] / med['oxkernels']:.2f}×" if impl != "oxkernels" else ""
            vs_one = f"{med[impl] / one:.1f}×" if one else ""
            print(f"| {copies} | {'parallel' if impl == 'oxkernels' else impl} | {med[impl] * 1e3:.1f} ms | "
                  f"{med[impl] / copies * 1e3:.2f} ms | {vs_one} | {med[impl] * 60000 / LIMIT:.2f} s | {ratio} |",
                  flush=True)


if __name__ == "__main__":
    main()
