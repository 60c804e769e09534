"""Where a GPU op's time goes: for each course-shape case, oxkernels and torch side by side,

  wall   µs per call, synchronised after each call (what the benchmarks time);
  queue  µs per call over 200 calls with one synchronisation (max of host dispatch and GPU time);
  gpu    µs of kernel time per call (torch.profiler), with the kernels that take it.

    python tools/gpu_profile.py [substring ...]     # only the cases whose name contains one
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

from oxkernels import models, nn as oxnn, ops, optim

torch.backends.cudnn.benchmark = True
dev = os.environ.get("OXKERNELS_PROFILE_DEVICE", "cuda")  # "cpu" only to smoke-test this script
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
gen = torch.Generator(device=dev).manual_seed(0)


def rand(*shape, grad=False, scale=1.0):
    t = torch.randn(*shape, device=dev, generator=gen) * scale
    return t.requires_grad_(grad)


def fwd_bwd(fn, inputs, *args):
    def run():
        out = fn(*args)
        torch.autograd.grad(out, inputs, torch.ones_like(out))
    return run


def conv_cases():
    for name, (C, H, O) in {"conv1": (3, 32, 6), "conv2": (6, 14, 16)}.items():
        for n in (64, 256):
            x = rand(n, C, H, H, grad=name == "conv2")
            w, b = rand(O, C, 5, 5, grad=True, scale=0.1), rand(O, grad=True)
            ins = [t for t in (x, w, b) if t.requires_grad]
            yield f"conv2d fwd+bwd {name} N={n}", fwd_bwd(ops.conv2d, ins, x, w, b), fwd_bwd(F.conv2d, ins, x, w, b)
            yield (f"conv-relu-pool fwd+bwd {name} N={n}", fwd_bwd(ops.conv2d_relu_maxpool2d, ins, x, w, b),
                   fwd_bwd(lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b)), 2), ins, x, w, b))
            y = rand(n, O, H - 4, H - 4, grad=True)
            yield f"max_pool2d fwd+bwd {name} N={n}", fwd_bwd(ops.max_pool2d, [y], y, 2), fwd_bwd(F.max_pool2d, [y], y, 2)
            yield f"relu fwd+bwd {name} N={n}", fwd_bwd(ops.relu, [y], y), fwd_bwd(F.relu, [y], y)
            yield f"relu fwd {name} N={n}", lambda y=y: ops.relu(y), lambda y=y: F.relu(y)


def linear_cases():
    for fan_in, fan_out in ((784, 64), (64, 32), (400, 120), (84, 10)):
        for n in (64, 256, 1024):
            x, w, b = rand(n, fan_in, grad=True), rand(fan_out, fan_in, grad=True, scale=0.05), rand(fan_out, grad=True)
            yield (f"linear fwd+bwd {fan_in}x{fan_out}-relu b{n}",
                   fwd_bwd(lambda x, w, b: ops.linear(x, w, b, activation="relu"), [x, w, b], x, w, b),
                   fwd_bwd(lambda x, w, b: F.relu(F.linear(x, w, b)), [x, w, b], x, w, b))
    for n in (64, 1024):
        z, t = rand(n, 10, grad=True), torch.randint(0, 10, (n,), device=dev)
        yield (f"cross_entropy fwd+bwd N={n}", fwd_bwd(ops.cross_entropy, [z], z, t),
               fwd_bwd(F.cross_entropy, [z], z, t))


def step_cases():
    for net, shape in (("mlp", (1, 28, 28)), ("lenet", (3, 32, 32))):
        x, y = rand(64, *shape), torch.randint(0, 10, (64,), device=dev)
        steps = {}
        for impl in ("oxkernels", "torch"):
            torch.manual_seed(0)
            model = (models.MLP() if net == "mlp" else models.LeNet()) if impl == "oxkernels" else \
                models.torch_reference(net)
            model = model.to(dev)
            opt = (optim.Adam if impl == "oxkernels" else torch.optim.Adam)(model.parameters(), lr=1e-3)
            loss_fn = oxnn.CrossEntropyLoss() if impl == "oxkernels" else torch.nn.CrossEntropyLoss()

            def step(model=model, opt=opt, loss_fn=loss_fn, x=x, y=y):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()
            steps[impl] = step
        yield f"train step {net} b64", steps["oxkernels"], steps["torch"]


def wall_us(fn, reps=100):
    best = float("inf")
    for _ in range(3):
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
            sync()
        best = min(best, (time.perf_counter() - t) / reps)
    return best * 1e6


def queue_us(fn, reps=200):
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps * 1e6


def kernels_us(fn, reps=20):
    from torch.profiler import ProfilerActivity, profile

    activity, kind = ((ProfilerActivity.CUDA, torch.autograd.DeviceType.CUDA) if dev == "cuda"
                      else (ProfilerActivity.CPU, torch.autograd.DeviceType.CPU))
    with profile(activities=[activity]) as prof:
        for _ in range(reps):
            fn()
        sync()
    per_kernel = {}
    for e in prof.events():
        if e.device_type == kind:
            per_kernel[e.name] = per_kernel.get(e.name, 0.0) + e.time_range.elapsed_us() / reps
    return sum(per_kernel.values()), sorted(per_kernel.items(), key=lambda kv: -kv[1])


def main(filters):
    print(f"{torch.cuda.get_device_name() if dev == 'cuda' else dev}  torch {torch.__version__}")
    for case, ours, theirs in (*conv_cases(), *linear_cases(), *step_cases()):
        if filters and not any(f in case for f in filters):
            continue
        print(f"\n## {case}")
        for impl, fn in (("oxkernels", ours), ("torch", theirs)):
            for _ in range(5):
                fn()
            total, top = kernels_us(fn)
            top_s = "; ".join(f"{name[:48]} {us:.1f}" for name, us in top[:5])
            print(f"{impl:9s} wall {wall_us(fn):8.1f}  queue {queue_us(fn):8.1f}  gpu {total:8.1f}  | {top_s}")


if __name__ == "__main__":
    main(sys.argv[1:])
