"""oxkernels.optim.Adam / AdamW as drop-ins for torch.optim.Adam / AdamW."""
import copy
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oxkernels.optim as ox_optim  # noqa: E402

from conftest import rel_err, requires_cuda  # noqa: E402

SHAPES = [(7, 5), (1,), (3,), (31,), (33, 2), (127,)]


def flat(tensors):
    return np.concatenate([t.detach().cpu().double().numpy().ravel() for t in tensors])


def make_params(rng, shapes, device="cpu", dtype=torch.float32):
    base = [torch.tensor(rng.standard_normal(s), dtype=dtype, device=device) for s in shapes]
    ours = [torch.nn.Parameter(b.clone()) for b in base]
    ref = [torch.nn.Parameter(b.clone()) for b in base]
    return ours, ref


def set_grads(rng, ours, ref, skip=()):
    for i, (p, r) in enumerate(zip(ours, ref)):
        if i in skip:
            p.grad = r.grad = None
            continue
        g = torch.tensor(rng.standard_normal(tuple(p.shape)), dtype=p.dtype, device=p.device)
        p.grad = g.clone()
        r.grad = g.to(r.dtype)


def assert_same_state(opt, ref_opt, ours, ref, tol=2e-6):
    assert rel_err(flat(ours), flat(ref)) < tol
    for p, r in zip(ours, ref):
        st, rst = opt.state.get(p, {}), ref_opt.state.get(r, {})
        assert st.keys() == rst.keys()
        if st:
            assert float(st["step"]) == float(rst["step"])
            assert st["step"].dtype == rst["step"].dtype and st["step"].device == rst["step"].device
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        mine = [opt.state[p][key] for p in ours if key in opt.state.get(p, {})]
        theirs = [ref_opt.state[r][key] for r in ref if key in ref_opt.state.get(r, {})]
        if theirs:
            assert rel_err(flat(mine), flat(theirs)) < tol, key


