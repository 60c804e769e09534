"""oxkernels.ops.adam_step against torch.optim.Adam / AdamW (single-tensor path, float64 where useful).
Its NumPy-only tests (no torch needed) are in test_adam_numpy.py."""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oxkernels  # noqa: E402
import oxkernels._torch  # noqa: E402
from oxkernels.ops import adam_step  # noqa: E402

from conftest import ISA_ORDER, forced_isa, rel_err, requires_cuda  # noqa: E402

SIZES = [(1,), (3,), (7, 5), (31,), (33,), (127, 3)]
OPTIONS = list(itertools.product([0.0, 0.1], [False, True], [False, True], [False, True]))  # wd, decoupled, amsgrad, maximize


def flat(arrays):
    """The arrays of a group as one float64 vector (NumPy)."""
    return np.concatenate([np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, np.float64).ravel()
                           for a in arrays])


def torch_reference(shapes, rng, lr, betas, eps, wd, decoupled, amsgrad, maximize, dtype=torch.float32):
    params = [torch.tensor(rng.standard_normal(s), dtype=dtype, requires_grad=True) for s in shapes]
    opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, amsgrad=amsgrad,
                           maximize=maximize, decoupled_weight_decay=decoupled, foreach=False)
    return params, opt


def run_parity(kind, shapes, rng, steps, wd, decoupled, amsgrad, maximize, betas=(0.9, 0.999), lr=1e-2, eps=1e-8,
               dtype=torch.float32, tol=2e-6):
    ref_params, opt = torch_reference(shapes, rng, lr, betas, eps, wd, decoupled, amsgrad, maximize, dtype)
    conv = (lambda t: t.detach().numpy().copy()) if kind == "numpy" else (lambda t: t.detach().clone())
    params = [conv(p) for p in ref_params]
    m = [conv(torch.zeros_like(p)) for p in ref_params]
    v = [conv(torch.zeros_like(p)) for p in ref_params]
    vmax = [conv(torch.zeros_like(p)) for p in ref_params] if amsgrad else None
    for t in range(1, steps + 1):
        grads = [torch.tensor(rng.standard_normal(p.shape), dtype=dtype) for p in ref_params]
        for p, g in zip(ref_params, grads):
            p.grad = g.clone()
        opt.step()
        adam_step(params, [conv(g) for g in grads], m, v, t, lr, betas[0], betas[1], eps, weight_decay=wd,
                  decoupled=decoupled, amsgrad=amsgrad, max_exp_avg_sqs=vmax, maximize=maximize)
        # One relative error over the whole group: a single element that happens to be near 0
        # would turn float32 rounding of O(1) terms into a large per-tensor relative error.
        states = [opt.state[p] for p in ref_params]
        assert rel_err(flat(params), flat(ref_params)) < tol, f"params at step {t}"
        assert rel_err(flat(m), flat([s["exp_avg"] for s in states])) < tol, f"exp_avg at step {t}"
        assert rel_err(flat(v), flat([s["exp_avg_sq"] for s in states])) < tol, f"exp_avg_sq at step {t}"
        if amsgrad:
            assert rel_err(flat(vmax), flat([s["max_exp_avg_sq"] for s in states])) < tol, f"max at step {t}"


@pytest.mark.parametrize("wd,decoupled,amsgrad,maximize", OPTIONS)
def test_parity_every_option_torch_tensors(rng, wd, decoupled, amsgrad, maximize):
    run_parity("torch", SIZES, rng, 100, wd, decoupled, amsgrad, maximize)


@pytest.mark.parametrize("wd,decoupled,amsgrad,maximize", [(0.0, False, False, False), (0.1, True, True, True),
                                                           (0.05, False, True, False)])
def test_parity_numpy(rng, wd, decoupled, amsgrad, maximize):
    run_parity("numpy", SIZES, rng, 100, wd, decoupled, amsgrad, maximize)


