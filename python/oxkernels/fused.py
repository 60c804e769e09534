"""Whole-step fused training on the CPU: forward, loss, backward and the optimizer
update of the course MLP in one native call per step (or per epoch).

    trainer = FusedTrainer(model, optimizer)          # model: oxkernels.models.MLP, optimizer: optim.Adam/AdamW
    loss = trainer.step(x, y)                         # one step, returns the loss (float)
    losses = trainer.fit_epoch(images_u8, labels, 64, shuffle_seed=seed + epoch)

The parameters stay the model's torch Parameters, their gradients its `.grad`
tensors and the Adam state the optimizer's `state` (exp_avg, exp_avg_sq, step as
torch keeps them): the native code writes into those tensors in place. So after
any number of fused steps `model.state_dict()` and `optimizer.state_dict()` are
what the unfused path (`loss_fn(model(x), y).backward(); optimizer.step()`) gives,
and training can switch between the two at any step. The kernels are the ones
the unfused path runs (linear, cross-entropy, Adam), so the results agree bit for
bit on the same thread count.

Supported: torch.nn.Sequential / oxkernels.models.MLP / torch_reference("mlp") made
of an optional leading Flatten and Linear layers with bias (oxkernels.nn.Linear with
activation None, "relu" or "sigmoid", or torch.nn.Linear followed by ReLU / Sigmoid),
float32 on the CPU; LeNet built from oxkernels.nn.ConvReLUMaxPool2d blocks
(models.LeNet(), relu); loss "cross_entropy" (mean); one parameter group of
oxkernels.optim.Adam or AdamW (amsgrad and maximize included) or torch.optim.SGD
(momentum, dampening, nesterov, weight decay, maximize; its update is an
elementwise loop here, torch's single-tensor formula in float32). Anything else raises
a TypeError or ValueError naming the layer or argument: there is no silent fallback.

ParallelTrainer (oxkernels/parallel.py, exported here) trains M such copies at once.
"""
from __future__ import annotations

import torch

from . import _C
from ._torch._glue import increment_version

__all__ = ["FusedTrainer", "ParallelTrainer"]

_ACT_CODE = {None: 0, "none": 0, "relu": 1, "sigmoid": 2}


def _conv_block(name, module, where):
    """Checks a ConvReLUMaxPool2d block the native code can run."""
    if module.bias is None:
        raise ValueError(f"FusedTrainer: {where}: a conv block without bias is not supported")
    if module.groups != 1 or tuple(module.dilation) != (1, 1) or module.padding_mode != "zeros" or \
            isinstance(module.padding, str):
        raise ValueError(f"FusedTrainer: {where}: only groups=1, dilation=1 and numeric zero padding are supported")
    return (name, module)


