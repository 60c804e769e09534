"""Fused training (oxkernels.fused.FusedTrainer.fit_epoch: the whole epoch in one native
call) against the unfused oxkernels loop and torch eager, on the CPU.

One epoch of the first $OXKERNELS_FUSED_LIMIT MNIST training images (default 12800;
60000 is the full epoch) per round, MLP (relu) + Adam, batch 64 and 256:
    OXKERNELS_DATA=/path/to/data pytest benchmarks/bench_fused.py --benchmark-only
impl "oxkernels-fused" is FusedTrainer.fit_epoch (normalisation, shuffle and batching
included), "oxkernels" the unfused loop (oxkernels.train.train_epoch on DeviceBatches),
"torch" the same loop with torch.nn / torch.optim.Adam. All in this process, with
torch's and oxkernels' default thread counts.
"""
import os

import pytest

LIMIT = int(os.environ.get("OXKERNELS_FUSED_LIMIT", "12800"))


@pytest.mark.parametrize("impl", ["torch", "oxkernels", "oxkernels-fused"])
@pytest.mark.parametrize("batch_size", [64, 256])
def test_mlp_epoch(benchmark, impl, batch_size):
    import torch

    from oxkernels import data
    from oxkernels.fused import FusedTrainer
    from oxkernels.train import TrainConfig, build, load_split, train_epoch

    cfg = TrainConfig(dataset="mnist", model="mlp", optimizer="adam", lr=1e-3, batch_size=batch_size,
                      backend="torch" if impl == "torch" else "oxkernels", device="cpu", limit=LIMIT).resolved()
    try:
        train_set = load_split("mnist", True)
    except data.DatasetNotFoundError as e:
        pytest.skip(f"real data not found: {e}")
    model, loss_fn, optimizer = build(cfg)
    epochs = iter(range(1000))
    if impl == "oxkernels-fused":
        trainer = FusedTrainer(model, optimizer)
        images, labels = train_set.images_np[:LIMIT], train_set.labels_np[:LIMIT]

        def one_epoch():
            trainer.fit_epoch(images, labels, batch_size, shuffle_seed=cfg.seed + next(epochs))
    else:
        batches = data.DeviceBatches(train_set, batch_size, "cpu", shuffle=True, seed=cfg.seed, limit=LIMIT)

        def one_epoch():
            batches.set_epoch(next(epochs))
            train_epoch(model, loss_fn, optimizer, batches)

    one_epoch()  # warm-up
    benchmark.group = f"fused: mnist mlp epoch, batch {batch_size} (cpu, {LIMIT} samples)"
    steps = -(-LIMIT // batch_size)
    flops = 3 * 2 * LIMIT * (784 * 64 + 64 * 32 + 32 * 10)  # forward + two backward products per layer
    benchmark.extra_info.update(impl=impl, device="cpu", samples=LIMIT, steps=steps, flops=flops,
                                torch_threads=torch.get_num_threads())
    benchmark.pedantic(one_epoch, rounds=3, iterations=1)
