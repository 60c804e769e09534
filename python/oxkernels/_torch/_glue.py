"""Per-call glue shared by the eager torch paths, kept lean (these run once per op call).

cuda_stream(t): the handle of torch's current CUDA stream for a CUDA tensor, 0 otherwise.

use_custom_op(x): whether a call on x must take the registered custom op, not the eager path.

lean_apply(Function): Function.apply without its Python wrapper.

increment_version(tensors): what every torch in-place op does to the tensors it wrote, so that
a graph that saved one of them notices.

register_autograd / dispatcher_op / call_backward: the custom ops' autograd, in a form that
torch.func's transforms (grad, jacrev, vmap of grad) accept as well.

first_order(op): marks a Function's backward as not differentiable itself.

autograd.Function.apply's Python layer binds default arguments for setup_context and
unwraps functorch wrappers; our Functions need neither, because every eager entry point
asks use_custom_op(x) first and so never runs inside a functorch transform (vmap, grad, ...).
Skipping that layer saves ~2.5 µs per call, a few percent of a small layer's
forward+backward. On a torch without the internal, the public apply runs."""
import functools

import torch


# torch's current-stream handle as a plain int, without building a torch.cuda.Stream object
# (~0.3 µs instead of ~3 µs per call); the public route where this internal is missing.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def cuda_stream(t: torch.Tensor) -> int:
    if not t.is_cuda:
        return 0
    if _raw_stream is None:
        return torch.cuda.current_stream(t.device).cuda_stream
    return _raw_stream(t.get_device())


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None) or (lambda: False)
_is_compiling = torch.compiler.is_compiling
_jit_tracing = torch._C._get_tracing_state
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None) or (lambda: 0)
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_forward_ad = torch.autograd.forward_ad
_autocast = getattr(torch._C, "_is_any_autocast_enabled", None) or (lambda: False)


def use_custom_op(x: torch.Tensor) -> bool:
    """Whether a call on x must go through torch's dispatcher (the registered custom op)
    instead of handing x's memory to a kernel. It must where that memory is not x's values:
    - x is a meta tensor, or a tensor subclass (FakeTensor, DTensor, ...), or a dispatch mode
      is active (FakeTensorMode, FlopCounterMode, ...): the custom op's fake implementation
      gives meta and fake tensors outputs of the right shapes, and modes and subclasses see
      the op they expect, as they do torch's own;
    - torch.compile is tracing, or a functorch transform (vmap, ...) is active: their wrapper
      tensors hold no memory a kernel could read (torch.vmap batches the op by its fallback);
    - torch.jit.trace is recording: it sees dispatcher ops only, so a kernel writing through a
      data pointer would be missing from its graph, which would return the empty output;
    - autocast is on: the dispatcher casts low-precision inputs to float32 (_torch/amp.py).
    (is_compiling() comes first: dynamo folds it to True and cannot trace some of the others.)

    Forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) raises instead: neither
    path carries tangents, and torch's custom ops drop them silently."""
    if _is_compiling():
        return True
    if _forward_ad._current_level >= 0:
        raise NotImplementedError("oxkernels ops do not implement forward-mode AD (torch.func.jvp, jacfwd, "
                                  "torch.autograd.forward_ad): their tangents would be lost; use reverse mode, "
                                  "or torch's ops inside the forward-mode computation")
    return (type(x) not in _PLAIN or x.is_meta or _dispatch_modes() > 0 or _autocast()
            or _jit_tracing() is not None or _functorch_active())


increment_version = getattr(torch._C, "_increment_version", None) or torch.autograd.graph.increment_version


# torch.func's transforms need autograd.Functions with a separate setup_context; the one torch
# builds for a custom op's register_autograd has none, so grad/jacrev over it fail. Inside a
# transform our ops therefore run as Functions of that form around the same custom ops: the
# forward op with its registered setup_context and backward, and each backward op called from
# there as a Function whose own derivative raises (first order, as everywhere).
_AUTOGRAD = {}  # custom op -> (setup_context, backward), as registered
_TRANSFORM_READY = {}  # custom op -> its Function's apply


