"""Bitwise fingerprint of the CPU kernels, for refactors that must not change a single bit.

Hashes the outputs of every CPU kernel family (conv forward/backward and the fused block,
linear/matmul with each activation, linreg, adam with each flag, the element-wise ops) on
course-like and odd shapes, float32 and float64, on every instruction set this CPU runs.

    PYTHONPATH=python python tools/kernel_fingerprint.py before.json      # on the old build
    PYTHONPATH=python python tools/kernel_fingerprint.py after.json --compare before.json
"""
import argparse
import hashlib
import json

import numpy as np

import oxkernels
import oxkernels.ops as ops


def rng(seed, *shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def cases():
    """(name, output array) of every case, on the current ISA."""
    for dt in (np.float32, np.float64):
        # conv forward/backward: course shapes, odd shapes, k1/3/5, stride 1/2, pad 0/1/2
        for (n, c, h, w, o, k, s, p) in [(5, 3, 32, 32, 6, 5, 1, 0), (4, 6, 14, 14, 16, 5, 1, 0), (3, 3, 17, 13, 4, 3, 2, 1),
                                         (2, 1, 9, 11, 5, 1, 1, 2), (17, 16, 10, 10, 16, 3, 1, 1), (3, 6, 33, 29, 6, 5, 2, 2),
                                         (64, 3, 32, 32, 6, 5, 1, 0), (64, 6, 14, 14, 16, 5, 1, 0)]:
            x, wt, b = rng(1, n, c, h, w, dtype=dt), rng(2, o, c, k, k, dtype=dt), rng(3, o, dtype=dt)
            y = ops.conv2d(x, wt, b, s, p)
            yield f"conv {dt.__name__} {n,c,h,w,o,k,s,p}", y
            g = rng(4, *y.shape, dtype=dt)
            for i, t in enumerate(ops.conv2d_backward(g, x, wt, s, p)):
                yield f"convbwd{i} {dt.__name__} {n,c,h,w,o,k,s,p}", t
            if (h + 2 * p - k) // s + 1 >= 2:
                yf, idx = ops.conv2d_relu_maxpool2d(x, wt, b, s, p, 2, return_indices=True)
                yield f"fused {dt.__name__} {n,c,h,w,o,k,s,p}", yf
                gf = rng(5, *yf.shape, dtype=dt)
                for i, t in enumerate(ops.conv2d_relu_maxpool2d_backward(gf, idx, x, wt, s, p, 2)):
                    yield f"fusedbwd{i} {dt.__name__} {n,c,h,w,o,k,s,p}", t
        # gemm through linear / matmul, every activation, narrow and wide outputs, odd sizes
        for (m, k, nout) in [(64, 784, 64), (64, 64, 32), (64, 32, 10), (256, 400, 120), (256, 120, 84), (33, 84, 10),
                             (7, 31, 129), (129, 127, 33), (1, 1000, 3), (300, 1024, 300)]:
            x, wt, b = rng(6, m, k, dtype=dt), rng(7, nout, k, dtype=dt), rng(8, nout, dtype=dt)
            for act in (None, "relu", "sigmoid"):
                yield f"linear {dt.__name__} {m,k,nout} {act}", ops.linear(x * 30 if act == "sigmoid" else x, wt, b, act)
            yield f"matmul tA {dt.__name__} {m,k,nout}", ops.matmul(x, rng(9, m, nout, dtype=dt), trans_a=True)
            yield f"matmul tB {dt.__name__} {m,k,nout}", ops.matmul(x, wt, trans_b=True)
        # linreg: line (d=1,B=1), single theta, batches (tile path), row subsets
        for (n, d, B) in [(1000, 1, 0), (1003, 7, 0), (517, 13, 4), (2048, 40, 16), (999, 3, 33)]:
            X, y = rng(10, n, d, dtype=dt), rng(11, n, dtype=dt)
            th = rng(12, d + 1, dtype=dt) if B == 0 else rng(12, B, d + 1, dtype=dt)
            yield f"linreg {dt.__name__} {n,d,B}", ops.linreg_grad(X, y, th)
            yield f"linreg rows {dt.__name__} {n,d,B}", ops.linreg_grad(X, y, th, np.arange(0, n, 3, dtype=np.int64))
            yield f"linregloss {dt.__name__} {n,d,B}", ops.linreg_loss(X, y, th)
        # adam: every flag, sizes with tails
        for size in (1, 15, 17, 1000, 50021):
            for flags in [dict(), dict(decoupled=True, weight_decay=0.1), dict(amsgrad=True, weight_decay=0.01),
                          dict(maximize=True), dict(grad_scale=3.0)]:
                p, g, m, v = rng(13, size, dtype=dt), rng(14, size, dtype=dt), rng(15, size, dtype=dt) * 0.1, np.abs(rng(16, size, dtype=dt))
                extra = dict(max_exp_avg_sqs=[np.abs(rng(17, size, dtype=dt))]) if flags.get("amsgrad") else {}
                for step in (1, 2, 3):
                    ops.adam_step([p], [g], [m], [v], step, 1e-2, 0.9, 0.999, 1e-8, **flags, **extra)
                yield f"adam {dt.__name__} {size} {flags}", np.concatenate([p, g, m, v] + extra.get("max_exp_avg_sqs", []))
        # the other elementwise kernels, for completeness
        x = rng(18, 64, 6, 28, 28, dtype=dt) * 40
        yield f"relu {dt.__name__}", ops.relu(x)
        yield f"sigmoid {dt.__name__}", ops.sigmoid(x)
        yield f"pool {dt.__name__}", ops.max_pool2d(x, 2)
        logits = rng(19, 257, 10, dtype=dt) * 10
        yield f"softmax {dt.__name__}", ops.softmax(logits)


def fingerprint():
    hashes = {}
    for isa in ("scalar", "avx2", "avx512"):
        try:
            oxkernels.set_isa(isa)
        except Exception as error:  # an ISA this CPU lacks
            print(f"skipping {isa}: {error}")
            continue
        for name, arr in cases():
            hashes[f"{isa} | {name}"] = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]
    oxkernels.set_isa("auto")
    return hashes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="JSON file to write the hashes to")
    parser.add_argument("--compare", metavar="JSON", help="an earlier output: report every case that differs")
    args = parser.parse_args()
    hashes = fingerprint()
    with open(args.output, "w") as f:
        json.dump(hashes, f, indent=0)
    print(f"{len(hashes)} hashes -> {args.output}")
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)
        differ = sorted(k for k in hashes.keys() & old.keys() if hashes[k] != old[k])
        missing = sorted(old.keys() ^ hashes.keys())
        for key in differ:
            print("differs:", key)
        for key in missing:
            print("only in one:", key)
        print(f"{len(differ)} differ, {len(missing)} in one file only")
        raise SystemExit(1 if differ or missing else 0)


if __name__ == "__main__":
    main()
