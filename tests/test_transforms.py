"""The torch ops under transforms that do not run them eagerly.

torch.vmap: the eager entry points hand the call to the registered custom ops (the wrapper
tensors have no memory a kernel could read), so vmap gives torch's results instead of a crash
in the kernel's argument check.

torch.jit.trace: the tracer records dispatcher ops only, so the trace must see our custom ops;
a kernel writing through a data pointer would be missing from the graph, and the traced
function would return its empty output buffer.

torch.export: traces through the custom ops' fake implementations; the program it saves names
our ops, and once loaded (with oxkernels imported) runs and differentiates them."""
import io
import warnings

import pytest

torch = pytest.importorskip("torch")
# torch.vmap runs our ops by its per-sample fallback and says so once per op
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
F = torch.nn.functional

from oxkernels import ops  # noqa: E402


def _rand(seed, *shape):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


W_CONV, W_LIN, B_LIN = _rand(1, 4, 3, 3, 3), _rand(2, 5, 6), _rand(3, 5)
TARGET = torch.tensor([0, 2, 4, 1, 3, 2])


def _cases(w_conv, w_lin, b_lin):
    """name -> (ours, torch's), each applied to one (3, 6, 6) sample (of a batch of 4 under vmap)."""
    return {
        "relu": (ops.relu, torch.relu),
        "sigmoid": (ops.sigmoid, torch.sigmoid),
        "max_pool2d": (lambda s: ops.max_pool2d(s, 2), lambda s: F.max_pool2d(s, 2)),
        "softmax": (lambda s: ops.softmax(s, 0), lambda s: torch.softmax(s, 0)),
        "log_softmax": (lambda s: ops.log_softmax(s, -1), lambda s: torch.log_softmax(s, -1)),
        "linear": (lambda s: ops.linear(s, w_lin, b_lin, "sigmoid"),
                   lambda s: torch.sigmoid(F.linear(s, w_lin, b_lin))),
        "conv2d": (lambda s: ops.conv2d(s, w_conv, None, 1, 1), lambda s: F.conv2d(s, w_conv, None, 1, 1)),
        "conv2d_relu_maxpool2d": (lambda s: ops.conv2d_relu_maxpool2d(s, w_conv, None, 1, 1),
                                  lambda s: F.max_pool2d(F.relu(F.conv2d(s, w_conv, None, 1, 1)), 2)),
        "cross_entropy": (lambda s: ops.cross_entropy(s.reshape(6, -1)[:, :5], TARGET, "none"),
                          lambda s: F.cross_entropy(s.reshape(6, -1)[:, :5], TARGET, reduction="none")),
    }


CASES = _cases(W_CONV, W_LIN, B_LIN)
FLOAT32_CASES = _cases(W_CONV.float(), W_LIN.float(), B_LIN.float())


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_matches_torch(name):
    ours, theirs = CASES[name]
    batch = _rand(0, 4, 3, 6, 6)
    got = torch.vmap(ours)(batch)
    torch.testing.assert_close(got, torch.vmap(theirs)(batch), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_func_grad_jacrev_and_per_sample_grads_match_torch(name):
    """torch.func.grad, jacrev and vmap(grad) (per-sample gradients) over our ops: torch's
    results. (Inside these transforms our ops run as autograd.Functions with setup_context around
    the custom ops, which torch's own custom-op autograd is not.)"""
    ours, theirs = CASES[name]
    sample, batch = _rand(0, 3, 6, 6), _rand(1, 4, 3, 6, 6)

    def loss(op):
        return lambda s: (op(s) ** 2).sum()

    torch.testing.assert_close(torch.func.grad(loss(ours))(sample), torch.func.grad(loss(theirs))(sample),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.func.jacrev(ours)(sample), torch.func.jacrev(theirs)(sample),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.vmap(torch.func.grad(loss(ours)))(batch),
                               torch.vmap(torch.func.grad(loss(theirs)))(batch), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["relu", "linear", "conv2d"])
def test_func_second_derivatives_are_refused(name):
    """Our gradients are first order: a transform that differentiates them again raises."""
    ours, _ = CASES[name]
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        torch.func.jacrev(torch.func.grad(lambda s: (ours(s) ** 3).sum()))(_rand(0, 3, 6, 6))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.func.jvp scripts a helper of its own
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_mode_ad_is_refused_not_silently_zero(name):
    """torch.func.jvp and forward_ad dual tensors: our ops carry no tangents, and torch's custom
    ops would drop them silently (a zero or missing derivative): refused instead."""
    ours, _ = CASES[name]
    sample = _rand(0, 3, 6, 6)
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(ours, (sample,), (torch.ones_like(sample),))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="forward-mode AD"):
        ours(fwAD.make_dual(sample, torch.ones_like(sample)))