def _layer_plan(model):
    """([(name, ConvReLUMaxPool2d)], [(name, Linear, activation code)]) in forward order, or a
    ValueError naming the layer."""
    from . import models, nn as oxnn

    known_order = isinstance(model, (torch.nn.Sequential, models.MLP, models.TorchMLP)) or \
        (isinstance(model, models.LeNet) and model.fused)
    convs, plan = [], []
    position = 0
    flattened = False
    for name, module in model.named_children():
        where = f"layer '{name}' ({type(module).__name__})"
        if isinstance(module, oxnn.ConvReLUMaxPool2d):
            if plan or flattened:
                raise ValueError(f"FusedTrainer: {where}: conv blocks are supported only before the Flatten")
            convs.append(_conv_block(name, module, where))
        elif isinstance(module, torch.nn.Flatten):
            if position != len(convs) or module.start_dim != 1 or module.end_dim != -1:
                raise ValueError(f"FusedTrainer: {where}: only one Flatten(1, -1), before the first Linear, "
                                 "is supported")
            flattened = True
        elif isinstance(module, torch.nn.Linear):
            if module.bias is None:
                raise ValueError(f"FusedTrainer: {where}: a Linear without bias is not supported")
            activation = getattr(module, "activation", None)
            if activation not in _ACT_CODE:
                raise ValueError(f"FusedTrainer: {where}: activation {activation!r} is not supported")
            plan.append([name, module, _ACT_CODE[activation]])
        elif isinstance(module, (torch.nn.ReLU, torch.nn.Sigmoid)):
            code = 1 if isinstance(module, torch.nn.ReLU) else 2
            if not plan or plan[-1][2] != 0:
                raise ValueError(f"FusedTrainer: {where}: an activation is supported only directly after a "
                                 "Linear without one")
            plan[-1][2] = code
        else:
            raise ValueError(f"FusedTrainer: {where} is not supported; the fused trainer handles "
                             "oxkernels.nn.ConvReLUMaxPool2d blocks (LeNet(fused=True)) followed by Flatten, "
                             "Linear, ReLU and Sigmoid (use the unfused training loop for this model)")
        position += 1
    if convs and not flattened:
        raise ValueError("FusedTrainer: conv blocks must be followed by a Flatten")
    if not plan:
        raise ValueError(f"FusedTrainer: {type(model).__name__} has no Linear layer to train")
    if not known_order:
        raise ValueError(f"FusedTrainer: cannot tell in which order {type(model).__name__}.forward runs its "
                         "layers; use torch.nn.Sequential or oxkernels.models.MLP")
    if plan[-1][2] != 0:
        raise ValueError(f"FusedTrainer: layer '{plan[-1][0]}': the last Linear gives the logits and must have "
                         "no activation")
    for name, lin in [(n, m) for n, m in convs] + [(n, m) for n, m, _ in plan]:
        for what, p in (("weight", lin.weight), ("bias", lin.bias)):
            if p.dtype != torch.float32 or p.device.type != "cpu":
                raise TypeError(f"FusedTrainer: layer '{name}' {what} is {p.dtype} on {p.device}; the fused "
                                "trainer runs float32 on the CPU")
            if not p.is_contiguous():
                raise ValueError(f"FusedTrainer: layer '{name}' {what} must be contiguous")
    return convs, [tuple(entry) for entry in plan]


def shuffle_order(n, seed):
    """The epoch's sample order (oxkernels.data.epoch_order), or 0 … n−1 when seed is None."""
    from .data import epoch_order

    order = epoch_order(n, seed)
    return torch.arange(n, dtype=torch.int64) if order is None else order


def _epoch_inputs(who, images_u8, labels, batch_size, mean, std):
    """(images, labels, batch_size, scale, shift) for a native epoch, checked; `who` names the caller."""
    from . import data

    images = torch.as_tensor(images_u8)
    labels = torch.as_tensor(labels)
    if images.dtype != torch.uint8:
        raise TypeError(f"{who}: argument 'images_u8' must be uint8, got {images.dtype}")
    if images.device.type != "cpu" or labels.device.type != "cpu":
        raise TypeError(f"{who}: images and labels must be on the CPU")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"{who}: argument 'batch_size' must be >= 1, got {batch_size}")
    channels = images.shape[1] if images.dim() == 4 else 1
    if mean is None or std is None:
        default = {1: data.MNIST, 3: data.CIFAR10}.get(channels)
        if default is None:
            raise ValueError(f"{who}: no default mean/std for {channels} channels")
        mean, std = default.mean, default.std
    scale, shift = data.normalisation(mean, std)  # DeviceBatches' constants
    return images.contiguous(), labels.contiguous(), batch_size, scale, shift