def register_autograd(op, backward, setup_context):
    """op.register_autograd(backward, setup_context=...), remembered for the transforms."""
    op.register_autograd(backward, setup_context=setup_context)
    _AUTOGRAD[op] = (setup_context, backward)


def _in_transform() -> bool:
    return not _is_compiling() and _functorch_active()


def _function(name, forward, setup_context, backward):
    return type(name, (torch.autograd.Function,), {
        "generate_vmap_rule": True, "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context), "backward": staticmethod(backward)}).apply


def dispatcher_op(op):
    """The custom op, or inside a torch.func transform the Function around it."""
    if not _in_transform():
        return op
    if op not in _TRANSFORM_READY:
        setup_context, backward = _AUTOGRAD[op]
        _TRANSFORM_READY[op] = _function(f"{op._name}_function", op, setup_context, backward)
    return _TRANSFORM_READY[op]


def _no_context(ctx, inputs, output):
    pass


def call_backward(op, *args):
    """A backward custom op, called from a registered backward (inside a transform as a Function
    whose derivative raises: our gradients are first order)."""
    if not _in_transform():
        return op(*args)
    if op not in _TRANSFORM_READY:
        message = _second_derivatives_message(op._name)

        def second_derivative(ctx, *grads):
            raise RuntimeError(message)

        _TRANSFORM_READY[op] = _function(f"{op._name}_function", op, _no_context, second_derivative)
    return _TRANSFORM_READY[op](*args)


def _second_derivatives_message(op: str) -> str:
    return (f"oxkernels.{op}: second derivatives are not implemented (the backward is a native kernel "
            "without autograd); use the torch op where a double backward is needed")


def lean_apply(function_class):
    base = getattr(super(torch.autograd.Function, function_class), "apply", None)
    return function_class.apply if base is None else base


_grad_enabled = torch.is_grad_enabled
_DelayedError = getattr(getattr(torch._C, "_functions", None), "DelayedError", None)


def first_order(op: str):
    """Decorator for the backward of an autograd.Function whose kernels build no graph.

    In an ordinary backward grad mode is off and this costs one flag read. Under
    create_graph=True it is on, and the gradients would otherwise come back as constants:
    a gradient penalty through the op would silently lose its term. They come back as
    outputs of an error node instead, wired to the tensors the Function saved (its inputs
    or its output) and to the incoming gradients, so that differentiating them again, by
    backward() or autograd.grad, raises. A backward reads nothing else, so where none of
    those requires grad the gradients are constants indeed and come back as they are.
    (torch's once_differentiable costs ≈ 3 µs more per call and leaves the node unwired,
    so autograd.grad reports an unused input instead.)"""
    message = _second_derivatives_message(op).encode()

    def decorate(backward):
        @functools.wraps(backward)
        def wrapped(ctx, *grads):
            out = backward(ctx, *grads)
            if not _grad_enabled():
                return out
            anchors = [t for t in (*ctx.saved_tensors, *grads) if t is not None and t.requires_grad]
            return _guard(message, out, anchors)

        return wrapped

    return decorate


def _guard(message, out, anchors):
    single = not isinstance(out, tuple)
    outs = list((out,) if single else out)
    slots = [i for i, t in enumerate(outs) if isinstance(t, torch.Tensor)]
    if not slots or not anchors:
        return out
    if _DelayedError is None:  # a torch without the internal: refuse rather than be wrong
        raise RuntimeError(message.decode())
    inputs = [outs[i].detach().requires_grad_() for i in slots] + anchors
    guarded = _DelayedError(message, len(inputs))(*inputs)
    for i, t in zip(slots, guarded if isinstance(guarded, tuple) else (guarded,)):
        outs[i] = t
    return outs[0] if single else tuple(outs)