@pytest.mark.parametrize("name", sorted(FLOAT32_CASES))
def test_autocast_runs_our_ops_in_float32(name):
    """Under torch.autocast our ops follow torch's float32 policy: a bfloat16 input is cast up and
    the result is exactly the float32 op's; outside autocast bfloat16 stays refused."""
    ours, _ = FLOAT32_CASES[name]
    sample = _rand(0, 3, 6, 6).float().bfloat16()
    expected = ours(sample.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours(sample)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    with pytest.raises(TypeError, match="bfloat16"):
        ours(sample)


def test_autocast_model_mixing_torch_and_our_layers_trains():
    """torch layers give bfloat16 activations under autocast; ours take them (as float32) and the
    gradients reach every parameter."""
    from oxkernels import nn as oxnn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 5), oxnn.ReLU(), oxnn.MaxPool2d(2), oxnn.Conv2d(6, 16, 5),
                                oxnn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(1600, 32), oxnn.Linear(32, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(4, 3, 32, 32))
        loss = oxnn.CrossEntropyLoss()(logits, torch.tensor([0, 3, 5, 9]))
    assert logits.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


def _quietly(jit_function, *args):
    """torch.jit.* warns that it is deprecated (and trace, about Python values it freezes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jit_function(*args)


def _trace(fn, *example):
    return _quietly(torch.jit.trace, fn, example)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
def test_jit_trace_records_our_op_and_replays_it(name, requires_grad):
    ours, theirs = CASES[name]
    traced = _trace(ours, _rand(0, 3, 6, 6).requires_grad_(requires_grad))
    assert any(node.kind().startswith("oxkernels::") for node in traced.inlined_graph.nodes())
    _assert_replays_like(traced, theirs)


def _assert_replays_like(recorded, theirs):
    """recorded (a traced or exported function) on a fresh sample: torch's values and input gradient."""
    fresh = _rand(5, 3, 6, 6).requires_grad_()
    reference = _rand(5, 3, 6, 6).requires_grad_()
    got, expected = recorded(fresh), theirs(reference)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    incoming = _rand(6, *expected.shape)
    got.backward(incoming)
    expected.backward(incoming)
    torch.testing.assert_close(fresh.grad, reference.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_traced_model_saves_loads_and_trains_like_torch(model):
    ours, reference, sample = _course_pair(model)
    buffer = io.BytesIO()
    _quietly(torch.jit.save, _trace(ours, torch.randn(5, *sample)), buffer)
    buffer.seek(0)
    _assert_trains_like(_quietly(torch.jit.load, buffer), reference, torch.randn(5, *sample))


def _course_pair(model):
    """(our course model, its torch twin with the same weights, the shape of one sample)."""
    from oxkernels import models

    torch.manual_seed(0)
    ours = models.build_model(model)
    reference = models.torch_reference(model)
    reference.load_state_dict(ours.state_dict())
    return ours, reference, (1, 28, 28) if model == "mlp" else (3, 32, 32)


def _assert_trains_like(loaded, reference, x):
    """A loaded model (traced or exported) gives the reference's output and parameter gradients."""
    out, expected = loaded(x), reference(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    grads = dict(loaded.named_parameters())
    for key, parameter in reference.named_parameters():
        torch.testing.assert_close(grads[key].grad, parameter.grad, rtol=1e-4, atol=1e-5)


def _modules():
    from oxkernels import nn as oxnn

    return {"Linear": oxnn.Linear(6, 5, activation="relu"), "Conv2d": oxnn.Conv2d(3, 4, 3),
            "ConvReLUMaxPool2d": oxnn.ConvReLUMaxPool2d(3, 4, 3), "MaxPool2d": oxnn.MaxPool2d(2),
            "ReLU": oxnn.ReLU(), "Sigmoid": oxnn.Sigmoid(), "CrossEntropyLoss": oxnn.CrossEntropyLoss()}


_SCRIPT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@_SCRIPT_DEPRECATED
@pytest.mark.parametrize("name", sorted(_modules()))
def test_jit_script_refuses_our_modules_and_names_what_works(name):
    module = _modules()[name]
    for scripted in (module, torch.nn.Sequential(torch.nn.Identity(), module)):
        with pytest.raises(NotImplementedError, match=rf"^{name} \(oxkernels.nn\): torch.jit.script .*torch.export"):
            torch.jit.script(scripted)


@_SCRIPT_DEPRECATED
def test_jit_script_refuses_the_course_models():
    from oxkernels import models

    for model in ("mlp", "lenet"):
        with pytest.raises(NotImplementedError, match="torch.jit.trace"):
            torch.jit.script(models.build_model(model))


class _Apply(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _export_roundtrip(module, example, dynamic_shapes=None):
    """torch.export of module, saved and loaded again: the loaded program's module."""
    program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer)


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_records_our_op_and_the_loaded_program_matches_torch(name):
    ours, theirs = CASES[name]
    program = _export_roundtrip(_Apply(ours), _rand(0, 3, 6, 6))
    assert any(str(node.target).startswith("oxkernels.") for node in program.graph.nodes)
    _assert_replays_like(program.module(), theirs)


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_exported_model_with_a_dynamic_batch_runs_other_batches_and_trains_like_torch(model):
    ours, reference, sample = _course_pair(model)
    loaded = _export_roundtrip(ours, torch.randn(4, *sample),
                               dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    _assert_trains_like(loaded, reference, torch.randn(7, *sample))  # a batch size the export never saw


def _flops(fn):
    """Total FLOPs of fn() by FlopCounterMode. (The mode copies the formula registry when it is
    created: our formulas must be registered by then, by loading oxkernels' torch layer.)"""
    from torch.utils.flop_counter import FlopCounterMode

    import oxkernels.nn  # noqa: F401

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


W_STRIDED, W_WIDE = _rand(7, 5, 3, 3, 2), _rand(9, 5, 8)
FLOP_CASES = {  # name -> (ours, torch's), on x of shape (4, 3, 9, 8) that requires grad
    "linear": (lambda x: ops.linear(x, W_WIDE, None, "relu"), lambda x: F.relu(F.linear(x, W_WIDE))),
    "conv2d": (lambda x: ops.conv2d(x, W_STRIDED, None, (2, 1), (1, 2)),
               lambda x: F.conv2d(x, W_STRIDED, None, (2, 1), (1, 2))),
    "conv2d_relu_maxpool2d": (lambda x: ops.conv2d_relu_maxpool2d(x, W_CONV, None, 1, 1),
                              lambda x: F.max_pool2d(F.relu(F.conv2d(x, W_CONV, None, 1, 1)), 2)),
}


@pytest.mark.parametrize("name", sorted(FLOP_CASES))
def test_flop_counter_counts_our_ops_as_torch_counts_its_own(name):
    """FlopCounterMode, a dispatch mode, sees our custom ops and their registered formulas:
    the same totals as torch's ops, forward and forward+backward."""
    totals = []
    for fn in FLOP_CASES[name]:
        x = _rand(8, 4, 3, 9, 8).requires_grad_()
        totals.append((_flops(lambda: fn(x.detach())), _flops(lambda: fn(x).square().sum().backward())))
    assert totals[0] == totals[1] and totals[0][1] > totals[0][0] > 0


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_flop_counter_totals_our_models_as_their_torch_twins(model):
    from oxkernels import models

    x = torch.randn((5, 1, 28, 28) if model == "mlp" else (5, 3, 32, 32))
    ours, theirs = models.build_model(model), models.torch_reference(model)
    totals = [(_flops(lambda: net(x)), _flops(lambda: net(x).sum().backward())) for net in (ours, theirs)]
    assert totals[0] == totals[1] and totals[0][0] > 0


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_per_sample_parameter_gradients_of_the_course_models_match_torch(model):
    """The torch.func recipe for per-sample gradients (vmap of grad of functional_call), on our
    models and their torch twins with the same weights."""
    from oxkernels import models

    torch.manual_seed(0)
    ours, theirs = models.build_model(model), models.torch_reference(model)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn((3, 1, 28, 28) if model == "mlp" else (3, 3, 32, 32))
    y = torch.tensor([1, 0, 7])
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def per_sample(net):
        def loss(p, xi, yi):
            return F.cross_entropy(torch.func.functional_call(net, p, (xi[None],)), yi[None])

        return torch.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)

    got, expected = per_sample(ours), per_sample(theirs)
    for key in params:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
