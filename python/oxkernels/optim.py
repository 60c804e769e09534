"""Drop-in torch optimizers whose step is one fused native kernel per param group.

    opt = oxkernels.optim.Adam(model.parameters(), lr=1e-3)    # instead of torch.optim.Adam
    opt = oxkernels.optim.AdamW(model.parameters(), lr=1e-3)   # instead of torch.optim.AdamW

Same constructor arguments and defaults as torch, the same param_groups and
state_dict layout (per param: 'step' a float32 scalar tensor, 'exp_avg',
'exp_avg_sq', 'max_exp_avg_sq' with amsgrad), so state dicts move between
torch's optimizers and these both ways. Works with torch.optim.lr_scheduler
and torch.amp.GradScaler (the grad scale and found_inf are handled inside the
kernel, as torch's fused=True does).

What differs from torch:
  - foreach and fused are accepted (and kept in the param groups, where they
    decide where a loaded 'step' lives, as in torch) but the step is always our
    fused kernel; differentiable=True is refused.
  - On CUDA, bfloat16/float16 params keep float32 exp_avg / exp_avg_sq (torch
    keeps them in the param dtype); loading a state dict converts them.
  - Params must be dense (row-major, channels_last or any other order of
    their dimensions without gaps), real (no complex), with dense grads laid out
    like their params (autograd's are); CPU params float32/float64, CUDA params
    float32/bfloat16/float16. A group may mix dtypes (one native step per
    dtype), not devices.
  - Results agree with torch to float32 rounding, not bit for bit (the CPU
    kernel multiplies √v̂ by 1/√(1−β₂ᵗ) where torch divides).
  - step() is not traced by torch.compile (it graph-breaks and runs eagerly);
    oxkernels.ops.adam_step is a custom op that is.
How a step stays cheap: each param group is cached as a native AdamGroup
(Views of params and state, validated once); a step reads each param's .grad,
checks that the param and its state dict entries are the cached ones (else
the group is rebuilt), and runs one native call for the whole group.
This module imports torch; `import oxkernels` does not.
"""
from __future__ import annotations

import torch
from torch.optim import optimizer as _torch_optimizer
from torch.optim.optimizer import Optimizer

from . import _C, _torch
from ._torch._glue import cuda_stream, increment_version

__all__ = ["Adam", "AdamW"]

_torch.load()

_LOW_PRECISION = (torch.bfloat16, torch.float16)
# torch internals the lean step() reads; when a torch version lacks one, step() takes
# torch's own hooked path (always correct, a few µs slower).
_global_optimizer_pre_hooks = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
_global_optimizer_post_hooks = getattr(_torch_optimizer, "_global_optimizer_post_hooks", None)
_profiler_enabled = getattr(torch._C._autograd, "_profiler_enabled", None)
_LEAN_STEP = None not in (_global_optimizer_pre_hooks, _global_optimizer_post_hooks, _profiler_enabled)
_is_compiling = torch.compiler.is_compiling
_STALE = _C.ADAM_STALE
# In-place updates bump the params' version counters, as torch's own in-place ops do.


