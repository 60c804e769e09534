"""conv2d and the fused conv → ReLU → max-pool block against torch (float64
reference): forward, every gradient, gradcheck, opcheck, torch.compile, bad
input, empty batches, the drop-in modules, and CUDA parity (skipped without a GPU)."""
import numpy as np
import pytest

import oxkernels
from oxkernels import _C, ops
from conftest import ISA_ORDER, forced_isa, poison, rel_err, requires_cuda

torch = pytest.importorskip("torch")
F = torch.nn.functional
import oxkernels.nn as onn  # noqa: E402

# (N, C, H, W, O, K, stride, padding): a sample of batch 1, 3, 17; channels 1, 3,
# 6, 16; images 5…33; kernels 1, 3, 5; strides 1, 2; padding 0, 1, 2; plus the
# two course layers and unequal (h, w) stride / padding.
CASES = [
    (1, 1, 5, 5, 1, 1, 1, 0),
    (3, 3, 17, 13, 6, 5, 1, 0),
    (17, 3, 8, 9, 6, 3, 1, 1),
    (3, 6, 14, 14, 16, 5, 1, 2),
    (1, 16, 33, 7, 3, 1, 2, 2),
    (3, 1, 31, 29, 16, 3, 2, 1),
    (1, 6, 11, 33, 1, 5, 2, 0),
    (3, 16, 9, 5, 6, 3, (2, 1), (0, 2)),
    (1, 3, 32, 32, 6, 5, 1, 0),
    (3, 6, 14, 14, 16, 5, 1, 0),
    (3, 3, 21, 19, 16, 3, 2, 1),
    (2, 3, 15, 12, 16, 3, (2, 1), 0),  # channel vectors reading the image in place, row stride 2
    (2, 3, 13, 12, 9, 7, 1, 1),  # CUDA ∂L/∂w: two blocks of 8 output channels, two passes of 5 kernel columns
]
IDS = [f"N{c[0]}C{c[1]}H{c[2]}W{c[3]}O{c[4]}K{c[5]}s{c[6]}p{c[7]}".replace(" ", "") for c in CASES]
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def make(rng, case, dtype):
    N, C, H, W, O, K, s, p = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, K, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    return x, w, b, pair(s), pair(p)


def reference(x, w, b, s, p, pool=None, gseed=0):
    """torch float64: output and (grad_x, grad_w, grad_b) for a random upstream gradient."""
    xt, wt, bt = (torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, s, p)
    if pool:
        y = F.max_pool2d(F.relu(y), pool)
    g = torch.tensor(np.random.default_rng(gseed).standard_normal(tuple(y.shape)))
    grads = torch.autograd.grad(y, (xt, wt, bt), g)
    return y.detach().numpy(), g.numpy(), [t.numpy() for t in grads]