GROUP_OPTIONS = list(itertools.product([0.0, 0.1], [False, True], [False, True]))  # weight_decay, amsgrad, maximize


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("wd,amsgrad,maximize", GROUP_OPTIONS)
def test_matches_torch_100_steps_two_groups(rng, cls, wd, amsgrad, maximize):
    ours, ref = make_params(rng, SHAPES)
    def groups(ps):
        return [{"params": ps[:3]}, {"params": ps[3:], "lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.0}]
    kw = dict(lr=1e-2, weight_decay=wd, amsgrad=amsgrad, maximize=maximize)
    opt = getattr(ox_optim, cls)(groups(ours), **kw)
    ref_opt = getattr(torch.optim, cls)(groups(ref), foreach=False, **kw)
    for step in range(100):
        # params[1] gets its first grad at step 10; params[4] has none every third step.
        skip = {1} if step < 10 else ({4} if step % 3 == 0 else set())
        set_grads(rng, ours, ref, skip)
        opt.step()
        ref_opt.step()
        assert_same_state(opt, ref_opt, ours, ref)


def test_decoupled_weight_decay_flag_and_adamw_defaults(rng):
    ours, ref = make_params(rng, SHAPES)
    opt = ox_optim.Adam(ours, lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True)
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.05)
    for _ in range(20):
        set_grads(rng, ours, ref)
        opt.step()
        ref_opt.step()
    assert_same_state(opt, ref_opt, ours, ref)
    assert ox_optim.AdamW(ours).defaults == torch.optim.AdamW(ref).defaults
    assert ox_optim.Adam(ours).defaults == torch.optim.Adam(ref).defaults


def test_large_odd_tensor(rng):
    ours, ref = make_params(rng, [(1000003,), (3,)])
    opt = ox_optim.AdamW(ours, lr=1e-3, amsgrad=True)
    ref_opt = torch.optim.AdamW(ref, lr=1e-3, amsgrad=True, foreach=False)
    for _ in range(3):
        set_grads(rng, ours, ref)
        opt.step()
        ref_opt.step()
        assert_same_state(opt, ref_opt, ours, ref)


def test_float64_params(rng):
    ours, ref = make_params(rng, SHAPES, dtype=torch.float64)
    opt, ref_opt = ox_optim.Adam(ours, weight_decay=0.1), torch.optim.Adam(ref, weight_decay=0.1, foreach=False)
    for _ in range(10):
        set_grads(rng, ours, ref)
        opt.step()
        ref_opt.step()
    assert_same_state(opt, ref_opt, ours, ref, tol=1e-13)


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_dict_round_trip(rng, direction, amsgrad):
    a, b = make_params(rng, SHAPES)
    first_cls, second_cls = (torch.optim.AdamW, ox_optim.AdamW)
    if direction == "ours->torch":
        first_cls, second_cls = second_cls, first_cls
    first = first_cls(a, lr=1e-2, amsgrad=amsgrad)
    for _ in range(10):
        set_grads(rng, a, b)
        first.step()
    sd = first.state_dict()
    # b continues from a's params and a's optimizer state, in the other implementation.
    with torch.no_grad():
        for p, q in zip(a, b):
            q.copy_(p)
    second = second_cls(b, lr=1e-2, amsgrad=amsgrad)
    second.load_state_dict(copy.deepcopy(sd))
    sd2 = second.state_dict()
    assert sd2["param_groups"] == sd["param_groups"]
    for k, st in sd["state"].items():
        assert sd2["state"][k].keys() == st.keys()
        for key, val in st.items():
            assert sd2["state"][k][key].dtype == val.dtype and sd2["state"][k][key].shape == val.shape
            torch.testing.assert_close(sd2["state"][k][key], val, rtol=0, atol=0)
    for _ in range(10):
        set_grads(rng, a, b)
        first.step()
        second.step()
    assert_same_state(second, first, b, a)


def test_state_dict_layout_matches_torch(rng):
    ours, ref = make_params(rng, SHAPES)
    opt, ref_opt = ox_optim.Adam(ours, amsgrad=True), torch.optim.Adam(ref, amsgrad=True)
    set_grads(rng, ours, ref)
    opt.step()
    ref_opt.step()
    sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
    assert sd["param_groups"] == ref_sd["param_groups"]
    assert sd["state"].keys() == ref_sd["state"].keys()
    for k in sd["state"]:
        for key in ref_sd["state"][k]:
            assert sd["state"][k][key].dtype == ref_sd["state"][k][key].dtype, key
            assert sd["state"][k][key].device == ref_sd["state"][k][key].device, key


@pytest.mark.parametrize("tensor_lr", [False, True])
def test_lr_scheduler_and_tensor_lr(rng, tensor_lr):
    ours, ref = make_params(rng, SHAPES)
    lr = (lambda: torch.tensor(0.02)) if tensor_lr else (lambda: 0.02)
    opt, ref_opt = ox_optim.Adam(ours, lr=lr()), torch.optim.Adam(ref, lr=lr(), foreach=False)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=3, gamma=0.5)
    for _ in range(12):
        set_grads(rng, ours, ref)
        opt.step()
        ref_opt.step()
        sched.step()
        ref_sched.step()
        assert float(opt.param_groups[0]["lr"]) == float(ref_opt.param_groups[0]["lr"])
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.02 / 16)
    assert_same_state(opt, ref_opt, ours, ref)


def test_grad_scaler_cpu(rng):
    torch.manual_seed(0)
    models = [torch.nn.Linear(13, 5), torch.nn.Linear(13, 5)]
    models[1].load_state_dict(models[0].state_dict())
    x, y = torch.randn(17, 13), torch.randn(17, 5)
    opts = [ox_optim.Adam(models[0].parameters(), lr=1e-2), torch.optim.Adam(models[1].parameters(), lr=1e-2)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=256.0) for _ in range(2)]
    for step in range(6):
        for model, opt, scaler in zip(models, opts, scalers):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            if step == 3:
                loss = loss * float("inf")  # this step must be skipped and the scale backed off
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert scalers[0].get_scale() == scalers[1].get_scale()
    assert rel_err(flat(models[0].parameters()), flat(models[1].parameters())) < 2e-6
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert float(opts[0].state[p]["step"]) == float(opts[1].state[q]["step"]) == 5.0