def _scalar(x, name):
    """A hyperparameter that may be a 1-element tensor, as a float."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        return float(x)
    return x


class _GroupCache:
    """The native AdamGroup of one param group, and what it was built from."""

    __slots__ = ("native", "params", "state", "amsgrad", "steps_on_device", "device_is_cuda", "device")

    def __init__(self, native, params, state, amsgrad, steps_on_device):
        self.native = native
        self.params = params
        self.state = state  # the optimizer's state mapping it was built from
        self.amsgrad = amsgrad
        self.steps_on_device = steps_on_device
        self.device = params[0].device if params else None
        self.device_is_cuda = bool(params) and params[0].is_cuda


class Adam(Optimizer):
    """Adam (Kingma & Ba) with torch.optim.Adam's arguments; decoupled_weight_decay=True is AdamW.

    Args: params, lr (float or 1-element tensor), betas, eps, weight_decay,
    amsgrad, and keyword-only foreach (ignored: always fused), maximize,
    capturable (CUDA: step and lr stay on the device, so step() can be captured
    in a CUDA graph), differentiable (must be False), fused (ignored: always
    fused), decoupled_weight_decay.
    """

    # torch.amp.GradScaler hands us grad_scale / found_inf instead of unscaling itself.
    _step_supports_amp_scaling = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        b1, b2 = _scalar(betas[0], "betas[0]"), _scalar(betas[1], "betas[1]")
        if not 0.0 <= b1 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {b1}")
        if not 0.0 <= b2 < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {b2}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if differentiable:
            raise ValueError(
                f"oxkernels.optim.{type(self).__name__} does not support differentiable=True: its step is a "
                "fused native kernel outside autograd; use torch.optim.Adam for differentiable steps")
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        defaults = dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        self._caches = []
        super().__init__(params, defaults)

    # --- torch.optim.Optimizer plumbing -------------------------------------------------

    def __setstate__(self, state):
        super().__setstate__(state)
        self._caches = []
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("fused", None)
        for p, st in self.state.items():
            if "step" in st and not torch.is_tensor(st["step"]):
                st["step"] = torch.tensor(float(st["step"]), dtype=torch.float32)

    def add_param_group(self, param_group):
        for p in param_group["params"] if isinstance(param_group.get("params"), (list, tuple)) else []:
            if isinstance(p, torch.Tensor) and torch.is_complex(p):
                raise TypeError(f"oxkernels.optim.{type(self).__name__} does not support complex parameters "
                                f"(got {p.dtype}); use torch.optim.{type(self).__name__}")
        super().add_param_group(param_group)
        self._caches = []

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._caches = []
        # torch casts loaded state to the param dtype; we keep low-precision params' state in float32.
        for p, st in self.state.items():
            if p.dtype in _LOW_PRECISION:
                for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                    if key in st:
                        st[key] = st[key].float()

    # --- the step ------------------------------------------------------------------------

    def step(self, closure=None):
        """One Adam step over every param with a grad (closure: re-evaluates the loss, as in torch)."""
        if (not _LEAN_STEP or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks or _profiler_enabled()):
            return self._hooked_step(closure)
        return self._step(closure)

    # We run torch's hooks and profiler range ourselves (above) only when someone
    # listens: the wrapper torch would put around step() costs more than a small step.
    step.hooked = True

    def _hooked_step(self, closure=None):
        return Optimizer.profile_hook_step(type(self)._step)(self, closure)

    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        caches = self._caches
        for i, group in enumerate(self.param_groups):
            cache = caches[i] if i < len(caches) else None
            # A replaced list or state mapping; the native group checks their contents (and size).
            if cache is None or cache.params is not group["params"] or cache.state is not self.state:
                cache = self._build(i, group)
            if self._step_group(group, cache, grad_scale, found_inf) == _STALE:
                cache = self._build(i, group)
                if self._step_group(group, cache, grad_scale, found_inf) == _STALE:
                    raise RuntimeError("oxkernels.optim.Adam: the param group changed during step()")
        return loss

    def _step_group(self, group, cache, grad_scale, found_inf):
        lr = group["lr"]
        beta1, beta2 = group["betas"]
        lr_device = gs_device = fi_device = None
        gs_host = None
        stream = 0
        if cache.device_is_cuda:
            if not _is_compiling():
                self._accelerator_graph_capture_health_check()
            stream = cuda_stream(cache.params[0])
        if isinstance(lr, torch.Tensor):
            if cache.device_is_cuda and cache.steps_on_device and lr.is_cuda:
                lr_device = lr if lr.dtype == torch.float32 else lr.float()
                lr = 0.0
            else:
                lr = float(lr)
        if isinstance(beta1, torch.Tensor) or isinstance(beta2, torch.Tensor):
            beta1, beta2 = float(beta1), float(beta2)
        if found_inf is not None:
            if cache.device_is_cuda and cache.steps_on_device:
                fi_device = found_inf.to(device=cache.device, dtype=torch.float32)
            elif float(found_inf) != 0.0:
                return 0  # inf/NaN grads: skip, as torch's fused step does
        if grad_scale is not None:
            if cache.device_is_cuda:
                gs_device = grad_scale.to(device=cache.device, dtype=torch.float32)
            else:
                gs_host = float(grad_scale)
        return cache.native.step(lr, beta1, beta2, group["eps"], group["weight_decay"],
                                 group["decoupled_weight_decay"], group["amsgrad"], group["maximize"],
                                 lr_device, gs_host, gs_device, fi_device, stream)

    def _build(self, index, group):
        """Create missing state (torch's layout and placement rules) and cache the native group."""
        params = group["params"]
        amsgrad = group["amsgrad"]
        states = []
        for p in params:
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
                if torch.is_complex(p):
                    raise TypeError(f"oxkernels.optim.{type(self).__name__} does not support complex parameters "
                                    f"(got {p.dtype})")
                if len(self.state.get(p, ())) == 0:
                    self._init_state(p, group)
            st = self.state.get(p)
            if st:
                if amsgrad and "max_exp_avg_sq" not in st:
                    st["max_exp_avg_sq"] = torch.zeros_like(st["exp_avg_sq"])
                if st["step"].is_cuda and st["step"].dtype != torch.float32:
                    st["step"] = st["step"].float()
                for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                    if key not in st:
                        continue
                    if p.dtype in _LOW_PRECISION and st[key].dtype != torch.float32:
                        st[key] = st[key].float()
                    if st[key].shape == p.shape and st[key].stride() != p.stride():
                        # e.g. loaded from a row-major checkpoint into a channels_last model: the
                        # kernel walks param and state as flat arrays, so they share a layout
                        st[key] = torch.empty_like(p, dtype=st[key].dtype).copy_(st[key])
                states.append(st)
            else:
                states.append(None)
        live = [st for st in states if st is not None]
        steps_on_device = any(st["step"].is_cuda for st in live)
        if steps_on_device:  # all of them then: a step skipped for inf grads must leave every count
            for p, st in zip(params, states):
                if st is not None and not st["step"].is_cuda:
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
        cache = _GroupCache(_C.AdamGroup(params, states, amsgrad, increment_version, self.state), params,
                            self.state, amsgrad, steps_on_device)
        while len(self._caches) <= index:
            self._caches.append(None)
        self._caches[index] = cache
        return cache

    def _init_state(self, p, group):
        st = {}
        # torch's placement: on the param's device (float32) when capturable or fused, else a CPU scalar.
        if group["capturable"] or group["fused"]:
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        else:
            dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            st["step"] = torch.tensor(0.0, dtype=dtype)
        state_dtype = torch.float32 if p.dtype in _LOW_PRECISION else p.dtype
        st["exp_avg"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            st["max_exp_avg_sq"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
        self.state[p] = st


class AdamW(Adam):
    """AdamW (decoupled weight decay, Loshchilov & Hutter) with torch.optim.AdamW's arguments and defaults."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
