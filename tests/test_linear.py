"""oxkernels.ops.linear / torch.ops.oxkernels.linear(_backward) / nn.Linear: forward and
gradients against torch float64, leading dims, both activations, gradcheck, opcheck,
torch.compile, poisoned outputs, empty batches, bad input; CUDA parity (skipped here)."""
import numpy as np
import pytest

import oxkernels
from oxkernels.ops import linear

from conftest import ISA_ORDER, forced_isa, poison, rel_err, requires_cuda, runnable_isas

torch = pytest.importorskip("torch")
import oxkernels.nn  # noqa: E402  (registers the torch ops)

ACTS = [None, "relu", "sigmoid"]


def torch_reference(x, w, b, activation):
    z = torch.nn.functional.linear(x, w, b)
    if activation == "relu":
        return torch.relu(z)
    if activation == "sigmoid":
        return torch.sigmoid(z)
    return z


def make(rng, lead, k, n, bias=True, dtype=torch.float32, device="cpu"):
    x = torch.from_numpy(rng.standard_normal((*lead, k))).to(dtype=dtype, device=device)
    w = torch.from_numpy(rng.standard_normal((n, k)) / np.sqrt(max(k, 1))).to(dtype=dtype, device=device)
    b = torch.from_numpy(rng.standard_normal(n)).to(dtype=dtype, device=device) if bias else None
    return x, w, b


def forward_backward(f, x, w, b, grad_out):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = f(x, w, b)
    y.backward(grad_out)
    return y.detach(), x.grad, w.grad, (b.grad if b is not None else None)


def check_against_float64(x, w, b, activation, tol=1e-5):
    grad_out = torch.randn((*x.shape[:-1], w.shape[0]), dtype=x.dtype, device=x.device)
    ours = forward_backward(lambda x, w, b: linear(x, w, b, activation), x, w, b, grad_out)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    ref = forward_backward(lambda x, w, b: torch_reference(x, w, b, activation), d(x), d(w), d(b), d(grad_out))
    for name, o, r in zip(["y", "dx", "dw", "db"], ours, ref):
        assert (o is None) == (r is None), name
        if o is not None:
            assert o.dtype == x.dtype and o.shape == r.shape, name
            assert rel_err(o, r) < tol, f"{name}: {rel_err(o, r)}"


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("rows,k,n", [(1, 1, 1), (3, 7, 31), (33, 127, 129), (64, 784, 64), (129, 1000, 10),
                                      (31, 33, 3), (1024, 32, 10)])
def test_forward_and_grads_match_torch_float64(rng, activation, rows, k, n):
    x, w, b = make(rng, (rows,), k, n)
    check_against_float64(x, w, b, activation)


@pytest.mark.parametrize("activation", ACTS)
def test_leading_dims_and_no_bias(rng, activation):
    x, w, _ = make(rng, (2, 3, 7), 33, 31, bias=False)
    check_against_float64(x, w, None, activation)


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_other_isas(rng, isa):
    with forced_isa(isa):
        for act in ACTS:
            x, w, b = make(rng, (37,), 129, 33)
            check_against_float64(x, w, b, act)


