"""oxkernels.ops.adam_step on NumPy arrays, without torch: against the update rule written out in
NumPy float64 (torch.optim.Adam's, with its weight decay, amsgrad and maximize options), and its
argument checks. (The parity with torch itself is in test_adam.py.)"""
import itertools

import numpy as np
import pytest

import oxkernels
from oxkernels.ops import adam_step

from conftest import rel_err


def reference_step(p, g, m, v, vmax, t, lr, beta1, beta2, eps, wd, decoupled, amsgrad, maximize):
    """One Adam step in float64, in place:
        g ← −g (maximize);  g ← g + wd·p (L2)  or  p ← p·(1 − lr·wd) (decoupled);
        m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  vmax ← max(vmax, v) (amsgrad);
        p ← p − lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)   (√vmax with amsgrad)."""
    g = -g if maximize else g
    if wd and decoupled:
        p *= 1 - lr * wd
    elif wd:
        g = g + wd * p
    m[:] = beta1 * m + (1 - beta1) * g
    v[:] = beta2 * v + (1 - beta2) * g * g
    second = v
    if amsgrad:
        np.maximum(vmax, v, out=vmax)
        second = vmax
    p -= lr / (1 - beta1 ** t) * m / (np.sqrt(second) / np.sqrt(1 - beta2 ** t) + eps)


OPTIONS = list(itertools.product([0.0, 0.1], [False, True], [False, True], [False, True]))  # wd, decoupled, amsgrad, maximize


@pytest.mark.parametrize("wd,decoupled,amsgrad,maximize", OPTIONS)
@pytest.mark.parametrize("dtype,steps,tol", [(np.float64, 60, 1e-12), (np.float32, 20, 1e-5)])
def test_matches_the_update_rule(rng, wd, decoupled, amsgrad, maximize, dtype, steps, tol):
    shapes = [(1,), (7, 5), (33,), (1000,)]
    ref = [rng.standard_normal(s) for s in shapes]
    ref_m, ref_v, ref_vmax = ([np.zeros(s) for s in shapes] for _ in range(3))
    p = [a.astype(dtype) for a in ref]
    m, v, vmax = ([np.zeros(s, dtype) for s in shapes] for _ in range(3))
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
    for t in range(1, steps + 1):
        grads = [rng.standard_normal(s) for s in shapes]
        for i, g in enumerate(grads):
            reference_step(ref[i], g, ref_m[i], ref_v[i], ref_vmax[i], t, hyper["lr"], hyper["beta1"],
                           hyper["beta2"], hyper["eps"], wd, decoupled, amsgrad, maximize)
        adam_step(p, [g.astype(dtype) for g in grads], m, v, t, **hyper, weight_decay=wd, decoupled=decoupled,
                  amsgrad=amsgrad, max_exp_avg_sqs=vmax if amsgrad else None, maximize=maximize)
    for ours, theirs in [(p, ref), (m, ref_m), (v, ref_v)] + ([(vmax, ref_vmax)] if amsgrad else []):
        assert rel_err(np.concatenate([a.ravel() for a in ours]), np.concatenate([a.ravel() for a in theirs])) < tol


def test_thread_count_does_not_change_result(rng):
    base = [rng.standard_normal(n).astype(np.float32) for n in (100003, 17, 70001)]
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in base]
    results = []
    threads = oxkernels.get_num_threads()
    try:
        for n in (1, 2, 3):
            oxkernels.set_num_threads(n)
            p = [x.copy() for x in base]
            m = [np.zeros_like(x) for x in base]
            v = [np.zeros_like(x) for x in base]
            for t in range(1, 4):
                adam_step(p, grads, m, v, t, 1e-2, 0.9, 0.999, 1e-8, weight_decay=0.1)
            results.append(p)
    finally:
        oxkernels.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_single_arrays_and_empty_inputs(rng):
    p = rng.standard_normal(5).astype(np.float32)
    g = rng.standard_normal(5).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    before = p.copy()
    adam_step(p, g, m, v, 1, 0.1, 0.9, 0.999, 1e-8)  # one array each, not lists
    # First step: m̂ = g, v̂ = g², so θ moves by lr·g/(|g| + ε) ≈ lr·sign(g).
    np.testing.assert_allclose(before - p, 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-5)
    e = np.zeros((0, 3), np.float32)
    adam_step([e], [e.copy()], [e.copy()], [e.copy()], 1, 0.1, 0.9, 0.999, 1e-8)
    adam_step([], [], [], [], 1, 0.1, 0.9, 0.999, 1e-8)