def test_closure_zero_grad_hooks_and_add_param_group(rng):
    ours, ref = make_params(rng, SHAPES)
    opt = ox_optim.Adam(ours[:4], lr=1e-2)
    ref_opt = torch.optim.Adam(ref[:4], lr=1e-2, foreach=False)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    for step in range(6):
        if step == 3:
            opt.add_param_group({"params": ours[4:], "lr": 5e-3})
            ref_opt.add_param_group({"params": ref[4:], "lr": 5e-3})
        set_grads(rng, ours, ref)
        loss = opt.step(lambda: torch.tensor(1.5))
        ref_opt.step()
        assert float(loss) == 1.5
    assert calls == ["pre", "post"] * 6
    assert_same_state(opt, ref_opt, ours, ref)
    opt.zero_grad()
    assert all(p.grad is None for p in ours)
    opt.step()  # no grads: nothing changes
    assert_same_state(opt, ref_opt, ours, ref)


def test_step_under_the_profiler_is_recorded(rng):
    ours, ref = make_params(rng, SHAPES)
    opt, ref_opt = ox_optim.Adam(ours), torch.optim.Adam(ref, foreach=False)
    set_grads(rng, ours, ref)
    with torch.autograd.profiler.profile() as prof:
        opt.step()
    ref_opt.step()
    assert any("Optimizer.step#Adam.step" in e.name for e in prof.function_events)
    assert_same_state(opt, ref_opt, ours, ref)


def test_replaced_param_data_and_state_are_picked_up(rng):
    ours, ref = make_params(rng, SHAPES)
    opt, ref_opt = ox_optim.Adam(ours), torch.optim.Adam(ref, foreach=False)
    for step in range(6):
        if step == 2:
            new = torch.randn(SHAPES[0])
            ours[0].data = new.clone()
            ref[0].data = new.clone()
        if step == 4:
            for o, key in ((opt, ours[2]), (ref_opt, ref[2])):
                o.state[key]["exp_avg"] = torch.ones(SHAPES[2])
        set_grads(rng, ours, ref)
        opt.step()
        ref_opt.step()
    assert_same_state(opt, ref_opt, ours, ref)


def test_in_place_update_is_seen_by_autograd():
    p = torch.nn.Parameter(torch.randn(5))
    opt = ox_optim.Adam([p])
    loss = (p * p).sum()  # saves p for backward
    p.grad = torch.ones(5)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_deepcopy_and_pickle_state(rng):
    ours, _ = make_params(rng, SHAPES)
    opt = ox_optim.AdamW(ours)
    for p in ours:
        p.grad = torch.ones_like(p)
    opt.step()
    clone = copy.deepcopy(opt)  # copies params and state, not grads
    assert clone._step_supports_amp_scaling
    for p in clone.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    clone.step()
    assert float(opt.state[ours[0]]["step"]) == 1.0
    assert float(clone.state[clone.param_groups[0]["params"][0]]["step"]) == 2.0


def _laid_out(t, layout):
    """t (row-major) as a dense tensor of the same values in another memory layout."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return t.t().contiguous().t()
    return t.clone()


DENSE_LAYOUTS = [((6, 3, 5, 5), "channels_last"), ((7, 5), "transposed"), ((16, 6, 1, 1), "channels_last"),
                 ((4,), "row-major")]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_channels_last_and_transposed_params_step_like_torch(rng, amsgrad, device):
    """A channels_last CNN (model.to(memory_format=torch.channels_last)) has dense params that
    are not row-major, and autograd gives them grads of the same layout: the step runs over
    them as flat arrays, as torch's does, and keeps every layout."""
    ours = [torch.nn.Parameter(_laid_out(torch.tensor(rng.standard_normal(s), dtype=torch.float32,
                                                      device=device), layout))
            for s, layout in DENSE_LAYOUTS]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref_opt = ox_optim.Adam(ours, lr=1e-2, amsgrad=amsgrad), torch.optim.Adam(ref, lr=1e-2, amsgrad=amsgrad)
    strides = [p.stride() for p in ours]
    for _ in range(5):
        for (shape, layout), p, r in zip(DENSE_LAYOUTS, ours, ref):
            p.grad = _laid_out(torch.tensor(rng.standard_normal(shape), dtype=torch.float32, device=device), layout)
            r.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    assert_same_state(opt, ref_opt, ours, ref)
    assert [p.stride() for p in ours] == strides
    assert all(opt.state[p]["exp_avg"].stride() == p.stride() for p in ours)


