"""Per-call glue shared by the eager torch paths, kept lean (these run once per op call).

cuda_stream(t): the handle of torch's current CUDA stream for a CUDA tensor, 0 otherwise.

lean_apply(Function): Function.apply without its Python wrapper where that is safe.

autograd.Function.apply's Python layer binds default arguments for setup_context and
unwraps functorch wrappers; our Functions need neither outside functorch transforms
(vmap, grad, ...), and skipping it saves ~2.5 µs per call — a few percent of a small
layer's forward+backward. Inside a transform, and on a torch without these internals,
the public apply runs."""
import torch



def cuda_stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def lean_apply(function_class):
    public = function_class.apply
    base = getattr(super(torch.autograd.Function, function_class), "apply", None)
    if _functorch_active is None or base is None:
        return public

    def apply(*args):
        return public(*args) if _functorch_active() else base(*args)

    return apply