def _arrays(n=5, dtype=np.float32):
    return [np.zeros(n, dtype) + 1], [np.ones(n, dtype)], [np.zeros(n, dtype)], [np.zeros(n, dtype)]


@pytest.mark.parametrize("kw,exc,match", [
    (dict(lr=-1.0), ValueError, "'lr' must be >= 0"),
    (dict(eps=-1e-8), ValueError, "'eps' must be >= 0"),
    (dict(beta1=1.0), ValueError, r"'beta1' must be in \[0, 1\)"),
    (dict(beta2=-0.1), ValueError, r"'beta2' must be in \[0, 1\)"),
    (dict(weight_decay=-1.0), ValueError, "'weight_decay' must be >= 0"),
    (dict(step=0), ValueError, "'step' must be >= 1"),
])
def test_bad_hyperparameters(kw, exc, match):
    p, g, m, v = _arrays()
    args = dict(step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    args.update(kw)
    with pytest.raises(exc, match=match):
        adam_step(p, g, m, v, **args)


def test_bad_arrays():
    p, g, m, v = _arrays()
    hyper = (1, 1e-3, 0.9, 0.999, 1e-8)
    with pytest.raises(ValueError, match="'grads' must hold one array per param"):
        adam_step(p, g + g, m, v, *hyper)
    with pytest.raises(ValueError, match=r"'exp_avgs\[0\]' must have the shape of 'params\[0\]'"):
        adam_step(p, g, [np.zeros(6, np.float32)], v, *hyper)
    with pytest.raises(TypeError, match=r"'grads\[0\]' must be float32, got float64"):
        adam_step(p, [np.ones(5)], m, v, *hyper)
    with pytest.raises(TypeError, match=r"'params\[1\]' must have the dtype of 'params\[0\]'"):
        adam_step(p + [np.ones(5)], g + [np.ones(5)], m + [np.zeros(5)], v + [np.zeros(5)], *hyper)
    with pytest.raises(TypeError, match=r"'params\[0\]' must be float32 or float64, got int32"):
        adam_step([np.ones(5, np.int32)], g, m, v, *hyper)
    with pytest.raises(TypeError, match="must be a NumPy array or a torch tensor"):
        adam_step(p, [[1.0] * 5], m, v, *hyper)
    with pytest.raises(ValueError, match=r"'params\[0\]' must be dense .*got shape \(5,\) with strides \(2,\)"):
        adam_step([np.ones(10, np.float32)[::2]], g, m, v, *hyper)
    with pytest.raises(ValueError, match=r"'exp_avgs\[0\]' must have the memory layout of 'params\[0\]' "
                                         r"\(strides \(3, 1\)\), got strides \(1, 2\)"):
        adam_step([np.ones((2, 3), np.float32)], [np.ones((2, 3), np.float32)],
                  [np.zeros((3, 2), np.float32).T], [np.zeros((2, 3), np.float32)], *hyper)
    ro = np.ones(5, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"'exp_avgs\[0\]' must be writable"):
        adam_step(p, g, [ro], v, *hyper)
    adam_step(p, [ro], m, v, *hyper)  # read-only grads are fine: only read...
    with pytest.raises(ValueError, match=r"'grads\[0\]' must be writable"):
        adam_step(p, [ro], m, v, *hyper, grad_scale=2.0)  # ...unless unscaled grads are written back
    with pytest.raises(ValueError, match="amsgrad=True needs argument 'max_exp_avg_sqs'"):
        adam_step(p, g, m, v, *hyper, amsgrad=True)
    with pytest.raises(ValueError, match="'max_exp_avg_sqs' must hold one array per param"):
        adam_step(p, g, m, v, *hyper, amsgrad=True, max_exp_avg_sqs=[])