def test_parity_small_beta1_and_other_hyper(rng):
    # beta1 <= 0.5 takes torch's other lerp branch; large eps and lr change the balance of the terms.
    run_parity("torch", SIZES, rng, 50, 0.01, False, False, False, betas=(0.3, 0.9), lr=0.1, eps=1e-3)


def test_parity_float64(rng):
    run_parity("torch", SIZES, rng, 50, 0.1, True, True, False, dtype=torch.float64, tol=1e-13)


@pytest.mark.parametrize("wd,decoupled,amsgrad,maximize", [(0.0, False, False, False), (0.1, True, True, True)])
def test_parity_large_odd_tensor(rng, wd, decoupled, amsgrad, maximize):
    run_parity("torch", [(1000003,), (5,)], rng, 4, wd, decoupled, amsgrad, maximize)


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_every_isa_agrees(rng, isa):
    with forced_isa(isa):
        run_parity("torch", SIZES + [(4099,)], rng, 20, 0.1, False, True, True)


def test_grad_scale_divides_and_writes_back_unscaled_grads(rng):
    shapes = [(33,), (7, 3)]
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    scale = 1024.0
    ref_p = [torch.tensor(x, requires_grad=True) for x in p0]
    opt = torch.optim.Adam(ref_p, lr=1e-2, foreach=False)
    for p, g in zip(ref_p, g0):
        p.grad = torch.tensor(g) * scale / scale  # the unscaled grad torch would see after unscale_
    opt.step()
    p = [x.copy() for x in p0]
    g = [x * np.float32(scale) for x in g0]
    m = [np.zeros_like(x) for x in p0]
    v = [np.zeros_like(x) for x in p0]
    adam_step(p, g, m, v, 1, 1e-2, 0.9, 0.999, 1e-8, grad_scale=scale)
    for i in range(len(shapes)):
        assert rel_err(p[i], ref_p[i]) < 1e-6
        assert rel_err(g[i], g0[i]) < 1e-7


def test_torch_arrays_written_in_place_get_new_versions():
    """A parameter that a graph saved, then updated by adam_step: backward through that graph
    raises, as after torch's own optimizers (the step bumps the version counters it writes)."""
    param, grad = torch.randn(5, requires_grad=True), torch.randn(5)
    exp_avg, exp_avg_sq = torch.zeros(5), torch.zeros(5)
    saved = param * param  # saves param for its own backward
    versions = [t._version for t in (param, exp_avg, exp_avg_sq)]
    with torch.no_grad():
        adam_step([param], [grad], [exp_avg], [exp_avg_sq], 1, 1e-2, 0.9, 0.999, 1e-8)
    assert all(t._version > v for t, v in zip((param, exp_avg, exp_avg_sq), versions))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()


def test_torch_and_numpy_arrays_do_not_mix():
    p, m, v = [np.ones(5, np.float32)], [np.zeros(5, np.float32)], [np.zeros(5, np.float32)]
    with pytest.raises(TypeError, match="is a torch array but"):
        adam_step(p, [torch.ones(5)], m, v, 1, 1e-3, 0.9, 0.999, 1e-8)