def out_hw(x, w, s, p):
    return ((x.shape[2] + 2 * p[0] - w.shape[2]) // s[0] + 1, (x.shape[3] + 2 * p[1] - w.shape[3]) // s[1] + 1)


# ---- NumPy path, kernels called with poisoned outputs ------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_numpy_forward_and_gradients(rng, case, dtype):
    x, w, b, s, p = make(rng, case, dtype)
    y_ref, g, (gx_ref, gw_ref, gb_ref) = reference(x, w, b, s, p)
    g = g.astype(dtype)
    y = poison(np.empty((x.shape[0], w.shape[0], *out_hw(x, w, s, p)), dtype))
    _C.conv2d(x, w, b, *s, *p, y)
    gx, gw, gb = poison(np.empty_like(x)), poison(np.empty_like(w)), poison(np.empty_like(b))
    _C.conv2d_backward(g, x, w, *s, *p, gx, gw, gb)
    tol = TOL[dtype]
    assert rel_err(y, y_ref) < tol
    assert rel_err(gx, gx_ref) < tol
    assert rel_err(gw, gw_ref) < tol
    assert rel_err(gb, gb_ref) < tol
    # the public functions give the same, and skip what `needs` leaves out
    assert np.array_equal(ops.conv2d(x, w, b, s, p), y)
    gx2, gw2, gb2 = ops.conv2d_backward(g, x, w, s, p, needs=(False, True, False))
    assert gx2 is None and gb2 is None and np.array_equal(gw2, gw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool", [2, 3])
@pytest.mark.parametrize("case", CASES[1:6] + CASES[8:], ids=IDS[1:6] + IDS[8:])
def test_fused_numpy_forward_and_gradients(rng, case, pool, dtype):
    x, w, b, s, p = make(rng, case, dtype)
    y_ref, g, (gx_ref, gw_ref, gb_ref) = reference(x, w, b, s, p, pool=pool)
    g = g.astype(dtype)
    oh, ow = out_hw(x, w, s, p)
    out = poison(np.empty((x.shape[0], w.shape[0], oh // pool, ow // pool), dtype))
    idx = np.full(out.shape, 77, np.uint8)
    _C.conv2d_relu_maxpool2d(x, w, b, *s, *p, pool, out, idx)
    assert rel_err(out, y_ref) < TOL[dtype]
    assert np.all((idx < pool * pool) | (idx == 255))
    gx, gw, gb = poison(np.empty_like(x)), poison(np.empty_like(w)), poison(np.empty_like(b))
    _C.conv2d_relu_maxpool2d_backward(g, idx, x, w, *s, *p, pool, gx, gw, gb)
    assert rel_err(gx, gx_ref) < TOL[dtype]
    assert rel_err(gw, gw_ref) < TOL[dtype]
    assert rel_err(gb, gb_ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [6, 38])  # 38: more than 16 windows per row (full vectors + tail)
@pytest.mark.parametrize("out_channels", [1, 16])  # 16: channel-vectorised tiles that pool in registers
def test_fused_ties_nan_and_negative_windows_match_torch(dtype, width, out_channels):
    # K=1, w=1, b=0: the conv output is x itself, so the windows hold exact ties,
    # NaN, all-negative values and zeros; routing must be torch's, exactly.
    x = np.array([[[[1, 1, 2, 2, -1, -3],
                    [1, 0, 2, 2, -2, -1],
                    [np.nan, 5, 0, 0, 4, np.nan],
                    [5, np.nan, 0, -0.0, 4, 4]]]], dtype=dtype)
    x = np.tile(x, (1, 2, 2, 7))[:, :, :, :width].copy()  # tiles of the pattern, NaN-free tiles too
    x[:, 1, 2:, :] = np.nan_to_num(x[:, 1, 2:, :], nan=7.0)
    w = np.ones((out_channels, 2, 1, 1), dtype)
    w[:, 1] = 0.5
    b = np.zeros(out_channels, dtype)
    out, idx = ops.conv2d_relu_maxpool2d(x, w, b, pool=2, return_indices=True)
    g = np.arange(1.0, 1.0 + out.size).reshape(out.shape).astype(dtype)
    gx, gw, gb = ops.conv2d_relu_maxpool2d_backward(g, idx, x, w, pool=2)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    ref = F.max_pool2d(F.relu(F.conv2d(xt, wt, bt)), 2)
    gx_ref, gw_ref, gb_ref = torch.autograd.grad(ref, (xt, wt, bt), torch.tensor(g))
    np.testing.assert_array_equal(out, ref.detach().numpy())  # NaN in the same places
    np.testing.assert_array_equal(gx, gx_ref.numpy())
    np.testing.assert_array_equal(gw, gw_ref.numpy())
    np.testing.assert_array_equal(gb, gb_ref.numpy())


@pytest.mark.parametrize("channels", [5, 16])  # 16: the channel-vectorised tiles
@pytest.mark.parametrize("isa", ISA_ORDER)
def test_every_instruction_set_agrees(rng, isa, channels):
    x, w, b, s, p = make(rng, (3, 6, 15, 21, channels, 3, (1, 2), (2, 1)), np.float32)
    _, g, refs = reference(x, w, b, s, p)
    _, gp, frefs = reference(x, w, b, s, p, pool=2)
    with forced_isa(isa):
        grads = ops.conv2d_backward(g.astype(np.float32), x, w, s, p)
        out, idx = ops.conv2d_relu_maxpool2d(x, w, b, s, p, return_indices=True)
        fgrads = ops.conv2d_relu_maxpool2d_backward(gp.astype(np.float32), idx, x, w, s, p)
        y = ops.conv2d(x, w, b, s, p)
    assert rel_err(y, reference(x, w, b, s, p)[0]) < 1e-5
    for got, ref in zip(grads, refs):
        assert rel_err(got, ref) < 1e-5
    for got, ref in zip(fgrads, frefs):
        assert rel_err(got, ref) < 1e-5


# The fused backward of conv2-like layers (stride 1, 16 channels, 5×5) skips the
# zeros of the expanded pooled gradient (sparse ∂L/∂x and ∂L/∂w kernels in
# csrc/cpu/conv.cpp); these shapes cover its edges: padding, output sizes that the
# pool does not divide (floor mode), windows whose ReLU blocks the gradient, and
# every gradient requested alone (the others not computed).
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [(5, 6, 14, 14, 16, 5, 1, 0), (3, 6, 15, 16, 16, 5, 1, 1),
                                  (2, 6, 17, 13, 16, 5, 1, 2), (2, 6, 12, 12, 8, 5, 1, 0)],
                         ids=["conv2", "odd-pad1", "odd-pad2", "O8"])
@pytest.mark.parametrize("pool", [2, 3])
def test_fused_backward_sparse_edges(rng, case, pool, dtype):
    x, w, b, s, p = make(rng, case, dtype)
    b -= 2.0  # many windows with every y ≤ 0: index 255, no gradient
    y_ref, g, refs = reference(x, w, b, s, p, pool=pool)
    out, idx = ops.conv2d_relu_maxpool2d(x, w, b, s, p, pool=pool, return_indices=True)
    assert np.any(idx == 255) and np.any(idx != 255)
    for which in range(3):
        needs = [i == which for i in range(3)]
        got = [poison(np.empty_like(a)) if n else None for a, n in zip((x, w, b), needs)]
        _C.conv2d_relu_maxpool2d_backward(g.astype(dtype), idx, x, w, *s, *p, pool, *got)
        assert rel_err(got[which], refs[which]) < TOL[dtype]


# conv1-like fused layers (5×5, stride 1, no padding, pool 2, even conv output, rows
# of at most 32 pixels, channels not a multiple of 16) take the parity-split kernels
# (k5_* in csrc/cpu/conv.cpp, float AVX-512) for the forward and ∂L/∂w, ∂L/∂b; other
# shapes and float64 the general path. Odd batches (block tails), channel counts not a
# multiple of 3 (padded tiles), the narrowest rows (8 conv columns), every gradient alone.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [(1, 3, 32, 32, 6, 5, 1, 0), (3, 3, 32, 32, 6, 5, 1, 0),
                                  (17, 3, 32, 32, 6, 5, 1, 0), (3, 1, 20, 24, 4, 5, 1, 0),
                                  (2, 2, 16, 30, 7, 5, 1, 0), (2, 5, 12, 12, 1, 5, 1, 0),
                                  (9, 3, 10, 32, 8, 5, 1, 0)],
                         ids=["conv1-N1", "conv1-N3", "conv1-N17", "C1O4", "C2O7W30", "C5O1W12", "O8N9"])
def test_fused_conv1_like_layers(rng, case, dtype):
    x, w, b, s, p = make(rng, case, dtype)
    b -= 1.0  # some windows with every y ≤ 0: index 255, no gradient
    y_ref, g, refs = reference(x, w, b, s, p, pool=2)
    oh, ow = out_hw(x, w, s, p)
    out = poison(np.empty((x.shape[0], w.shape[0], oh // 2, ow // 2), dtype))
    idx = np.full(out.shape, 77, np.uint8)
    _C.conv2d_relu_maxpool2d(x, w, b, *s, *p, 2, out, idx)
    assert rel_err(out, y_ref) < TOL[dtype]
    assert np.any(idx == 255) and np.all((idx < 4) | (idx == 255))
    for needs in ([True] * 3, [False, True, True], [False, True, False], [False, False, True]):
        got = [poison(np.empty_like(a)) if n else None for a, n in zip((x, w, b), needs)]
        _C.conv2d_relu_maxpool2d_backward(g.astype(dtype), idx, x, w, *s, *p, 2, *got)
        for a, ref in zip(got, refs):
            if a is not None:
                assert rel_err(a, ref) < TOL[dtype]


# The sparse ∂L/∂w reads each im2col patch as whole vectors: C·5·5 values per patch span 1 … 16
# vectors depending on C, the dtype and the ISA's lanes (C = 2 in float64 on AVX2: 13 vectors).
# Every ISA the CPU runs, so that the sanitizer build sees each count's reads.
@pytest.mark.parametrize("isa", ISA_ORDER)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 2, 4, 5, 8])
def test_fused_weight_gradient_for_every_patch_width(rng, isa, dtype, channels):
    x, w, b, s, p = make(rng, (3, channels, 16, 18, 6, 5, 1, 0), dtype)
    _, g, refs = reference(x, w, b, s, p, pool=2)
    out, idx = ops.conv2d_relu_maxpool2d(x, w, b, s, p, return_indices=True)
    with forced_isa(isa):
        _, gw, gb = ops.conv2d_relu_maxpool2d_backward(g.astype(dtype), idx, x, w, s, p, needs=(False, True, True))
    assert rel_err(gw, refs[1]) < TOL[dtype] and rel_err(gb, refs[2]) < TOL[dtype]


def test_fused_conv1_like_forward_of_inf_and_nan_matches_torch(rng):
    # the forward's minimal filtering mixes inputs (inf − inf): images and weights that are not
    # all finite take the direct sums, whose infs and NaNs are torch's (the backward: below)
    x, w, b, s, p = make(rng, (3, 3, 32, 32, 6, 5, 1, 0), np.float32)
    x[1, 2, 7, 9] = np.inf
    x[2, 0, 20, 3] = np.nan
    x2, w2 = x.copy(), w.copy()
    x2[1, 2, 7, 9] = -np.inf
    w2[4, 1, 2, 3] = np.inf
    for xx, ww in ((x, w), (x2, w), (x2, w2)):
        out = ops.conv2d_relu_maxpool2d(xx, ww, b)
        ref = F.max_pool2d(F.relu(F.conv2d(*(torch.tensor(a, dtype=torch.float64) for a in (xx, ww, b)))), 2)
        ref = ref.numpy()
        assert np.array_equal(np.isnan(out), np.isnan(ref)) and np.array_equal(np.isinf(out), np.isinf(ref))
        fin = np.isfinite(ref)
        assert np.allclose(out[fin], ref[fin], rtol=1e-4, atol=1e-4)


def assert_same_non_finite(got, ref, exact=True):
    """got is NaN and ±inf where ref is, and close to ref where both are finite. Not exact: got
    may also be NaN where ref is finite (see the weight case below)."""
    if exact:
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        assert np.array_equal(np.isposinf(got), np.isposinf(ref)) and np.array_equal(np.isneginf(got), np.isneginf(ref))
    else:
        assert np.all(np.isnan(got)[np.isnan(ref)]) and not np.any(np.isfinite(got)[~np.isfinite(ref)])
    fin = np.isfinite(ref) & np.isfinite(got)
    assert rel_err(got[fin], ref[fin]) < 1e-5


# Every backward path (dense, scattered, sparse, parity-split) gives torch's NaN and inf for an x
# holding them: torch multiplies the zeros of ∂L/∂y too, so an inf or NaN in x reaches every
# ∂L/∂w tap whose windows read it (0·inf = NaN). A weight holding one makes ∂L/∂x NaN wherever
# torch's is, and on the dense ∂L/∂x (a convolution over the zero-padded ∂L/∂y) also at border
# positions, where the padding's zeros meet it: NaN there, never a finite value torch lacks.
@pytest.mark.parametrize("isa", ISA_ORDER)
@pytest.mark.parametrize("case", [(3, 3, 32, 32, 6, 5, 1, 0), (3, 6, 14, 14, 16, 5, 1, 0), (3, 6, 15, 13, 16, 5, 1, 1)],
                         ids=["conv1", "conv2", "conv2-odd-pad1"])
@pytest.mark.parametrize("poisoned", ["x", "w"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "conv"])
def test_backward_non_finite_values_match_torch(rng, case, isa, poisoned, fused):
    x, w, b, s, p = make(rng, case, np.float32)
    if poisoned == "x":
        x[1, 2, 7, 9] = np.inf
        x[2, 0, 5, 3] = np.nan
        x[0, 1, 3, 4] = -np.inf
    else:
        w[4, 1, 2, 3] = np.inf
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    ref = F.conv2d(xt, wt, bt, s, p)
    if fused:
        ref = F.max_pool2d(F.relu(ref), 2)
        out, idx = ops.conv2d_relu_maxpool2d(x, w, b, s, p, return_indices=True)
    g = rng.standard_normal(tuple(ref.shape)).astype(np.float32)
    refs = torch.autograd.grad(ref, (xt, wt, bt), torch.tensor(g, dtype=torch.float64))
    with forced_isa(isa):
        if fused:
            grads = ops.conv2d_relu_maxpool2d_backward(g, idx, x, w, s, p, pool=2)
        else:
            grads = ops.conv2d_backward(g, x, w, s, p)
    for got, want, name in zip(grads, refs, "xwb"):
        assert_same_non_finite(got, want.numpy(), exact=poisoned == "x" or name != "x")


def test_fused_conv1_like_is_deterministic_across_thread_counts(rng):
    x, w, b, s, p = make(rng, (19, 3, 32, 32, 6, 5, 1, 0), np.float32)
    out, idx = ops.conv2d_relu_maxpool2d(x, w, b, return_indices=True)
    g = rng.standard_normal(out.shape).astype(np.float32)
    before = oxkernels.get_num_threads()
    try:
        res = []
        for nt in (1, 2, 3):
            oxkernels.set_num_threads(nt)
            res.append((*ops.conv2d_relu_maxpool2d(x, w, b, return_indices=True),
                        *ops.conv2d_relu_maxpool2d_backward(g, idx, x, w, pool=2, needs=(False, True, True))[1:]))
    finally:
        oxkernels.set_num_threads(before)
    for other in res[1:]:
        for a, c in zip(res[0], other):
            assert np.array_equal(a, c)


def test_fused_backward_is_deterministic_across_thread_counts(rng):
    x, w, b, s, p = make(rng, (19, 6, 14, 14, 16, 5, 1, 1), np.float32)
    out, idx = ops.conv2d_relu_maxpool2d(x, w, b, s, p, return_indices=True)
    g = rng.standard_normal(out.shape).astype(np.float32)
    before = oxkernels.get_num_threads()
    try:
        oxkernels.set_num_threads(1)
        one = ops.conv2d_relu_maxpool2d_backward(g, idx, x, w, s, p)
        oxkernels.set_num_threads(3)
        three = ops.conv2d_relu_maxpool2d_backward(g, idx, x, w, s, p)
    finally:
        oxkernels.set_num_threads(before)
    for a, c in zip(one, three):
        assert np.array_equal(a, c)


def test_backward_is_deterministic_across_thread_counts(rng):
    x, w, b, s, p = make(rng, (19, 6, 14, 14, 16, 5, 1, 1), np.float32)
    g = rng.standard_normal((19, 16, 12, 12)).astype(np.float32)
    before = oxkernels.get_num_threads()
    try:
        oxkernels.set_num_threads(1)
        one = ops.conv2d_backward(g, x, w, s, p)
        oxkernels.set_num_threads(3)
        three = ops.conv2d_backward(g, x, w, s, p)
    finally:
        oxkernels.set_num_threads(before)
    for a, c in zip(one, three):
        assert np.array_equal(a, c)


# ---- torch path: autograd, gradcheck, opcheck, compile ------------------------------
@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[7]], ids=[IDS[2], IDS[3], IDS[7]])
@pytest.mark.parametrize("fused", [False, True])
def test_torch_autograd_matches_reference(rng, case, fused):
    x, w, b, s, p = make(rng, case, np.float32)
    y_ref, g, refs = reference(x, w, b, s, p, pool=2 if fused else None)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    y = ops.conv2d_relu_maxpool2d(xt, wt, bt, s, p) if fused else ops.conv2d(xt, wt, bt, s, p)
    assert isinstance(y, torch.Tensor)
    assert rel_err(y, y_ref) < 1e-5
    grads = torch.autograd.grad(y, (xt, wt, bt), torch.tensor(g, dtype=torch.float32))
    for got, ref in zip(grads, refs):
        assert rel_err(got, ref) < 1e-5


def test_torch_backward_accepts_non_contiguous_gradient():
    xt = torch.randn(2, 3, 9, 9, requires_grad=True)
    wt = torch.randn(4, 3, 3, 3, requires_grad=True)
    ops.conv2d(xt, wt).sum().backward()  # sum's gradient is an expanded (stride-0) tensor
    xr, wr = xt.detach().clone().requires_grad_(), wt.detach().clone().requires_grad_()
    F.conv2d(xr, wr).sum().backward()
    assert rel_err(xt.grad, xr.grad) < 1e-5 and rel_err(wt.grad, wr.grad) < 1e-5


@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_float64(with_bias):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True) if with_bias else None
    args = (x, w, b) if with_bias else (x, w)
    assert torch.autograd.gradcheck(lambda *a: ops.conv2d(*a, stride=(2, 1), padding=(1, 2)), args)
    assert torch.autograd.gradcheck(lambda *a: ops.conv2d_relu_maxpool2d(*a, stride=1, padding=1, pool=2), args)
    assert torch.autograd.gradcheck(lambda *a: ops.conv2d_relu_maxpool2d(*a, stride=(1, 2), padding=2, pool=3), args)
    # the custom ops' own autograd (what torch.compile uses; eager mode takes a Function)
    bias = b if with_bias else None
    oxk = torch.ops.oxkernels
    assert torch.autograd.gradcheck(lambda x, w: oxk.conv2d(x, w, bias, [2, 1], [1, 2]), (x, w))
    assert torch.autograd.gradcheck(lambda x, w: oxk.conv2d_relu_maxpool2d(x, w, bias, [1, 1], [1, 1], 2)[0], (x, w))


