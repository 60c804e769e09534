"""End-to-end training benchmark: torch eager vs oxkernels (and torch + CUDA graph on a GPU).

The measurement lives in oxkernels.bench (also the `oxkernels bench` command). Two ways in:

  As a script (the issue's table; appends to benchmarks/RESULTS_e2e.md):
      python benchmarks/bench_e2e.py --epochs 3 --markdown benchmarks/RESULTS_e2e.md
      python benchmarks/bench_e2e.py --epochs 1 --limit 12800 --test-limit 2000   # a few minutes on 2 cores
  Under pytest-benchmark (one epoch of the first $OXKERNELS_E2E_LIMIT samples, default 6400, per round):
      pytest benchmarks/bench_e2e.py --benchmark-only

Needs the real data ($OXKERNELS_DATA or ~/.cache/oxkernels).
"""
import os
import sys

import pytest

LIMIT = int(os.environ.get("OXKERNELS_E2E_LIMIT", "6400"))


def _devices():
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices() if "pytest" in sys.modules else [])
@pytest.mark.parametrize("impl", ["torch", "oxkernels"])
@pytest.mark.parametrize("case", ["mlp-adam-b64", "mlp-adam-b256", "lenet-adam-b64", "lenet-sgd-b64"])
def test_e2e_epoch(benchmark, case, impl, device):
    import torch

    from oxkernels import bench, data
    from oxkernels.train import TrainConfig, build, load_split, train_epoch

    cfg = TrainConfig(**bench.CASES[case], backend="oxkernels" if impl == "oxkernels" else "torch",
                      device=device, limit=LIMIT).resolved()
    try:
        train_set = load_split(cfg.dataset, True)
    except data.DatasetNotFoundError as e:
        pytest.skip(f"real data not found: {e}")
    try:
        model, loss_fn, optimizer = build(cfg)
    except (AttributeError, ImportError) as e:
        pytest.skip(f"{impl} modules not available: {e}")
    batches = data.DeviceBatches(train_set, cfg.batch_size, cfg.device, shuffle=True, seed=cfg.seed, limit=cfg.limit)
    epoch = iter(range(1000))

    def one_epoch():
        batches.set_epoch(next(epoch))
        train_epoch(model, loss_fn, optimizer, batches)

    one_epoch()  # warm-up (allocator, thread pool, lazy optimizer state)
    benchmark.group = f"e2e: {case} ({device}, {batches.num_samples} samples/epoch)"
    benchmark.extra_info.update(impl=impl, device=device, samples=batches.num_samples,
                                torch_threads=torch.get_num_threads())
    benchmark.pedantic(one_epoch, rounds=3, iterations=1)


if __name__ == "__main__":
    from oxkernels.cli import main

    main(["bench", *sys.argv[1:]])
