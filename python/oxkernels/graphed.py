"""The whole training step in one CUDA graph: forward, loss, backward and the optimizer
update of any model built from oxkernels ops, captured once and replayed per batch.

    trainer = CudaGraphTrainer(model, optimizer, loss_fn)   # CUDA model; Adam/AdamW(capturable=True) or SGD
    loss = trainer.step(x, y)                               # a 0-d CUDA tensor; no host synchronisation

At these model sizes an eager step is launch-bound (dozens of kernel launches and their
Python dispatch); a replay is one launch. The graph runs the same kernels on the same
tensors as the eager step, so the parameters, their .grad and the optimizer state after
any number of graph steps are what the eager loop gives, and training can switch between
the two at any step.

How: the first step on a batch of a new size runs eagerly (so a fresh optimizer has created
its state before anything is captured). Then one warm-up step runs on a side stream and everything it
changed is restored, and the step is captured with static input buffers. Before each replay
the trainer checks that what the graph baked in still holds — the same .grad and state
tensors, the same hyperparameters — and recaptures when not (e.g. after a scheduler changed
the learning rate, or after optimizer.load_state_dict). Batches of another size (the short
last batch of an epoch) run eagerly; each size seen twice gets its own graph, up to four.
"""
from __future__ import annotations

import warnings

import torch

__all__ = ["CudaGraphTrainer"]

_MAX_GRAPHS = 4


class _Graph:
    """One captured step for batches of one shape: its static inputs, the loss it writes, the
    .grad tensors it writes, and the binding (see _binding) it was captured under."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.graph = torch.cuda.CUDAGraph()
        self.loss = self.grads = self.bound = None


class CudaGraphTrainer:
    """Replays forward + loss + backward + optimizer.step() as one CUDA graph per batch shape."""

    def __init__(self, model, optimizer, loss_fn, strict=True):
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("CudaGraphTrainer: the model has no trainable parameter")
        for name, p in model.named_parameters():
            if not p.is_cuda:
                raise TypeError(f"CudaGraphTrainer: parameter '{name}' is on {p.device}; a CUDA graph needs a "
                                "CUDA model (on the CPU use oxkernels.fused.FusedTrainer)")
        for i, group in enumerate(optimizer.param_groups):
            if "capturable" in group and not group["capturable"] and _has_step_counter(optimizer):
                raise ValueError(f"CudaGraphTrainer: param group {i} of {type(optimizer).__name__} needs "
                                 "capturable=True (its step count and bias corrections must stay on the GPU)")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.strict = strict  # False: a failed capture warns once and the steps run eagerly
        self.disabled_reason = None
        self._params = params
        self._graphs: dict = {}
        self._seen: set = set()

    # ------------------------------------------------------------------ stepping

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step on (x, y); returns the mean loss as a 0-d CUDA tensor."""
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype, x.device)
        graph = self._graphs.get(key)
        if graph is not None and graph.bound != self._binding():
            del self._graphs[key]  # something the graph baked in changed: capture again
            graph = None
        if graph is None:
            if key not in self._seen or len(self._graphs) >= _MAX_GRAPHS or self.disabled_reason:
                self._seen.add(key)
                return self._eager_step(x, y)
            try:
                graph = self._capture(key, x, y)
            except RuntimeError as e:  # e.g. an op that synchronises: nothing ran, the state is intact
                if self.strict:
                    raise
                self.disabled_reason = str(e)
                warnings.warn(f"CudaGraphTrainer: capturing the step failed ({e}); running it eagerly")
                return self._eager_step(x, y)
        self._restore_grads(graph)
        graph.x.copy_(x)
        graph.y.copy_(y)
        graph.graph.replay()
        return graph.loss.detach().clone()

    def _eager_step(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    # ------------------------------------------------------------------ capture

    def _capture(self, key, x, y) -> _Graph:
        static_x, static_y = x.clone(), y.clone()
        saved = self._snapshot()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up: lets every lazily created buffer exist before capture
            self._eager_step(static_x, static_y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self._restore(saved)
        self.optimizer.zero_grad(set_to_none=True)  # backward inside the graph creates the .grad it writes
        graph = _Graph(static_x, static_y)
        with torch.cuda.graph(graph.graph):
            graph.loss = self.loss_fn(self.model(static_x), static_y)
            graph.loss.backward()
            self.optimizer.step()
        # Capture only recorded the step: the parameters and state are still as before it.
        graph.grads = [p.grad for p in self._params]
        graph.bound = self._binding()
        self._graphs[key] = graph
        return graph

    def _restore_grads(self, graph):
        """Re-attach the .grad tensors the graph writes (an eager step may have replaced them)."""
        for p, g in zip(self._params, graph.grads):
            if p.grad is not g:
                p.grad = g

    # ------------------------------------------------------------------ what a graph depends on

    def _state_tensors(self):
        for p in self._params:
            for k, v in sorted(self.optimizer.state.get(p, {}).items()):
                if torch.is_tensor(v):
                    yield p, k, v

    def _binding(self):
        """Identities of the state tensors and the hyperparameter values a capture bakes in.
        Checked before every replay, so kept cheap (~8 µs for the MLP): dicts are read in
        their own order, so a rebuilt state in another order costs a recapture, nothing worse."""
        state = self.optimizer.state
        tensors = tuple([id(v) for p in self._params for v in state.get(p, {}).values() if isinstance(v, torch.Tensor)])
        hyper = tuple([tuple([(k, _plain(v)) for k, v in g.items() if k != "params"])
                       for g in self.optimizer.param_groups])
        return tensors, hyper

    def _snapshot(self):
        return ([p.detach().clone() for p in self._params],
                [(v, v.clone()) for _, _, v in self._state_tensors()])

    @torch.no_grad()
    def _restore(self, saved):
        params, states = saved
        for p, v in zip(self._params, params):
            p.copy_(v)
        for t, v in states:
            t.copy_(v)


def _plain(v):
    """A hyperparameter as a comparable value (tensors by identity: their content may change in place)."""
    if torch.is_tensor(v):
        return ("tensor", id(v))
    if isinstance(v, (list, tuple)):
        return tuple(_plain(e) for e in v)
    return v


def _has_step_counter(optimizer) -> bool:
    return not isinstance(optimizer, torch.optim.SGD)