def test_opcheck():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    oxk = torch.ops.oxkernels
    torch.library.opcheck(oxk.conv2d, (x, w, b, [1, 2], [1, 0]))
    torch.library.opcheck(oxk.conv2d, (x, w, None, [2, 2], [2, 1]))
    torch.library.opcheck(oxk.conv2d_relu_maxpool2d, (x, w, b, [1, 1], [1, 1], 2))
    # the backward ops are not differentiable themselves (no double backward)
    x, w = x.detach(), w.detach()
    g = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    torch.library.opcheck(oxk.conv2d_backward, (g, x, w, [1, 1], [0, 0], [True, True, True]))
    torch.library.opcheck(oxk.conv2d_backward, (g, x, w, [1, 1], [0, 0], [False, True, False]))
    out, idx = oxk.conv2d_relu_maxpool2d(x, w, b.detach(), [1, 1], [1, 1], 2)
    torch.library.opcheck(oxk.conv2d_relu_maxpool2d_backward,
                          (torch.randn_like(out), idx, x, w, [1, 1], [1, 1], 2, [True, True, True]))


def test_torch_compile_fullgraph_training_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(onn.ConvReLUMaxPool2d(3, 6, 5), onn.Conv2d(6, 4, 3, padding=1),
                                torch.nn.Flatten())
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    eager = model(x).square().sum()
    eager.backward()
    eager_grads = [p.grad.clone() for p in (x, *model.parameters())]
    model.zero_grad()
    x.grad = None
    # aot_eager traces forward and backward through the fake impls and the
    # backward custom ops, without a C++ compiler in the loop
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x).square().sum()
    compiled.backward()
    assert rel_err(compiled, eager) < 1e-6
    for p, ref in zip((x, *model.parameters()), eager_grads):
        assert rel_err(p.grad, ref) < 1e-6


