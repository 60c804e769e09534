"""Many copies of a course network trained at once on the CPU, one native call per step
(or per epoch) for all of them: a hyperparameter search over learning rates and seeds.

    trainer = ParallelTrainer(models, optimizers)     # M copies, same architecture and optimizer class
    losses = trainer.step(x, y)                       # (M,) float32: every copy steps on the batch
    losses = trainer.fit_epoch(images_u8, labels, 64, shuffle_seed=[s + epoch for s in seeds])  # (M, steps)

The copies may differ in their initial weights, learning rate, betas, eps, weight decay,
momentum (any hyperparameter of the param group), but not in layer shapes or optimizer
class. Each copy is a FusedTrainer underneath: its parameters, .grad and optimizer state
are its own torch tensors, written in place, so after any number of parallel steps every
copy holds exactly the bits that training it alone with FusedTrainer gives (same batches,
same shuffle seed, any thread count): see fused_run_jobs in csrc/fused.h for why.

Threads: the copies are spread over oxkernels' threads, one copy per thread at a time,
each running its kernels single-threaded; these networks are too small for intra-op
threading to pay. With one copy (or one thread) the copy runs alone with every thread.

Data order: fit_epoch's shuffle_seed is None (no shuffle), one int (every copy sees the
same order) or a list of M ints / None (copy i sees torch.randperm seeded by the i-th;
copies with equal seeds share one permutation). `oxkernels tune --parallel` gives copy i
the seed its solo run would use (cfg.seed + epoch), so each copy's result is its solo run's.
step() takes one batch for every copy, or a list of M batches.

CPU only: a model on CUDA is refused (a CUDA ParallelTrainer does not exist yet).
"""
from __future__ import annotations

import torch

from . import _C
from .fused import FusedTrainer, _epoch_inputs, shuffle_order

__all__ = ["ParallelTrainer"]


def _describe_layers(trainer):
    """One entry per trained layer, everything that must match between copies."""
    out = []
    for name, conv in trainer._convs:
        out.append((name, f"ConvReLUMaxPool2d({conv.in_channels}, {conv.out_channels}, kernel {conv.kernel_size}, "
                          f"stride {conv.stride}, padding {conv.padding}, pool {conv.pool})"))
    for name, lin, act in trainer._plan:
        activation = {0: "none", 1: "relu", 2: "sigmoid"}[act]
        out.append((name, f"Linear({lin.in_features}, {lin.out_features}, activation {activation})"))
    return out


