"""oxkernels.models: the course MLP and LeNet against their torch.nn twins."""
import pytest

torch = pytest.importorskip("torch")

from conftest import rel_err  # noqa: E402
from oxkernels import models  # noqa: E402

MLP_PARAMS = (784 * 64 + 64) + (64 * 32 + 32) + (32 * 10 + 10)
LENET_PARAMS = (6 * 3 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)


def _input(name, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 1, 28, 28) if name == "mlp" else (batch, 3, 32, 32)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("name,params", [("mlp", MLP_PARAMS), ("lenet", LENET_PARAMS)])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_torch_reference_shapes(name, params, activation):
    model = models.torch_reference(name, activation)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(_input(name, 3)).shape == (3, 10)


def test_torch_reference_computes_the_course_network():
    """The MLP is Linear → act → Linear → act → Linear, written here with torch.nn.functional."""
    F = torch.nn.functional
    model = models.torch_reference("mlp", "sigmoid")
    x = _input("mlp", 7).double()
    sd = {k: v.double() for k, v in model.state_dict().items()}
    h = torch.sigmoid(F.linear(x.flatten(1), sd["fc1.weight"], sd["fc1.bias"]))
    h = torch.sigmoid(F.linear(h, sd["fc2.weight"], sd["fc2.bias"]))
    ref = F.linear(h, sd["fc3.weight"], sd["fc3.bias"])
    assert rel_err(model(x.float()), ref) < 1e-6


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        models.torch_reference("mlp", "tanh")
    with pytest.raises(ValueError, match="model"):
        models.torch_reference("resnet")
    with pytest.raises(ValueError, match="backend"):
        models.build_model("mlp", backend="jax")


CASES = [
    ("mlp", "relu", {}),
    ("mlp", "sigmoid", {}),
    ("lenet", "relu", {"fused": False}),
    ("lenet", "relu", {"fused": True}),
    ("lenet", "sigmoid", {"fused": False}),
]


def _pair(name, activation, kwargs, seed=1234):
    torch.manual_seed(seed)
    ref = models.torch_reference(name, activation)
    torch.manual_seed(seed)
    cls = models.MLP if name == "mlp" else models.LeNet
    ours = cls(activation, **kwargs)
    return ours, ref


@pytest.mark.parametrize("name,activation,kwargs", CASES)
def test_same_seed_same_weights_and_outputs(name, activation, kwargs):
    ours, ref = _pair(name, activation, kwargs)
    sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(sd) == list(ref_sd)
    for key in ref_sd:
        assert torch.equal(sd[key], ref_sd[key]), key
    for batch in (1, 3, 33):
        x = _input(name, batch, seed=batch)
        assert rel_err(ours(x), ref(x)) < 1e-5


@pytest.mark.parametrize("name,activation,kwargs", CASES)
def test_gradients_match_torch(name, activation, kwargs):
    ours, ref = _pair(name, activation, kwargs)
    x = _input(name, 7, seed=7)
    target = torch.randint(0, 10, (7,), generator=torch.Generator().manual_seed(7))
    for model in (ours, ref):
        torch.nn.functional.cross_entropy(model(x), target).backward()
    ref_grads = dict(ref.named_parameters())
    for key, p in ours.named_parameters():
        assert rel_err(p.grad, ref_grads[key].grad) < 1e-4, key


@pytest.mark.parametrize("name,activation,kwargs", CASES)
def test_state_dicts_interchangeable(name, activation, kwargs):
    ours, _ = _pair(name, activation, kwargs, seed=1)
    _, other_ref = _pair(name, activation, kwargs, seed=2)
    x = _input(name, 5)
    ours.load_state_dict(other_ref.state_dict())
    assert rel_err(ours(x), other_ref(x)) < 1e-5
    fresh = models.torch_reference(name, activation)
    fresh.load_state_dict(ours.state_dict())
    assert rel_err(fresh(x), other_ref(x)) < 1e-5


def test_build_model_torch_backend():
    assert isinstance(models.build_model("lenet", "torch"), models.TorchLeNet)
    assert isinstance(models.build_model("mlp", "torch", "sigmoid").act1, torch.nn.Sigmoid)


@pytest.mark.parametrize("name", ["mlp", "lenet"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_models_on_the_meta_device_propagate_shapes_like_torch(name, activation):
    """Built and run on the meta device (shape inference, deferred initialisation), our models
    answer as torch's do: meta outputs and gradients of the same shapes, no kernel runs."""
    results = []
    with torch.device("meta"):
        for model in (models.build_model(name, "oxkernels", activation), models.torch_reference(name, activation)):
            out = model(torch.empty(_input(name, 5).shape))
            out.sum().backward()
            results.append((out, [p.grad for p in model.parameters()]))
    (ours, our_grads), (theirs, their_grads) = results
    assert ours.is_meta and ours.shape == theirs.shape
    assert all(g.is_meta for g in our_grads)
    assert [g.shape for g in our_grads] == [g.shape for g in their_grads]