# ---- bad input and empty batches -----------------------------------------------------
def arrays(N=2, C=3, H=8, W=8, O=4, K=3):
    return np.ones((N, C, H, W), np.float32), np.ones((O, C, K, K), np.float32), np.ones(O, np.float32)


@pytest.mark.parametrize("fn", ["conv2d", "conv2d_relu_maxpool2d"])
def test_bad_input_is_a_clear_error(fn):
    op = getattr(ops, fn)
    x, w, b = arrays()
    with pytest.raises(ValueError, match="'x' must have 3 or 4 dimensions"):
        op(x[0, 0], w, b)
    with pytest.raises(ValueError, match="'weight' must have 4 dimensions"):
        op(x, w[0], b)
    with pytest.raises(ValueError, match="'weight' has 2 input channels"):
        op(x, w[:, :2].copy(), b)
    with pytest.raises(ValueError, match="larger than the padded input"):
        op(x, np.ones((4, 3, 11, 3), np.float32), b)
    with pytest.raises(ValueError, match="'stride' must be >= 1"):
        op(x, w, b, stride=0)
    with pytest.raises(ValueError, match="'stride' must be >= 1"):
        op(x, w, b, stride=(1, -2))
    with pytest.raises(ValueError, match="'padding' must be >= 0"):
        op(x, w, b, padding=-1)
    with pytest.raises(ValueError, match="'bias' must have shape"):
        op(x, w, b[:3].copy())
    with pytest.raises(TypeError, match="'weight' must have the dtype of 'x'"):
        op(x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match="'x' must be float32 or float64"):
        op(x.astype(np.int32), w, b)
    with pytest.raises(TypeError, match="'stride' must be an int or a pair"):
        op(x, w, b, stride="2")
    with pytest.raises(TypeError, match="'bias' is a torch array"):
        op(x, w, torch.ones(4))