# --- CUDA (skipped without a GPU) ----------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("wd,decoupled,amsgrad,maximize", OPTIONS)
def test_cuda_parity_with_torch(rng, wd, decoupled, amsgrad, maximize):
    shapes = [(1,), (3,), (1000003,), (127, 3), (4096,)]
    params = [torch.tensor(rng.standard_normal(s), dtype=torch.float32, device="cuda") for s in shapes]
    ref = [p.clone().requires_grad_(True) for p in params]
    opt = torch.optim.Adam(ref, lr=1e-2, weight_decay=wd, amsgrad=amsgrad, maximize=maximize,
                           decoupled_weight_decay=decoupled, foreach=False)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    vmax = [torch.zeros_like(p) for p in params] if amsgrad else None
    for t in range(1, 21):
        grads = [torch.randn_like(p) for p in params]
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        adam_step(params, grads, m, v, t, 1e-2, 0.9, 0.999, 1e-8, weight_decay=wd, decoupled=decoupled,
                  amsgrad=amsgrad, max_exp_avg_sqs=vmax, maximize=maximize)
    for i, r in enumerate(ref):
        assert rel_err(params[i], r) < 2e-6
        assert rel_err(m[i], opt.state[r]["exp_avg"]) < 2e-6
        assert rel_err(v[i], opt.state[r]["exp_avg_sq"]) < 2e-6


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_low_precision_params_float32_state(rng, dtype):
    shapes = [(3,), (1001,), (4096,)]
    p32 = [torch.tensor(rng.standard_normal(s), dtype=torch.float32, device="cuda").to(dtype).float() for s in shapes]
    params = [p.to(dtype) for p in p32]
    m = [torch.zeros_like(p) for p in p32]
    v = [torch.zeros_like(p) for p in p32]
    ref_m = [torch.zeros_like(p) for p in p32]
    ref_v = [torch.zeros_like(p) for p in p32]
    grads = [torch.randn_like(p).to(dtype) for p in p32]
    adam_step(params, grads, m, v, 1, 1e-2, 0.9, 0.999, 1e-8)
    # Reference: the same step in float32 from the same (rounded) values, then rounded to dtype.
    adam_step(p32, [g.float() for g in grads], ref_m, ref_v, 1, 1e-2, 0.9, 0.999, 1e-8)
    for i in range(len(shapes)):
        assert params[i].dtype == dtype
        # Same float math; allow a one-ulp rounding flip of the 16-bit result.
        torch.testing.assert_close(params[i].float(), p32[i].to(dtype).float(), rtol=8e-3, atol=1e-6)
        torch.testing.assert_close(m[i], ref_m[i])
        torch.testing.assert_close(v[i], ref_v[i])


@requires_cuda
def test_cuda_bad_input():
    p = [torch.ones(5, device="cuda")]
    with pytest.raises(TypeError, match="all arrays must be on one device"):
        adam_step(p, [torch.ones(5)], [torch.zeros(5, device="cuda")], [torch.zeros(5, device="cuda")],
                  1, 1e-3, 0.9, 0.999, 1e-8)
    with pytest.raises(TypeError, match=r"'exp_avgs\[0\]' must be float32"):
        adam_step([torch.ones(5, device="cuda", dtype=torch.bfloat16)], [torch.ones(5, device="cuda", dtype=torch.bfloat16)],
                  [torch.zeros(5, device="cuda", dtype=torch.bfloat16)], [torch.zeros(5, device="cuda")],
                  1, 1e-3, 0.9, 0.999, 1e-8)


def test_custom_op_opcheck_and_compile(rng):
    oxkernels._torch.load()  # registers the torch ops (done on first use of a torch tensor)
    def arrays(n):
        return [torch.tensor(rng.standard_normal(n), dtype=torch.float32) for _ in range(5)]
    p, g, m, v, vmax = zip(*[arrays(n) for n in (3, 33)])
    m = [x.zero_() for x in m]
    v = [x.zero_() for x in v]
    vmax = [x.zero_() for x in vmax]
    torch.library.opcheck(torch.ops.oxkernels.adam_step_.default,
                          (list(p), list(g), m, v, vmax, 1.0, 1e-2, 0.9, 0.999, 1e-8, 0.1, True, True, False, None))

    def step(params, grads, ms, vs):
        adam_step(params, grads, ms, vs, 1, 1e-2, 0.9, 0.999, 1e-8)

    eager = [x.clone() for x in p]
    compiled = [x.clone() for x in p]
    step(eager, list(g), [torch.zeros_like(x) for x in p], [torch.zeros_like(x) for x in p])
    torch.compile(step, backend="eager", fullgraph=True)(compiled, list(g), [torch.zeros_like(x) for x in p],
                                                          [torch.zeros_like(x) for x in p])
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
