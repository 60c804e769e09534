"""Timing helpers for the benchmarks' quick summary modes (`python benchmarks/bench_<x>.py`),
which print oxkernels and torch side by side without pytest-benchmark.

On a shared machine (the 2-core VM varies by ±30 % within minutes) two rows timed
minutes apart can differ more than the two implementations do; taking turns inside
one measurement makes that drift hit both alike (interleaved_medians_us). Loops that
allocate large buffers each call are timed in alternating blocks of many calls instead
(blocked_medians_us): alternating two allocation patterns call by call changes what the
allocator hands back (fresh pages, cold lines) to both."""
import statistics
import time


def time_us(fn, sync, reps=50):
    """Best of 5 batches of `reps` calls, µs per call (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    sync()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t) / reps)
    return best * 1e6


def interleaved_medians_us(fns, sync, reps=100, inner=1):
    """Median µs per call of each function in `fns` (name → callable), the functions taking
    turns, their order reversed every other repetition; each turn times `inner` calls."""
    for f in fns.values():
        for _ in range(5):
            f()
    sync()
    times = {k: [] for k in fns}
    for r in range(reps):
        for k in (list(fns) if r % 2 else list(fns)[::-1]):
            t = time.perf_counter()
            for _ in range(inner):
                fns[k]()
            sync()
            times[k].append((time.perf_counter() - t) / inner * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def blocked_medians_us(fns, sync, blocks=3, reps=200):
    """Median µs per call of each function in `fns`: `blocks` rounds in which each function in
    turn runs `reps` calls back to back (after a warm-up of reps // 10), timed per call; the
    result is the median over its blocks of each block's median."""
    per_block = {k: [] for k in fns}
    for _ in range(blocks):
        for k, f in fns.items():
            for _ in range(max(1, reps // 10)):
                f()
            sync()
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                f()
                sync()
                times.append((time.perf_counter() - t) * 1e6)
            per_block[k].append(statistics.median(times))
    return {k: statistics.median(v) for k, v in per_block.items()}
