"""Property tests: random shapes, layouts and hyperparameters for every op
family, compared with torch in float64 on the CPU (hypothesis draws them; the
number of examples per op is EXAMPLES)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import rel_err  # noqa: E402
from oxkernels import ops  # noqa: E402

EXAMPLES = 40
prop = settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
TOL = 1e-10  # float64 kernels against float64 torch


def arr(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def maybe_strided(a, strided):
    """a itself, or the same values read through a non-contiguous view."""
    if not strided or a.ndim == 0:
        return a
    big = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def agrees(fn, ref):
    """fn() equals ref (to float64 rounding), whatever the layout of its inputs."""
    out = fn()
    if isinstance(out, tuple):
        for o, r in zip(out, ref):
            assert rel_err(o, r) < TOL
    else:
        assert rel_err(out, ref) < TOL


T = torch.from_numpy


@prop
@given(n=st.integers(1, 5), cin=st.integers(1, 4), cout=st.integers(1, 5), h=st.integers(1, 12),
       w=st.integers(1, 12), k=st.integers(1, 5), stride=st.integers(1, 3), pad=st.integers(0, 2),
       seed=st.integers(0, 2**31), strided=st.booleans())
def test_conv2d(n, cin, cout, h, w, k, stride, pad, seed, strided):
    if h + 2 * pad < k or w + 2 * pad < k:
        with pytest.raises(ValueError):
            ops.conv2d(arr(seed, n, cin, h, w), arr(seed + 1, cout, cin, k, k), None, stride, pad)
        return
    x, wt, b = arr(seed, n, cin, h, w), arr(seed + 1, cout, cin, k, k), arr(seed + 2, cout)
    ref = torch.nn.functional.conv2d(T(x), T(wt), T(b), stride, pad).numpy()
    agrees(lambda: ops.conv2d(maybe_strided(x, strided), wt, b, stride, pad), ref)


def _every_window_has_a_tap_inside(extent, out, k, stride, pad, dil):
    return all(any(0 <= i * stride - pad + a * dil < extent for a in range(k)) for i in range(out))


@prop
@given(n=st.integers(1, 4), c=st.integers(1, 4), h=st.integers(1, 13), w=st.integers(1, 13),
       k=st.integers(1, 4), stride=st.integers(1, 4), data=st.data(), dilation=st.integers(1, 3),
       ceil_mode=st.booleans(), seed=st.integers(0, 2**31), ties=st.booleans())
def test_max_pool2d(n, c, h, w, k, stride, data, dilation, ceil_mode, seed, ties):
    padding = data.draw(st.integers(0, k // 2))
    window = dict(padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    x = arr(seed, n, c, h, w)
    if ties:
        x = np.round(x)  # many equal values: the first maximum must win, as in torch
    span = dilation * (k - 1) + 1
    if h + 2 * padding < span or w + 2 * padding < span:
        with pytest.raises(ValueError):
            ops.max_pool2d(x, k, stride, **window)
        return
    xt = T(x).requires_grad_()
    ref = torch.nn.functional.max_pool2d(xt, k, stride, **window)
    # torch's backward writes the gradient of a window with no tap inside the plane (dilation
    # can skip over it) past the plane: it is no reference there (test_pool covers that case).
    assume(_every_window_has_a_tap_inside(h, ref.shape[2], k, stride, padding, dilation) and
           _every_window_has_a_tap_inside(w, ref.shape[3], k, stride, padding, dilation))
    g = arr(seed + 1, *ref.shape)
    ref.backward(T(g))
    assert rel_err(ops.max_pool2d(x, k, stride, **window), ref.detach().numpy()) < TOL
    assert rel_err(ops.max_pool2d_backward(g, x, k, stride, **window), xt.grad.numpy()) < TOL


@prop
@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=4), seed=st.integers(0, 2**31),
       act=st.sampled_from(["relu", "sigmoid"]))
def test_activations(shape, seed, act):
    x = arr(seed, *shape)
    g = arr(seed + 1, *shape)
    fwd, bwd = getattr(ops, act), getattr(ops, act + "_backward")
    xt = T(x).requires_grad_()
    ref = getattr(torch, act)(xt)
    ref.backward(T(g))
    y = fwd(x)
    assert rel_err(y, ref.detach().numpy()) < TOL
    assert rel_err(bwd(g, y), xt.grad.numpy()) < TOL


@prop
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=2), fin=st.integers(1, 40),
       fout=st.integers(1, 40), bias=st.booleans(), act=st.sampled_from([None, "relu", "sigmoid"]),
       seed=st.integers(0, 2**31))
def test_linear(lead, fin, fout, bias, act, seed):
    x, wt = arr(seed, *lead, fin), arr(seed + 1, fout, fin)
    b = arr(seed + 2, fout) if bias else None
    ref = torch.nn.functional.linear(T(x), T(wt), None if b is None else T(b))
    if act:
        ref = getattr(torch, act)(ref)
    assert rel_err(ops.linear(x, wt, b, act), ref.numpy()) < TOL


@prop
@given(m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 70), ta=st.booleans(),
       tb=st.booleans(), seed=st.integers(0, 2**31))
def test_matmul(m, k, n, ta, tb, seed):
    a = arr(seed, k, m) if ta else arr(seed, m, k)
    b = arr(seed + 1, n, k) if tb else arr(seed + 1, k, n)
    ref = (a.T if ta else a) @ (b.T if tb else b)
    assert rel_err(ops.matmul(a, b, trans_a=ta, trans_b=tb), ref) < TOL


@prop
@given(n=st.integers(1, 30), c=st.integers(1, 12), smoothing=st.sampled_from([0.0, 0.1, 0.5]),
       reduction=st.sampled_from(["mean", "sum", "none"]), ignore=st.booleans(),
       scale=st.sampled_from([1.0, 100.0, 1e4]), weighted=st.booleans(), probs=st.booleans(),
       seed=st.integers(0, 2**31))
def test_cross_entropy(n, c, smoothing, reduction, ignore, scale, weighted, probs, seed):
    logits = arr(seed, n, c) * scale
    rng = np.random.default_rng(seed + 1)
    if probs:  # class probabilities (ignore_index does not apply)
        target = rng.dirichlet(np.ones(c), n)
    else:
        target = rng.integers(0, c, n)
        if ignore:
            target[::3] = -100
    weight = rng.random(c) + 0.1 if weighted else None
    lt = T(logits).requires_grad_()
    ref = torch.nn.functional.cross_entropy(lt, T(target), None if weight is None else T(weight),
                                            reduction=reduction, label_smoothing=smoothing)
    got = ops.cross_entropy(logits, target, reduction=reduction, label_smoothing=smoothing, weight=weight)
    if not torch.isfinite(ref).all():  # e.g. mean over all-ignored targets is nan in torch
        assert np.array_equal(np.isnan(got), torch.isnan(ref).numpy())
        return
    # ℓ_i = lse_i − x_it (+ …) is a difference of terms of the logits' size: its rounding error
    # scales with them, not with ℓ (≈ 0 for a confident row); the gradient's scales with g.
    assert rel_err(got, ref.detach().numpy(), floor=scale * n) < TOL
    g = arr(seed + 2, *ref.shape)
    ref.backward(T(g))
    got_grad = ops.cross_entropy_backward(g, logits, target, reduction=reduction, label_smoothing=smoothing,
                                          weight=weight)
    assert rel_err(got_grad, lt.grad.numpy(), floor=float(np.linalg.norm(g))) < TOL


@prop
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), data=st.data(), seed=st.integers(0, 2**31))
def test_softmax_any_dim(shape, data, seed):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = arr(seed, *shape) * 30
    assert rel_err(ops.softmax(x, dim), torch.softmax(T(x), dim).numpy()) < TOL
    assert rel_err(ops.log_softmax(x, dim), torch.log_softmax(T(x), dim).numpy()) < TOL


@prop
@given(n=st.integers(1, 300), d=st.integers(1, 20), batch=st.integers(0, 6), use_rows=st.booleans(),
       seed=st.integers(0, 2**31))
def test_linreg_grad_and_loss(n, d, batch, use_rows, seed):
    X, y = arr(seed, n, d), arr(seed + 1, n)
    theta = arr(seed + 2, batch, d + 1) if batch else arr(seed + 2, d + 1)
    rows = np.random.default_rng(seed).integers(0, n, max(1, n // 3)) if use_rows else None
    Xs, ys = (X[rows], y[rows]) if use_rows else (X, y)
    Xt = np.hstack([Xs, np.ones((len(Xs), 1))])
    th2 = np.atleast_2d(theta)
    r = Xt @ th2.T - ys[:, None]
    grad = (r.T @ Xt / len(Xs)).reshape(theta.shape)
    assert rel_err(ops.linreg_grad(X, y, theta, rows), grad) < TOL
    loss = ((Xt @ th2.T - ys[:, None]) ** 2).mean(0) / 2
    full = ((np.hstack([X, np.ones((n, 1))]) @ th2.T - y[:, None]) ** 2).mean(0) / 2
    assert rel_err(ops.linreg_loss(X, y, theta), full.reshape(theta.shape[:-1])) < TOL
    del loss


@prop
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4), lr=st.floats(1e-4, 1e-1),
       b1=st.floats(0.0, 0.99), b2=st.floats(0.0, 0.9999), wd=st.sampled_from([0.0, 0.01, 0.1]),
       decoupled=st.booleans(), amsgrad=st.booleans(), maximize=st.booleans(), steps=st.integers(1, 4),
       seed=st.integers(0, 2**31))
def test_adam_step(sizes, lr, b1, b2, wd, decoupled, amsgrad, maximize, steps, seed):
    params = [arr(seed + i, s) for i, s in enumerate(sizes)]
    tparams = [T(p.copy()).requires_grad_() for p in params]
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls(tparams, lr=lr, betas=(b1, b2), weight_decay=wd, amsgrad=amsgrad, maximize=maximize,
              foreach=False)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    vmax = [np.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = [arr(seed + 100 * t + i, s) for i, s in enumerate(sizes)]
        for tp, g in zip(tparams, grads):
            tp.grad = T(g.copy())
        opt.step()
        ops.adam_step(params, grads, m, v, t, lr, b1, b2, 1e-8, weight_decay=wd, decoupled=decoupled,
                      amsgrad=amsgrad, max_exp_avg_sqs=vmax if amsgrad else None, maximize=maximize)
    for p, tp in zip(params, tparams):
        assert rel_err(p, tp.detach().numpy()) < 1e-9
