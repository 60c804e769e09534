"""Fused training (oxkernels.fused.FusedTrainer.fit_epoch: the whole epoch in one native
call) against the unfused oxkernels loop and torch eager, on the CPU.

One epoch of the first $OXKERNELS_FUSED_LIMIT MNIST training images (default 12800;
60000 is the full epoch) per round, MLP (relu) + Adam, batch 64 and 256, and of the first
$OXKERNELS_FUSED_LENET_LIMIT CIFAR-10 images (default 3200) for LeNet + Adam at batch 64:
    OXKERNELS_DATA=/path/to/data pytest benchmarks/bench_fused.py --benchmark-only
impl "oxkernels-fused" is FusedTrainer.fit_epoch (normalisation, shuffle and batching
included), "oxkernels" the unfused loop (oxkernels.train.train_epoch on DeviceBatches),
"torch" the same loop with torch.nn / torch.optim.Adam. All in this process, with
torch's and oxkernels' default thread counts.
"""
import os

import pytest

LIMIT = int(os.environ.get("OXKERNELS_FUSED_LIMIT", "12800"))
LENET_LIMIT = int(os.environ.get("OXKERNELS_FUSED_LENET_LIMIT", "3200"))


@pytest.mark.parametrize("impl", ["torch", "oxkernels", "oxkernels-fused"])
@pytest.mark.parametrize("batch_size", [64, 256])
def test_mlp_epoch(benchmark, impl, batch_size):
    _epoch(benchmark, impl, batch_size, "mnist", "mlp", LIMIT,
           3 * 2 * LIMIT * (784 * 64 + 64 * 32 + 32 * 10))  # forward + two backward products per layer


@pytest.mark.parametrize("impl", ["torch", "oxkernels", "oxkernels-fused"])
def test_lenet_epoch(benchmark, impl):
    _epoch(benchmark, impl, 64, "cifar10", "lenet", LENET_LIMIT, None)


def _epoch(benchmark, impl, batch_size, dataset, model_name, limit, flops):
    import torch

    from oxkernels import data
    from oxkernels.fused import FusedTrainer
    from oxkernels.train import TrainConfig, build, load_split, train_epoch

    cfg = TrainConfig(dataset=dataset, model=model_name, optimizer="adam", lr=1e-3, batch_size=batch_size,
                      backend="torch" if impl == "torch" else "oxkernels", device="cpu", limit=limit).resolved()
    try:
        train_set = load_split(dataset, True)
    except data.DatasetNotFoundError as e:
        pytest.skip(f"real data not found: {e}")
    model, loss_fn, optimizer = build(cfg)
    epochs = iter(range(1000))
    if impl == "oxkernels-fused":
        trainer = FusedTrainer(model, optimizer)
        images, labels = train_set.images_np[:limit], train_set.labels_np[:limit]

        def one_epoch():
            trainer.fit_epoch(images, labels, batch_size, shuffle_seed=cfg.seed + next(epochs))
    else:
        batches = data.DeviceBatches(train_set, batch_size, "cpu", shuffle=True, seed=cfg.seed, limit=limit)

        def one_epoch():
            batches.set_epoch(next(epochs))
            train_epoch(model, loss_fn, optimizer, batches)

    one_epoch()  # warm-up
    benchmark.group = f"fused: {dataset} {model_name} epoch, batch {batch_size} (cpu, {limit} samples)"
    benchmark.extra_info.update(impl=impl, device="cpu", samples=limit, steps=-(-limit // batch_size),
                                torch_threads=torch.get_num_threads())
    if flops:
        benchmark.extra_info["flops"] = flops
    benchmark.pedantic(one_epoch, rounds=3, iterations=1)