@pytest.mark.parametrize("need", ["all", "x", "weight", "bias", "x+bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_is_the_same_for_any_thread_count(rng, need, dtype):
    # With T >= 2 threads the backward runs column slices of dx and of dW side by side, each
    # slice in one thread (with two: dx in one, dW and db in the other); with one, one product
    # after the other. The results must be bit for bit the same, and agree with torch. Shapes
    # above and below the size where the split is used; 3 to 5 threads oversubscribe a small
    # machine, which changes the timing, not the slices.
    from oxkernels import _C

    old = oxkernels.get_num_threads()
    try:
        for rows, k, n in [(64, 784, 64), (256, 400, 120), (64, 32, 10), (5, 3, 2)]:
            x, w, b = make(rng, (rows,), k, n, dtype=dtype)
            g = torch.randn(rows, n, dtype=dtype)
            y = torch.empty(rows, n, dtype=dtype)
            _C.linear(x, w, b, y, "relu")
            results = []
            for threads in (1, 2, 3, 4, 5, 1, 2):
                oxkernels.set_num_threads(threads)
                dx = poison(torch.empty(rows, k, dtype=dtype)) if need in ("all", "x", "x+bias") else None
                dw = poison(torch.empty(n, k, dtype=dtype)) if need in ("all", "weight") else None
                db = poison(torch.empty(n, dtype=dtype)) if need in ("all", "bias", "x+bias") else None
                _C.linear_backward(g, x, w, y, "relu", dx, dw, db)
                results.append([t for t in (dx, dw, db) if t is not None])
            for r in results[1:]:
                assert all(torch.equal(a, c) for a, c in zip(results[0], r))
            dz = (g * (y > 0)).double()
            refs = {"x": dz @ w.double(), "weight": dz.t() @ x.double(), "bias": dz.sum(0)}
            names = {"all": ["x", "weight", "bias"], "x+bias": ["x", "bias"]}.get(need, [need])
            for name, got in zip(names, results[0]):
                assert rel_err(got, refs[name]) < 1e-5, name
    finally:
        oxkernels.set_num_threads(old)


@pytest.mark.parametrize("activation", ACTS)
def test_numpy_in_numpy_out(rng, activation):
    x = rng.standard_normal((5, 7, 129)).astype(np.float32)
    w = rng.standard_normal((33, 129)).astype(np.float32)
    b = rng.standard_normal(33).astype(np.float32)
    y = linear(x, w, b, activation)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    ref = torch_reference(*(torch.from_numpy(a).double() for a in (x, w, b)), activation)
    assert rel_err(y, ref) < 1e-5


def test_raw_ops_fill_poisoned_outputs(rng):
    from oxkernels import _C

    x, w, b = make(rng, (31,), 33, 7)
    for act in ACTS:
        y = poison(torch.empty(31, 7))
        _C.linear(x, w, b, y, act)
        assert rel_err(y, torch_reference(x.double(), w.double(), b.double(), act)) < 1e-5
        dy = torch.randn(31, 7)
        dx, dw, db = poison(torch.empty(31, 33)), poison(torch.empty(7, 33)), poison(torch.empty(7))
        _C.linear_backward(dy, x, w, y, act, dx, dw, db)
        assert torch.isfinite(dx).all() and torch.isfinite(dw).all() and torch.isfinite(db).all()


def test_nan_propagates_like_torch(rng):
    x, w, b = make(rng, (5,), 7, 3)
    x[2, 4] = float("nan")
    for isa in runnable_isas():
        with forced_isa(isa):
            for act in ACTS:
                ours = linear(x, w, b, act)
                assert torch.equal(torch.isnan(ours), torch.isnan(torch_reference(x, w, b, act))), (isa, act)


@pytest.mark.parametrize("rows", [4, 33])  # 33: both packing paths of the AVX-512 product
def test_relu_backward_drops_infinite_gradients_where_relu_is_off_like_torch(rows):
    """An inf or NaN incoming gradient where the relu output is 0 contributes nothing (torch's
    threshold_backward selects); on every ISA (the scalar and AVX2 prologues used to multiply
    it by 0, giving NaN)."""
    x, w = torch.ones(rows, 3), torch.ones(20, 3)
    b = torch.zeros(20)
    b[0] = -10.0  # output column 0 is off for every row
    dy = torch.ones(rows, 20)
    dy[0, 0], dy[1, 0] = float("inf"), float("nan")
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    torch.relu(torch.nn.functional.linear(xr, wr, b)).backward(dy)
    for isa in runnable_isas():
        with forced_isa(isa):
            xo, wo = x.clone().requires_grad_(), w.clone().requires_grad_()
            linear(xo, wo, b, "relu").backward(dy)
            assert torch.equal(xo.grad, xr.grad) and torch.equal(wo.grad, wr.grad), isa


@pytest.mark.parametrize("activation", ACTS)
def test_gradcheck_float64(rng, activation):
    x, w, b = make(rng, (3, 4), 5, 6, dtype=torch.float64)
    if activation == "relu":  # keep pre-activations away from the kink at 0
        b = b + torch.sign(b) * 0.5
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: linear(x, w, b, activation), inputs)
    assert torch.autograd.gradcheck(lambda x, w, b: torch.ops.oxkernels.linear(x, w, b, activation or "none"),
                                    inputs)


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(rng, bias):
    x, w, b = make(rng, (4, 3), 5, 6, bias=bias)
    for act in ("none", "relu", "sigmoid"):
        args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_() if bias else None, act)
        torch.library.opcheck(torch.ops.oxkernels.linear.default, args)
        y = torch.ops.oxkernels.linear(*args).detach()
        dy = torch.randn_like(y)
        for needs in [(True, True, bias), (False, True, False), (False, False, bias)]:
            torch.library.opcheck(torch.ops.oxkernels.linear_backward.default,
                                  (dy, x.detach(), w.detach(), y if act != "none" else None, act, *needs))


def test_torch_compile_fullgraph(rng):
    model = torch.nn.Sequential(oxkernels.nn.Linear(33, 17, activation="relu"), oxkernels.nn.Linear(17, 5))
    x = torch.from_numpy(rng.standard_normal((7, 33)).astype(np.float32))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    g_compiled = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_eager = model(x)
    y_eager.sum().backward()
    assert rel_err(y, y_eager) < 1e-6
    for gc, p in zip(g_compiled, model.parameters()):
        assert rel_err(gc, p.grad) < 1e-6