def test_bad_pool_and_backward_arguments():
    x, w, b = arrays()
    with pytest.raises(ValueError, match="'pool'"):
        ops.conv2d_relu_maxpool2d(x, w, b, pool=0)
    with pytest.raises(ValueError, match="'pool'"):
        ops.conv2d_relu_maxpool2d(x, w, b, pool=16)
    g = np.ones((2, 4, 6, 6), np.float32)
    with pytest.raises(ValueError, match="'grad_out' must have shape"):
        ops.conv2d_backward(g[:, :3].copy(), x, w)
    out, idx = ops.conv2d_relu_maxpool2d(x, w, b, return_indices=True)
    with pytest.raises(TypeError, match="'indices' must be uint8"):
        ops.conv2d_relu_maxpool2d_backward(np.ones_like(out), idx.astype(np.int64), x, w)
    bad = idx.copy()
    bad.flat[-1] = 4  # a 2x2 window has positions 0..3 (and 255: no gradient)
    with pytest.raises(ValueError, match="'indices' holds 4 at flat position"):
        ops.conv2d_relu_maxpool2d_backward(np.ones_like(out), bad, x, w)


@pytest.mark.parametrize("stride,padding", [((2**62, 1), 0), (1, (2**61, 0)), ((1, 2**31 + 1), 0)])
def test_stride_and_padding_beyond_the_kernels_range_are_refused(stride, padding):
    """Sizes whose padded buffers would wrap int64 (they used to crash the kernels); the native
    entry point, since the public op could not even allocate such an output."""
    x, w = np.ones((1, 1, 1, 4), np.float32), np.ones((1, 1, 1, 1), np.float32)
    (sh, sw), (ph, pw) = [(v, v) if isinstance(v, int) else v for v in (stride, padding)]
    with pytest.raises(ValueError, match="'stride' must be in|'padding' must be in"):
        _C.conv2d(x, w, None, sh, sw, ph, pw, np.empty((1, 1, 1, 1), np.float32), 0)