def test_row_major_state_loaded_into_a_channels_last_model_is_laid_out_like_its_params(rng):
    """Resuming a row-major checkpoint in a channels_last model: the loaded moments are laid out
    like the params before the first step (the step pairs elements by position in memory), and
    the run continues exactly as the row-major one does (an element-wise step: same bits)."""
    shape = (6, 3, 5, 5)
    row = torch.nn.Parameter(torch.tensor(rng.standard_normal(shape), dtype=torch.float32))
    opt_row = ox_optim.Adam([row], lr=1e-2, amsgrad=True)
    grads = [torch.tensor(rng.standard_normal(shape), dtype=torch.float32) for _ in range(4)]
    for g in grads[:2]:
        row.grad = g.clone()
        opt_row.step()
    cl = torch.nn.Parameter(row.detach().contiguous(memory_format=torch.channels_last))
    opt_cl = ox_optim.Adam([cl], lr=1e-2, amsgrad=True)
    opt_cl.load_state_dict(copy.deepcopy(opt_row.state_dict()))
    for g in grads[2:]:
        row.grad = g.clone()
        cl.grad = g.contiguous(memory_format=torch.channels_last)
        opt_row.step()
        opt_cl.step()
    assert torch.equal(cl, row)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert opt_cl.state[cl][key].stride() == cl.stride(), key
        assert torch.equal(opt_cl.state[cl][key], opt_row.state[row][key]), key


def test_grads_laid_out_unlike_a_channels_last_param_are_refused():
    p = torch.nn.Parameter(torch.randn(6, 3, 5, 5).contiguous(memory_format=torch.channels_last))
    opt = ox_optim.Adam([p])
    p.grad = torch.randn(6, 3, 5, 5)  # row-major: the same elements at other addresses
    with pytest.raises(ValueError, match=r"params\[0\].grad' must have the memory layout of 'its param' "
                                         r"\(strides \(75, 1, 15, 3\)\), got strides \(75, 25, 5, 1\)"):
        opt.step()
    p.grad = p.grad.contiguous(memory_format=torch.channels_last)
    opt.step()


MIXED_DTYPES = {"cpu": torch.float64, "cuda": torch.bfloat16}  # the second dtype of a mixed group
MIXED_TOL = {torch.float32: 2e-6, torch.float64: 1e-12, torch.bfloat16: 4e-3}  # bf16: one rounding step, 2^-8


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_a_group_mixing_dtypes_steps_like_torch(rng, cls, amsgrad, device):
    """torch's Adam takes params of several dtypes in one group, each updated in its own dtype;
    so does ours, one native step per dtype. A bfloat16 param keeps float32 state with us, so
    its reference is torch's float32 step on a float32 copy rounded to bfloat16 after each step
    (torch's own bfloat16 state drifts from that by a few bfloat16 steps in 10 updates)."""
    other = MIXED_DTYPES[device]
    dtypes = [torch.float32, other, torch.float32, other]
    shapes = [(7, 5), (3,), (33,), (4, 4)]
    ours = [torch.nn.Parameter(torch.tensor(rng.standard_normal(s), dtype=d, device=device))
            for s, d in zip(shapes, dtypes)]
    ref = [torch.nn.Parameter(p.detach().clone().to(torch.float32 if p.dtype == torch.bfloat16 else p.dtype))
           for p in ours]
    opt = getattr(ox_optim, cls)(ours, lr=1e-2, amsgrad=amsgrad, weight_decay=0.1)
    ref_opt = getattr(torch.optim, cls)(ref, lr=1e-2, amsgrad=amsgrad, weight_decay=0.1, foreach=False)
    for _ in range(10):
        set_grads(rng, ours, ref)
        opt.step()
        ref_opt.step()
        with torch.no_grad():
            for p, r in zip(ours, ref):
                if p.dtype == torch.bfloat16:
                    r.copy_(r.to(torch.bfloat16))  # the param is stored rounded after each step
    for p, r, dtype in zip(ours, ref, dtypes):
        assert p.dtype == dtype
        assert opt.state[p]["exp_avg"].dtype == (torch.float32 if p.dtype == torch.bfloat16 else p.dtype)
        assert rel_err(p.to(r.dtype), r) < MIXED_TOL[p.dtype]