def test_nn_linear_is_a_drop_in(rng):
    torch.manual_seed(0)
    ref = torch.nn.Linear(129, 33)
    torch.manual_seed(0)
    ours = oxkernels.nn.Linear(129, 33, activation="sigmoid")
    assert isinstance(ours, torch.nn.Linear)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
    assert "activation='sigmoid'" in repr(ours)
    x = torch.randn(3, 5, 129)
    assert rel_err(ours(x), torch.sigmoid(ref(x))) < 1e-5
    plain = oxkernels.nn.Linear(7, 3, bias=False, dtype=torch.float64)
    assert plain.bias is None and plain.weight.dtype == torch.float64 and plain(torch.randn(2, 7).double()).shape == (2, 3)
    with pytest.raises(ValueError, match="activation"):
        oxkernels.nn.Linear(3, 4, activation="tanh")


def test_empty_batch(rng):
    x, w, b = make(rng, (0,), 7, 3)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = linear(x, w, b, "relu")
    assert y.shape == (0, 3)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    assert x.grad.shape == (0, 7)
    assert linear(np.ones((0, 4), np.float32), np.ones((2, 4), np.float32)).shape == (0, 2)


def test_bad_input_is_named(rng):
    x, w, b = make(rng, (3,), 4, 5)
    with pytest.raises(ValueError, match="'weight'.*in_features = 4"):
        linear(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="'bias'"):
        linear(x, w, torch.randn(4))
    with pytest.raises(TypeError, match="'weight'.*float64"):
        linear(x, w.double(), b)
    with pytest.raises(TypeError, match="'x'.*int64"):
        linear(torch.ones(3, 4, dtype=torch.int64), w.long())
    with pytest.raises(ValueError, match="'weight'"):
        linear(x, torch.randn(5))
    with pytest.raises(ValueError, match="activation"):
        linear(x, w, b, "tanh")
    with pytest.raises(ValueError, match="activation"):
        linear(x.numpy(), w.numpy(), b.numpy(), "tanh")
    with pytest.raises(TypeError, match="'weight'"):
        linear(x, w.numpy())
    with pytest.raises(TypeError, match="'x'"):
        linear([[1.0]], w)


@requires_cuda
def test_mixed_devices_are_rejected(rng):
    x, w, b = make(rng, (3,), 4, 5)
    with pytest.raises(TypeError, match="'weight'"):
        linear(x.cuda(), w, b.cuda())


@requires_cuda
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("rows,k,n", [(1, 1, 1), (33, 127, 129), (256, 784, 64), (1024, 400, 120),
                                      (1024, 84, 10), (7, 1000, 3)])
def test_cuda_matches_float64(rng, activation, rows, k, n):
    x, w, b = make(rng, (rows,), k, n, device="cuda")
    check_against_float64(x, w, b, activation)


@requires_cuda
def test_cuda_leading_dims_gradcheck_and_compile(rng):
    x, w, _ = make(rng, (2, 3, 7), 33, 31, bias=False, device="cuda")
    check_against_float64(x, w, None, "sigmoid")
    x, w, b = make(rng, (3, 4), 5, 6, dtype=torch.float64, device="cuda")
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: linear(x, w, b, "sigmoid"), inputs)
    model = oxkernels.nn.Linear(33, 17, activation="relu", device="cuda")
    xc = torch.randn(9, 33, device="cuda")
    assert rel_err(torch.compile(model, fullgraph=True)(xc), model(xc)) < 1e-6


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_fused_sigmoid_is_the_sigmoid_op_bit_for_bit(isa):
    """linear(..., "sigmoid") applies the sigmoid op's own float32 formula in the product's
    epilogue: the same bits as sigmoid(linear(...)), including pre-activations far in both
    tails (below −88.7 both give exactly 0, as torch's sigmoid; the epilogue once gave 6e-39)."""
    from oxkernels import ops

    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(67, 9, generator=g) * 40, torch.randn(21, 9, generator=g), torch.randn(21, generator=g)
    with forced_isa(isa):
        z = ops.linear(x, w, b)
        fused = ops.linear(x, w, b, "sigmoid")
        separate = ops.sigmoid(z)
    assert (z < -88.8).any() and (z > 20).any()
    assert torch.equal(fused, separate)
    assert torch.equal(fused[z < -88.8], torch.zeros_like(fused[z < -88.8]))


@requires_cuda
@pytest.mark.parametrize("rows,k,n", [(67, 9, 21), (1024, 784, 64)])  # plain and split-K products
def test_cuda_fused_sigmoid_is_the_sigmoid_op_bit_for_bit(rows, k, n):
    """The CUDA epilogue uses the sigmoid op's device formula (cuda/device_math.cuh)."""
    from oxkernels import ops

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(rows, k, generator=g) * 40 / k ** 0.5).cuda()
    w, b = torch.randn(n, k, generator=g).cuda(), torch.randn(n, generator=g).cuda()
    z = ops.linear(x, w, b)
    assert (z < -88.8).any()
    assert torch.equal(ops.linear(x, w, b, "sigmoid"), ops.sigmoid(z))