@pytest.mark.parametrize("fn", ["conv2d", "conv2d_relu_maxpool2d"])
def test_bad_torch_input_is_a_clear_error(fn):
    op = getattr(ops, fn)
    x, w, b = (torch.ones(s, requires_grad=True) for s in ((2, 3, 8, 8), (4, 3, 3, 3), (4,)))
    with pytest.raises(ValueError, match="'stride' must be >= 1"):
        op(x, w, b, stride=0)
    with pytest.raises(ValueError, match="'padding' must be >= 0"):
        op(x, w, b, padding=(0, -1))
    with pytest.raises(ValueError, match="'x' must have 3 or 4 dimensions"):
        op(x[0, 0], w, b)
    with pytest.raises(ValueError, match="'weight' has 2 input channels"):
        op(x, w[:, :2], b)
    with pytest.raises(ValueError, match="larger than the padded input"):
        op(x, torch.ones(4, 3, 9, 9), b)
    with pytest.raises(ValueError, match="'bias' must have shape"):
        op(x, w, b[:3])
    with pytest.raises(ValueError, match="stride must be 2 ints >= 1"):  # the raw custom op
        getattr(torch.ops.oxkernels, fn)(x, w, b, [0, 1], [0, 0], *([2] if fn != "conv2d" else []))


def test_mixed_torch_dtypes_and_devices_are_errors():
    x = torch.ones(2, 3, 8, 8)
    w = torch.ones(4, 3, 3, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="'weight' must have the dtype of 'x'"):
        ops.conv2d(x, w)
    if torch.cuda.is_available() and oxkernels.info()["cuda_built"]:
        with pytest.raises(TypeError, match="one device"):
            ops.conv2d(x, torch.ones(4, 3, 3, 3, device="cuda"))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_empty_batch_gives_empty_results(kind):
    x, w, b = arrays(N=0)
    if kind == "torch":
        x, w, b = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    y = ops.conv2d(x, w, b)
    out = ops.conv2d_relu_maxpool2d(x, w, b)
    assert tuple(y.shape) == (0, 4, 6, 6) and tuple(out.shape) == (0, 4, 3, 3)
    if kind == "numpy":
        gx, gw, gb = ops.conv2d_backward(np.ones(y.shape, np.float32), x, w)
        assert gx.shape == x.shape and np.all(gw == 0) and np.all(gb == 0)
    else:
        (y.sum() + out.sum()).backward()
        assert x.grad.shape == x.shape and torch.all(w.grad == 0) and torch.all(b.grad == 0)


# ---- drop-in modules -------------------------------------------------------------------
def test_conv2d_module_state_dict_both_ways_and_default_init():
    torch.manual_seed(1)
    ours = onn.Conv2d(3, 6, 5, stride=(1, 2), padding=1)
    theirs = torch.nn.Conv2d(3, 6, 5, stride=(1, 2), padding=1)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    bound = 1 / np.sqrt(3 * 25)  # kaiming_uniform(a=√5) and the bias both give U(−1/√fan_in, 1/√fan_in)
    assert ours.weight.abs().max() <= bound and ours.bias.abs().max() <= bound
    assert ours.weight.std() > bound / 3  # not left at zero
    x = torch.randn(2, 3, 12, 11)
    theirs.load_state_dict(ours.state_dict())
    assert rel_err(ours(x), theirs(x)) < 1e-5
    theirs2 = torch.nn.Conv2d(3, 6, 5, stride=(1, 2), padding=1)
    ours.load_state_dict(theirs2.state_dict())
    assert rel_err(ours(x), theirs2(x)) < 1e-5


def test_fused_module_matches_torch_chain():
    torch.manual_seed(2)
    ours = onn.ConvReLUMaxPool2d(3, 6, 5, padding=2, pool=2)
    ref = torch.nn.Conv2d(3, 6, 5, padding=2)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 3, 13, 13)
    assert rel_err(ours(x), F.max_pool2d(F.relu(ref(x)), 2)) < 1e-5
    ours.load_state_dict(torch.nn.Conv2d(3, 6, 5).state_dict())  # and back