def test_bad_input():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="Invalid learning rate"):
        ox_optim.Adam([p], lr=-1.0)
    with pytest.raises(ValueError, match="Invalid epsilon"):
        ox_optim.Adam([p], eps=-1.0)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        ox_optim.Adam([p], betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        ox_optim.AdamW([p], betas=(0.9, -0.5))
    with pytest.raises(ValueError, match="Invalid weight_decay"):
        ox_optim.AdamW([p], weight_decay=-1.0)
    with pytest.raises(ValueError, match="differentiable=True"):
        ox_optim.Adam([p], differentiable=True)
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        ox_optim.Adam([p], lr=torch.ones(2))
    with pytest.raises(TypeError, match="complex"):
        ox_optim.Adam([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])
    q = torch.nn.Parameter(torch.randn(4, 3))
    opt = ox_optim.Adam([q])
    q.grad = torch.eye(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    q.grad = torch.ones(3, 4).t()  # right shape, laid out unlike its param
    with pytest.raises(ValueError, match=r"params\[0\].grad' must have the memory layout of 'its param'"):
        opt.step()
    q.grad = torch.ones(4, 3)
    opt.step()
    q.grad = torch.eye(4, 3).to_sparse()  # sparse after the state exists: caught in C++
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    h = torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
    h.grad = torch.ones(3, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="float32 or float64, got bfloat16"):
        ox_optim.Adam([h]).step()


# --- CUDA (skipped without a GPU) ----------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("wd,amsgrad,maximize", GROUP_OPTIONS)
def test_cuda_matches_torch(rng, cls, capturable, wd, amsgrad, maximize):
    ours, ref = make_params(rng, SHAPES + [(100003,)], device="cuda")
    kw = dict(lr=1e-2, weight_decay=wd, amsgrad=amsgrad, maximize=maximize, capturable=capturable)
    opt = getattr(ox_optim, cls)(ours, **kw)
    ref_opt = getattr(torch.optim, cls)(ref, foreach=False, **kw)
    for step in range(30):
        set_grads(rng, ours, ref, skip={2} if step % 4 == 0 else set())
        opt.step()
        ref_opt.step()
    assert_same_state(opt, ref_opt, ours, ref, tol=5e-6)


@requires_cuda
def test_cuda_graph_capture_matches_eager(rng):
    torch.manual_seed(0)
    def make():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).cuda()
    x, y = torch.randn(32, 784, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    lr = torch.tensor(1e-2, device="cuda")
    eager, graphed = make(), make()
    opt_e = ox_optim.AdamW(eager.parameters(), lr=lr.clone(), capturable=True)
    opt_g = ox_optim.AdamW(graphed.parameters(), lr=lr.clone(), capturable=True)
    static_x, static_y = x.clone(), y.clone()

    def train_step(model, opt, xb, yb):
        opt.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()

    # Warm up on a side stream (creates grads and optimizer state), then capture.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            train_step(graphed, opt_g, static_x, static_y)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        train_step(graphed, opt_g, static_x, static_y)
    for _ in range(3):
        train_step(eager, opt_e, x, y)
    for _ in range(10):
        graph.replay()
        train_step(eager, opt_e, x, y)
    torch.cuda.synchronize()
    assert rel_err(flat(graphed.parameters()), flat(eager.parameters())) < 1e-5
    for p, q in zip(graphed.parameters(), eager.parameters()):
        assert float(opt_g.state[p]["step"]) == float(opt_e.state[q]["step"]) == 13.0


@requires_cuda
def test_cuda_bf16_params_keep_float32_state(rng):
    ours, _ = make_params(rng, SHAPES, device="cuda", dtype=torch.bfloat16)
    ref = [torch.nn.Parameter(p.detach().float()) for p in ours]
    opt = ox_optim.AdamW(ours, lr=1e-2, fused=True)
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, foreach=False)
    for _ in range(5):
        for p, r in zip(ours, ref):
            g = torch.randn(p.shape, device="cuda").to(torch.bfloat16)
            p.grad, r.grad = g, g.float()
        opt.step()
        ref_opt.step()
        with torch.no_grad():  # the reference keeps the params we can represent
            for p, r in zip(ours, ref):
                r.copy_(r.to(torch.bfloat16).float())
    for p in ours:
        assert p.dtype == torch.bfloat16 and opt.state[p]["exp_avg"].dtype == torch.float32
    assert rel_err(flat(ours), flat(ref)) < 1e-2


@requires_cuda
def test_cuda_grad_scaler(rng):
    torch.manual_seed(0)
    models = [torch.nn.Linear(13, 5).cuda(), torch.nn.Linear(13, 5).cuda()]
    models[1].load_state_dict(models[0].state_dict())
    x, y = torch.randn(17, 13, device="cuda"), torch.randn(17, 5, device="cuda")
    opts = [ox_optim.Adam(models[0].parameters(), lr=1e-2, fused=True),
            torch.optim.Adam(models[1].parameters(), lr=1e-2, fused=True)]
    scalers = [torch.amp.GradScaler("cuda", init_scale=256.0) for _ in range(2)]
    for step in range(6):
        for model, opt, scaler in zip(models, opts, scalers):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            if step == 3:
                loss = loss * float("inf")
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert rel_err(flat(models[0].parameters()), flat(models[1].parameters())) < 5e-6
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert float(opts[0].state[p]["step"]) == float(opts[1].state[q]["step"]) == 5.0


@requires_cuda
def test_cuda_skipped_step_leaves_mixed_step_counts(rng):
    """A state dict can put one param's step count on the CPU and another's on the GPU. With a
    GradScaler that finds inf grads, the skipped step must leave both counts where they were
    (the CPU count used to be bumped on the host before the kernel saw found_inf)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(13, 5).cuda()
    x, y = torch.randn(17, 13, device="cuda"), torch.randn(17, 5, device="cuda")
    opt = ox_optim.Adam(model.parameters(), lr=1e-2, fused=True)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.state[model.bias]["step"] = opt.state[model.bias]["step"].cpu()  # mixed placement, by hand
    scaler = torch.amp.GradScaler("cuda", init_scale=256.0)
    opt.zero_grad()
    scaler.scale(torch.nn.functional.mse_loss(model(x), y) * float("inf")).backward()
    scaler.step(opt)
    assert [float(opt.state[p]["step"]) for p in (model.weight, model.bias)] == [1.0, 1.0]


def _stepped(make_opt, *, steps=3):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_opt([p])
    for _ in range(steps):
        p.grad = torch.ones(3)
        opt.step()
    return p, opt


@pytest.mark.parametrize("edit", ["clear", "pop", "new_mapping", "replace_entry"])
def test_state_edited_between_steps_is_used_as_torch_uses_it(edit):
    """Clearing, removing or replacing the optimizer's state between steps: the next step
    starts from what the state now holds, as torch's Adam does (the cached native group
    used to keep stepping the old moments)."""
    results = []
    for make in (lambda ps: ox_optim.Adam(ps, lr=0.1), lambda ps: torch.optim.Adam(ps, lr=0.1)):
        p, opt = _stepped(make)
        if edit == "clear":
            opt.state.clear()
        elif edit == "pop":
            opt.state.pop(p)
        elif edit == "new_mapping":
            opt.state = type(opt.state)(dict)
        else:
            opt.state[p] = {k: torch.zeros_like(v) for k, v in opt.state[p].items()}
        p.grad = -torch.ones(3)
        opt.step()
        results.append((p.detach().clone(), float(opt.state[p]["step"])))
    (ours, our_step), (theirs, their_step) = results
    assert our_step == their_step
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("edit", ["replace", "append"])
def test_param_put_in_its_group_is_stepped_as_torch_steps_it(edit):
    results = []
    for make in (lambda ps: ox_optim.Adam(ps, lr=0.1), lambda ps: torch.optim.Adam(ps, lr=0.1)):
        p, opt = _stepped(make, steps=1)
        q = torch.nn.Parameter(torch.zeros(3))
        if edit == "replace":
            opt.param_groups[0]["params"][0] = q
        else:
            opt.param_groups[0]["params"].append(q)
        p.grad, q.grad = torch.ones(3), torch.ones(3)
        opt.step()
        results.append((p.detach().clone(), q.detach().clone()))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs)
