"""Data-parallel training on several processes: `oxkernels train ... --nproc N`.

`launch(cfg, nproc, ...)` starts N worker processes through torch.distributed's
elastic launcher (the machinery behind torchrun; a rendezvous on 127.0.0.1 with a
free port), and each worker runs `train.fit` with its model wrapped in
DistributedDataParallel: gloo on the CPU, NCCL on GPUs (worker i on cuda:i).
A script started by torchrun itself (`torchrun --nproc_per_node=N -m oxkernels train
...`) takes the same path: `run_train` sees torchrun's environment and joins the
group instead of launching one.

What the N processes compute together: each takes its 1/N share of every global
batch of N·batch_size samples (DeviceBatches' sharding), DDP averages the gradients,
and every rank applies the same update — one step of single-process training at
batch N·batch_size. Rank 0 alone evaluates, prints and writes outputs and checkpoints.
The fused native step is not used: it updates the parameters inside one call, with no
point at which DDP could average the gradients.
"""
from __future__ import annotations

import os
import uuid

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or our launcher) started as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def world() -> tuple[int, int]:
    """(rank, world_size) of the initialised default process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launch(cfg, nproc: int, threads: int | None = None, **fit_kwargs) -> dict:
    """Runs train.fit(cfg, **fit_kwargs) on `nproc` local processes; returns rank 0's metrics."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"nproc must be ≥ 1, got {nproc}")
    if not dist.is_available():
        raise RuntimeError("--nproc needs torch.distributed, which this torch build lacks")
    if str(cfg.device).startswith("cuda") and nproc > torch.cuda.device_count():
        raise ValueError(f"--nproc {nproc} on cuda needs {nproc} GPUs; {torch.cuda.device_count()} visible")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"oxkernels-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    results = elastic_launch(config, worker)(cfg, threads, fit_kwargs)
    return results[0]


def worker(cfg, threads, fit_kwargs) -> dict | None:
    """One rank: join the group from the launcher's environment, train, leave the group."""
    join(cfg, threads)
    try:
        from .train import fit

        return fit(cfg, **fit_kwargs)
    finally:
        leave()


def join(cfg, threads=None) -> None:
    """Initialises the default process group from torchrun's environment variables; on the
    CPU each rank gets its share of the cores unless `threads` is given."""
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    on_gpu = str(cfg.device).startswith("cuda")
    if on_gpu:
        torch.cuda.set_device(local_rank)
    else:
        import oxkernels

        n = threads or max(1, (os.cpu_count() or 1) // local_size)
        torch.set_num_threads(n)
        oxkernels.set_num_threads(n)
    dist.init_process_group("nccl" if on_gpu else "gloo")


def leave() -> None:
    if dist.is_initialized():
        dist.barrier()  # no rank tears the group down while another still talks to it
        dist.destroy_process_group()


def wrap(model, device):
    """The model in DistributedDataParallel, parameters broadcast from rank 0."""
    from torch.nn.parallel import DistributedDataParallel

    if torch.device(device).type == "cuda":
        index = torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)


def mean_over_ranks(value: float, count: int) -> float:
    """The sample-weighted mean of a per-rank mean over all ranks."""
    t = torch.tensor([value * count, float(count)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return (t[0] / t[1]).item()