def test_modules_reject_unsupported_arguments():
    with pytest.raises(ValueError, match="dilation"):
        onn.Conv2d(3, 6, 3, dilation=2)
    with pytest.raises(ValueError, match="groups"):
        onn.Conv2d(6, 6, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        onn.Conv2d(3, 6, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding='same'"):
        onn.Conv2d(3, 6, 4, padding="same")
    with pytest.raises(ValueError, match="pool"):
        onn.ConvReLUMaxPool2d(3, 6, 3, pool=0)
    assert onn.Conv2d(3, 6, 3, padding="same").padding == (1, 1)
    assert onn.Conv2d(3, 6, 3, stride=[1, 1], padding="same").padding == (1, 1)  # a list, as torch takes
    for module in (onn.Conv2d, onn.ConvReLUMaxPool2d):  # torch refuses 'same' for strided convolutions
        with pytest.raises(ValueError, match="padding='same' needs stride 1"):
            module(3, 6, 3, stride=2, padding="same")


# ---- CUDA (skipped without a GPU) -------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_matches_reference(rng, case, fused):
    x, w, b, s, p = make(rng, case, np.float32)
    if fused and min(out_hw(x, w, s, p)) < 2:
        pytest.skip("no pooled output")
    y_ref, g, refs = reference(x, w, b, s, p, pool=2 if fused else None)
    xt, wt, bt = (torch.tensor(a, device="cuda", requires_grad=True) for a in (x, w, b))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # a non-default stream
        y = ops.conv2d_relu_maxpool2d(xt, wt, bt, s, p) if fused else ops.conv2d(xt, wt, bt, s, p)
        grads = torch.autograd.grad(y, (xt, wt, bt), torch.tensor(g, dtype=torch.float32, device="cuda"))
    stream.synchronize()
    assert rel_err(y, y_ref) < 1e-5
    for got, ref in zip(grads, refs):
        assert rel_err(got, ref) < 1e-4


@requires_cuda
def test_cuda_poisoned_outputs_and_ties():
    x = torch.tensor([[[[1, 1, 2, 2, -1, -3], [1, 0, 2, 2, -2, -1],
                        [float("nan"), 5, 0, 0, 4, float("nan")], [5, float("nan"), 0, 0, 4, 4]]]], device="cuda")
    w = torch.ones(1, 1, 1, 1, device="cuda")
    b = torch.zeros(1, device="cuda")
    out = poison(torch.empty(1, 1, 2, 3, device="cuda"))
    idx = torch.full((1, 1, 2, 3), 77, dtype=torch.uint8, device="cuda")
    _C.conv2d_relu_maxpool2d(x, w, b, 1, 1, 0, 0, 2, out, idx, torch.cuda.current_stream().cuda_stream)
    cpu_out, cpu_idx = ops.conv2d_relu_maxpool2d(x.cpu(), w.cpu(), b.cpu(), return_indices=True)
    torch.testing.assert_close(out.cpu(), cpu_out, equal_nan=True)
    assert torch.equal(idx.cpu(), cpu_idx)
    g = torch.arange(1.0, 7.0, device="cuda").reshape(1, 1, 2, 3)
    gx, gw, gb = (poison(torch.empty_like(t)) for t in (x, w, b))
    workspace = poison(torch.empty(_C.conv2d_relu_maxpool2d_grad_workspace(1, 1, 1, 1, 1, 4, 6), device="cuda"))
    _C.conv2d_relu_maxpool2d_backward(g, idx, x, w, 1, 1, 0, 0, 2, gx, gw, gb, torch.cuda.current_stream().cuda_stream,
                                      workspace)
    rx, rw, rb = ops.conv2d_relu_maxpool2d_backward(g.cpu(), cpu_idx, x.cpu(), w.cpu())
    for got, ref in ((gx, rx), (gw, rw), (gb, rb)):  # integer data: exact, NaN where the CPU has NaN
        torch.testing.assert_close(got.cpu(), ref, rtol=0, atol=0, equal_nan=True)


def test_cuda_grad_workspace_rule():
    """The CUDA ∂L/∂w, ∂L/∂b sums split the batch into image groups at the course shapes
    (so the CUDA tests below exercise the group sums), and not when one block suffices."""
    course = [(64, 3, 6, 5, 5, 28, 28), (256, 6, 16, 5, 5, 10, 10)]
    for shape in course:
        n_groups = _C.conv2d_grad_workspace(*shape) // (shape[2] * shape[1] * 25 + shape[2])
        assert n_groups > 1 and n_groups <= shape[0], shape
    assert _C.conv2d_grad_workspace(1, 1, 1, 1, 1, 4, 6) == 0


@requires_cuda
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("layer", [(64, 3, 32, 6), (64, 6, 14, 16), (33, 16, 12, 3)], ids=["conv1", "conv2", "odd"])
def test_cuda_course_shapes_with_grouped_grads(rng, layer, fused):
    """Batch sizes where ∂L/∂w, ∂L/∂b are summed in several image groups, then in group order."""
    N, C, H, O = layer
    x, w, b, s, p = make(rng, (N, C, H, H, O, 5, 1, 0), np.float32)
    y_ref, g, refs = reference(x, w, b, s, p, pool=2 if fused else None)
    xt, wt, bt = (torch.tensor(a, device="cuda", requires_grad=True) for a in (x, w, b))
    y = ops.conv2d_relu_maxpool2d(xt, wt, bt) if fused else ops.conv2d(xt, wt, bt)
    gt = torch.tensor(g, dtype=torch.float32, device="cuda")
    grads = torch.autograd.grad(y, (xt, wt, bt), gt)
    assert rel_err(y, y_ref) < 1e-5
    for got, ref in zip(grads, refs):
        assert rel_err(got, ref) < 1e-4
    again = torch.autograd.grad(ops.conv2d_relu_maxpool2d(xt, wt, bt) if fused else ops.conv2d(xt, wt, bt),
                                (xt, wt, bt), gt)
    assert all(torch.equal(a, b) for a, b in zip(grads, again))  # fixed summation order: same bits
    only_bias = ops.conv2d_backward(gt, xt.detach(), wt.detach(), needs=(False, False, True))[2] if not fused \
        else ops.conv2d_relu_maxpool2d_backward(gt, ops.conv2d_relu_maxpool2d(xt, wt, bt, return_indices=True)[1],
                                                xt.detach(), wt.detach(), needs=(False, False, True))[2]
    assert torch.equal(only_bias, grads[2])


@requires_cuda
def test_cuda_backward_without_its_workspace_is_an_error():
    x, w = torch.randn(64, 3, 32, 32, device="cuda"), torch.randn(6, 3, 5, 5, device="cuda")
    g, gw = torch.randn(64, 6, 28, 28, device="cuda"), torch.empty(6, 3, 5, 5, device="cuda")
    with pytest.raises(ValueError, match="argument 'workspace' is required"):
        _C.conv2d_backward(g, x, w, 1, 1, 0, 0, None, gw, None, torch.cuda.current_stream().cuda_stream)
    with pytest.raises(ValueError, match="'workspace' must hold at least"):
        _C.conv2d_backward(g, x, w, 1, 1, 0, 0, None, gw, None, torch.cuda.current_stream().cuda_stream,
                           torch.empty(3, device="cuda"))
    # the fused block's backward holds its dense ∂L/∂y there, so ∂L/∂x alone needs it too
    gout, idx = torch.randn(64, 6, 14, 14, device="cuda"), torch.zeros(64, 6, 14, 14, dtype=torch.uint8, device="cuda")
    gx = torch.empty_like(x)
    with pytest.raises(ValueError, match="argument 'workspace' is required"):
        _C.conv2d_relu_maxpool2d_backward(gout, idx, x, w, 1, 1, 0, 0, 2, gx, None, None,
                                          torch.cuda.current_stream().cuda_stream)
    dense = 64 * 6 * 28 * 28
    with pytest.raises(ValueError, match="'workspace' must hold at least"):
        _C.conv2d_relu_maxpool2d_backward(gout, idx, x, w, 1, 1, 0, 0, 2, gx, None, None,
                                          torch.cuda.current_stream().cuda_stream, torch.empty(dense - 1, device="cuda"))


class _CudaShaped:
    """Stands in for a CUDA tensor where only shapes matter, so the CUDA-only Python paths
    that size workspaces run on any machine."""
    is_cuda = True

    def __init__(self, *shape):
        self.shape = shape

    def dim(self):
        return len(self.shape)

    def new_empty(self, shape):
        return shape


def test_cuda_grad_workspace_request_on_any_machine():
    from oxkernels._torch.conv import grad_workspace

    x, w = _CudaShaped(64, 3, 32, 32), _CudaShaped(6, 3, 5, 5)
    want = _C.conv2d_grad_workspace(64, 3, 6, 5, 5, 28, 28)
    assert grad_workspace(x, w, [1, 1], [0, 0], [False, True, False]) == (want,)
    assert grad_workspace(x, w, [1, 1], [0, 0], [True, False, False]) is None  # ∂L/∂x needs none
    # the fused block's: its dense ∂L/∂y (N·O·OH·OW) before the group sums, for any gradient
    dense = 64 * 6 * 28 * 28
    assert _C.conv2d_relu_maxpool2d_grad_workspace(64, 3, 6, 5, 5, 28, 28) == dense + want
    assert grad_workspace(x, w, [1, 1], [0, 0], [True, False, False], fused=True) == (dense + want,)
    assert grad_workspace(x, w, [1, 1], [0, 0], [False, False, False], fused=True) is None


@pytest.mark.parametrize("fused", [False, True])
def test_one_unbatched_image_as_torch(fused):
    """x of shape (C, H, W) is one image, as torch's conv2d takes it: NumPy and torch, with gradients."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 9, 10, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g)
    if fused:
        ours = lambda *a: ops.conv2d_relu_maxpool2d(*a, padding=1)  # noqa: E731
        ref = F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=1)), 2)
    else:
        ours = lambda *a: ops.conv2d(*a, stride=(2, 1), padding=1)  # noqa: E731
        ref = F.conv2d(x, w, b, stride=(2, 1), padding=1)
    y = ours(x, w, b)
    assert y.shape == ref.shape and rel_err(y, ref) < 1e-12
    for got, want in zip(torch.autograd.grad(y.sum(), (x, w)), torch.autograd.grad(ref.sum(), (x, w))):
        assert rel_err(got, want) < 1e-12
    y_np = ours(x.detach().numpy(), w.detach().numpy(), b.numpy())
    assert isinstance(y_np, np.ndarray) and rel_err(y_np, ref.detach()) < 1e-12
    if fused:
        out, idx = ops.conv2d_relu_maxpool2d(x.detach().numpy(), w.detach().numpy(), padding=1, return_indices=True)
        assert out.shape == idx.shape == tuple(ref.shape)
    with pytest.raises(ValueError, match=r"'x' must have 3 or 4 dimensions \(\(C, H, W\) or"):
        ours(x.detach()[0], w, b)