class ParallelTrainer:
    """M FusedTrainers stepped together by one native call (see the module docstring)."""

    def __init__(self, models, optimizers, loss="cross_entropy"):
        models, optimizers = list(models), list(optimizers)
        if not models:
            raise ValueError("ParallelTrainer: argument 'models' is empty")
        if len(optimizers) != len(models):
            raise ValueError(f"ParallelTrainer: {len(models)} models but {len(optimizers)} optimizers")
        trainers = []
        for i, (model, optimizer) in enumerate(zip(models, optimizers)):
            for name, p in model.named_parameters():
                if p.device.type != "cpu":
                    raise TypeError(f"ParallelTrainer: model {i}: parameter '{name}' is on {p.device}; "
                                    "ParallelTrainer runs on the CPU only for now")
            if type(optimizer) is not type(optimizers[0]):
                raise TypeError(f"ParallelTrainer: model {i}: optimizer is {_qualname(optimizer)} but model 0's "
                                f"is {_qualname(optimizers[0])}; all copies need the same optimizer class")
            try:
                trainers.append(FusedTrainer(model, optimizer, loss))
            except (TypeError, ValueError) as e:
                raise type(e)(f"ParallelTrainer: model {i}: {e}") from e
        reference = _describe_layers(trainers[0])
        for i, trainer in enumerate(trainers[1:], 1):
            layers = _describe_layers(trainer)
            if len(layers) != len(reference):
                raise ValueError(f"ParallelTrainer: model {i} has {len(layers)} trained layers, model 0 has "
                                 f"{len(reference)}; all copies need the same architecture")
            for (name, mine), (name0, theirs) in zip(layers, reference):
                if mine != theirs:
                    raise ValueError(f"ParallelTrainer: model {i}: layer '{name}' is {mine} but model 0's "
                                     f"layer '{name0}' is {theirs}; all copies need the same architecture")
        self.trainers = trainers
        self.models, self.optimizers = models, optimizers
        self._natives = None
        self._check_independent()

    def __len__(self):
        return len(self.trainers)

    def _check_independent(self):
        """Copies run concurrently, so no two may write the same memory (one model passed twice,
        shared Parameters or optimizer state): refused, naming both copies."""
        owner = {}
        for i, trainer in enumerate(self.trainers):
            tensors = list(trainer._params) + [p.grad for p in trainer._params if p.grad is not None]
            for p in trainer._params:
                tensors += [v for v in trainer.optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)]
            for t in tensors:
                ptr = t.untyped_storage().data_ptr()
                if t.numel() and owner.setdefault(ptr, i) != i:
                    raise ValueError(f"ParallelTrainer: models {owner[ptr]} and {i} share a parameter, gradient or "
                                     "optimizer-state tensor; every copy needs its own (copy.deepcopy the model "
                                     "and build one optimizer per copy)")

    def _prepare(self, rows, sample_shapes):
        """Every copy's native object (rebuilt where its cache is stale) with this step's hyperparameters."""
        natives = []
        for i, (trainer, shape) in enumerate(zip(self.trainers, sample_shapes)):
            try:
                trainer._prepare(rows[i], shape)
                trainer._configure()
            except (TypeError, ValueError) as e:
                raise type(e)(f"ParallelTrainer: model {i}: {e}") from e
            natives.append(trainer._native)
        if self._natives is None or any(a is not b for a, b in zip(natives, self._natives)):
            self._check_independent()  # new grads or state were bound
        self._natives = natives
        return natives

    def _finish(self):
        for trainer in self.trainers:
            trainer._sgd_first = False
            trainer._bump_versions()

    def _per_copy(self, value, what):
        m = len(self.trainers)
        values = list(value) if isinstance(value, (list, tuple)) else [value] * m
        if len(values) != m:
            raise ValueError(f"ParallelTrainer.step: argument '{what}' holds {len(values)} batches for {m} models")
        for i, v in enumerate(values):
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"ParallelTrainer.step: argument '{what}' (model {i}) must be a torch tensor, "
                                f"got {type(v).__name__}")
            if v.device.type != "cpu":
                raise TypeError(f"ParallelTrainer.step: argument '{what}' (model {i}) is on {v.device}; "
                                "ParallelTrainer runs on the CPU only for now")
        return values

    def step(self, x, y):
        """One step of every copy: x (R, ...) float32 and y (R,) int64 shared by all, or lists of M
        such batches (copy i trains on x[i], y[i]). Returns the M mean losses, a float32 tensor."""
        xs, ys = self._per_copy(x, "x"), self._per_copy(y, "y")
        xs = [v.contiguous() for v in xs]
        natives = self._prepare([len(v) for v in xs], [v.shape[1:] for v in xs])
        losses = torch.empty(len(natives), dtype=torch.float32)
        _C.fused_parallel_step(natives, xs, ys, losses)
        self._finish()
        return losses

    def fit_epoch(self, images_u8, labels, batch_size, shuffle_seed=None, mean=None, std=None):
        """One epoch of every copy on the same data, natively (FusedTrainer.fit_epoch for each,
        concurrently). shuffle_seed: None, an int shared by all copies, or a list of M (int or
        None), copy i's order being torch.randperm seeded by shuffle_seed[i]. Returns the
        per-step losses, a float32 tensor (M, steps)."""
        who = "ParallelTrainer.fit_epoch"
        images, labels, batch_size, scale, shift = _epoch_inputs(who, images_u8, labels, batch_size, mean, std)
        m, n = len(self.trainers), len(labels)
        seeds = list(shuffle_seed) if isinstance(shuffle_seed, (list, tuple)) else [shuffle_seed] * m
        if len(seeds) != m:
            raise ValueError(f"{who}: argument 'shuffle_seed' holds {len(seeds)} seeds for {m} models")
        orders = {}
        for seed in seeds:
            if seed not in orders:
                orders[seed] = shuffle_order(n, seed)
        losses = torch.empty(m, -(-n // batch_size), dtype=torch.float32)
        natives = self._prepare([batch_size] * m, [images.shape[1:]] * m)
        _C.fused_parallel_epoch(natives, images, labels, [orders[s] for s in seeds], scale, shift, losses,
                                batch_size)
        self._finish()
        return losses


def _qualname(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
