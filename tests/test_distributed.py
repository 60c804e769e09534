"""oxkernels inside torch.distributed: DistributedDataParallel with our modules
and optimizer over 2 CPU processes (gloo on 127.0.0.1), and
ZeroRedundancyOptimizer(optimizer_class=oxkernels.optim.Adam)."""
import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

WORLD = 2
STEPS = 5
BATCH = 16  # per process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(STEPS, WORLD * BATCH, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (STEPS, WORLD * BATCH), generator=g)
    return x, y


def make_model():
    from oxkernels.models import MLP

    torch.manual_seed(0)
    return MLP()


def single_process_params(use_zero=False):
    import oxkernels.nn as oxnn
    import oxkernels.optim as oxoptim

    model = make_model()
    opt = (torch.optim.Adam if use_zero else oxoptim.Adam)(model.parameters(), lr=1e-2)
    loss_fn = oxnn.CrossEntropyLoss()
    x, y = make_data()
    for s in range(STEPS):
        opt.zero_grad()
        loss_fn(model(x[s]), y[s]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(rank, port, result_dir, use_zero):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        import oxkernels.nn as oxnn
        import oxkernels.optim as oxoptim
        from torch.distributed.optim import ZeroRedundancyOptimizer
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(make_model())
        if use_zero:
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=oxoptim.Adam, lr=1e-2)
        else:
            opt = oxoptim.Adam(model.parameters(), lr=1e-2)
        loss_fn = oxnn.CrossEntropyLoss()
        x, y = make_data()
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        for s in range(STEPS):
            opt.zero_grad()
            # DDP averages gradients over ranks: the mean loss of the full batch.
            loss_fn(model(x[s, mine]), y[s, mine]).backward()
            opt.step()
        if rank == 0:
            torch.save(model.module.state_dict(), os.path.join(result_dir, "params.pt"))
        dist.barrier()  # both ranks done with every collective before the group is torn down
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("use_zero", [False, True], ids=["ddp-adam", "zero-redundancy"])
def test_two_processes_match_one_on_the_concatenated_batch(tmp_path, use_zero):
    mp.start_processes(worker, args=(free_port(), str(tmp_path), use_zero), nprocs=WORLD, join=True,
                       start_method="spawn")
    got = torch.load(tmp_path / "params.pt")
    # ZeRO is checked against torch's own Adam; plain DDP against ours on one process.
    want = single_process_params(use_zero)
    for name, ref in want.items():
        err = (got[name] - ref).norm() / ref.norm()
        assert err < 1e-5, f"{name}: relative error {err:.2e}"