class FusedTrainer:
    """One native call per training step of an MLP with softmax cross-entropy and Adam/AdamW."""

    def __init__(self, model, optimizer, loss="cross_entropy"):
        from . import optim

        if loss != "cross_entropy":
            raise ValueError(f"FusedTrainer: argument 'loss' must be 'cross_entropy', got {loss!r}")
        if isinstance(optimizer, optim.Adam):
            self._kind = "adam"
        elif isinstance(optimizer, torch.optim.SGD):
            self._kind = "sgd"
        else:
            raise TypeError("FusedTrainer: argument 'optimizer' must be oxkernels.optim.Adam, AdamW or "
                            f"torch.optim.SGD, got {type(optimizer).__module__}.{type(optimizer).__name__}")
        if optimizer.param_groups and optimizer.param_groups[0].get("differentiable"):
            raise ValueError("FusedTrainer: differentiable optimizers are not supported")
        if len(optimizer.param_groups) != 1:
            raise ValueError("FusedTrainer: the optimizer must have one param group, got "
                             f"{len(optimizer.param_groups)}")
        self.model, self.optimizer = model, optimizer
        self._convs, self._plan = _layer_plan(model)
        self._params = [p for _, conv in self._convs for p in (conv.weight, conv.bias)] + \
            [p for _, lin, _ in self._plan for p in (lin.weight, lin.bias)]
        group_params = optimizer.param_groups[0]["params"]
        if {id(p) for p in group_params} != {id(p) for p in self._params} or len(group_params) != len(self._params):
            raise ValueError("FusedTrainer: the optimizer's param group must hold exactly the model's "
                             "weights and biases")
        if not all(p.requires_grad for p in self._params):
            raise ValueError("FusedTrainer: every parameter must require grad (frozen layers are not supported)")
        self._native = None
        self._cache_key = None
        self._loss = torch.empty((), dtype=torch.float32)
        self._sgd_first = False

    # --- the cached native network --------------------------------------------------------

    def _state_key(self, rows, sample_shape):
        """What the native object caches; any change (new grad tensor, replaced state or p.data) rebuilds it."""
        state = self.optimizer.state
        group = self.optimizer.param_groups[0]
        key = [rows, *sample_shape, bool(group.get("amsgrad")), group.get("momentum", 0) != 0]
        names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step", "momentum_buffer")
        for p in self._params:
            st = state.get(p)
            key += [p.data_ptr(), p.grad, st, *(st.get(k) for k in names)] if st else [p.data_ptr(), p.grad, st]
        return key

    def _same(self, key):
        old = self._cache_key
        return old is not None and len(old) == len(key) and all(a is b or (type(a) is int and a == b)
                                                              for a, b in zip(old, key))

    def _prepare(self, rows, sample_shape):
        """Grads, optimizer state and the native object for batches of up to `rows` rows of
        samples of `sample_shape` (used by conv models; an MLP takes its in_features)."""
        sample_shape = tuple(sample_shape) if self._convs else (self._plan[0][1].in_features,)
        if self._native is not None and self._cache_key[1:1 + len(sample_shape)] == list(sample_shape):
            rows = max(rows, self._native.rows)
        key = self._state_key(rows, sample_shape)
        if self._native is not None and self._same(key):
            return
        group = self.optimizer.param_groups[0]
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif not p.grad.is_contiguous() or p.grad.is_sparse:
                p.grad = p.grad.contiguous() if not p.grad.is_sparse else torch.zeros_like(p)
            st = self.optimizer.state.get(p)
            if self._kind == "sgd":
                # torch.optim.SGD keeps only a momentum buffer, created from the first step's gradient.
                if group["momentum"] != 0 and (not st or st.get("momentum_buffer") is None):
                    self.optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
                    self._sgd_first = True
            elif not st:
                self.optimizer._init_state(p, group)
            elif group["amsgrad"] and "max_exp_avg_sq" not in st:
                st["max_exp_avg_sq"] = torch.zeros_like(st["exp_avg_sq"])
        amsgrad = bool(group.get("amsgrad"))
        if self._convs and len(sample_shape) != 3:
            raise ValueError(f"FusedTrainer: a conv model takes (C, H, W) samples, got shape {sample_shape}")
        convs = []
        height, width = sample_shape[1:] if self._convs else (0, 0)
        for _, conv in self._convs:
            state = [self._slots(conv.weight), self._slots(conv.bias)]
            (kh, kw), (sh, sw), (ph, pw), pool = conv.kernel_size, conv.stride, conv.padding, conv.pool
            height, width = ((height + 2 * ph - kh) // sh + 1) // pool, ((width + 2 * pw - kw) // sw + 1) // pool
            shape = (rows, conv.out_channels, max(height, 0), max(width, 0))
            entry = []
            for p, st in zip((conv.weight, conv.bias), state):
                entry += [p, p.grad, st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq"), st["step"]]
            convs.append((*entry, sh, sw, ph, pw, pool, torch.empty(shape, dtype=torch.float32),
                          torch.empty(shape, dtype=torch.uint8), torch.empty(shape, dtype=torch.float32)))
        layers, h, dh = [], [], []
        for _, lin, act in self._plan:
            sw, sb = self._slots(lin.weight), self._slots(lin.bias)
            layers.append((lin.weight, lin.bias, lin.weight.grad, lin.bias.grad, sw["exp_avg"], sw["exp_avg_sq"],
                           sb["exp_avg"], sb["exp_avg_sq"], sw.get("max_exp_avg_sq"), sb.get("max_exp_avg_sq"),
                           sw["step"], sb["step"], act))
            h.append(torch.empty(rows, lin.out_features, dtype=torch.float32))
            dh.append(torch.empty(rows, lin.out_features, dtype=torch.float32))
        self._x = torch.empty(rows, *sample_shape, dtype=torch.float32)
        self._target = torch.empty(rows, dtype=torch.int64)
        one = torch.ones((), dtype=torch.float32)
        with torch.no_grad():
            self._native = _C.FusedMlp(convs, layers, h, dh, self._x, self._target, one, amsgrad)
        self._cache_key = self._state_key(rows, sample_shape)
        # The float buffers, for tests that poison them between steps.
        self._workspace = [self._x, *h, *dh, *(t for c in convs for t in (c[-3], c[-1]))]

    def _slots(self, p):
        """The tensors the native update reads for p: Adam's state, or for SGD the momentum
        buffer in the exp_avg slot (unused slots get a scratch tensor)."""
        if self._kind == "adam":
            return self.optimizer.state[p]
        buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is None:
            buf = torch.zeros_like(p)
        return {"exp_avg": buf, "exp_avg_sq": buf, "step": torch.zeros((), dtype=torch.float32)}

    def _configure(self):
        """Hands this step's hyperparameters (read from the param group, so schedulers apply) to the native object."""
        group = self.optimizer.param_groups[0]
        if self._kind == "sgd":
            self._native.set_sgd(float(group["lr"]), float(group["momentum"]), float(group["dampening"]),
                                 float(group["weight_decay"]), bool(group["nesterov"]), bool(group["maximize"]),
                                 self._sgd_first)
            return
        beta1, beta2 = group["betas"]
        self._native.set_adam(float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                              float(group["weight_decay"]), bool(group["decoupled_weight_decay"]),
                              bool(group["maximize"]))

    def _bump_versions(self):
        # In-place writes outside autograd: mark them, as optimizer.step() does.
        increment_version(self._params + [p.grad for p in self._params])

    # --- training -------------------------------------------------------------------------

    def step(self, x, y) -> float:
        """One step on the batch x (R, ...) float32, y (R,) int64 class indices; returns the mean loss."""
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("FusedTrainer.step: x and y must be torch tensors")
        if x.device.type != "cpu":
            raise TypeError(f"FusedTrainer.step: x is on {x.device}; the fused trainer runs on the CPU")
        self._prepare(len(x), x.shape[1:])
        self._configure()
        self._native.step(x.contiguous(), y, self._loss)
        self._sgd_first = False
        self._bump_versions()
        return float(self._loss)

    def fit_epoch(self, images_u8, labels, batch_size, shuffle_seed=None, mean=None, std=None):
        """One epoch natively: normalise x = (pixel/255 − mean_c)/std_c, shuffle with
        torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)) (no shuffle when
        None; oxkernels.data.DeviceBatches(seed=s) uses shuffle_seed = s + epoch), take batches of
        `batch_size` (the last may be smaller) and run a fused step on each. mean/std default to
        the MNIST constants (1 channel) or the CIFAR-10 ones (3 channels). Returns the per-step
        losses, a float32 tensor."""
        images, labels, batch_size, scale, shift = _epoch_inputs("FusedTrainer.fit_epoch", images_u8, labels,
                                                                 batch_size, mean, std)
        n = len(labels)
        order = shuffle_order(n, shuffle_seed)
        losses = torch.empty(-(-n // batch_size), dtype=torch.float32)
        self._prepare(batch_size, images.shape[1:])
        self._configure()
        self._native.epoch(images, labels, order, scale, shift, losses, batch_size)
        self._sgd_first = False
        self._bump_versions()
        return losses


from .parallel import ParallelTrainer  # noqa: E402  (it builds on FusedTrainer)
