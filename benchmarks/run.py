"""Run the pytest-benchmark suites and print side-by-side ratio tables.

    python benchmarks/run.py                       # every benchmarks/bench_*.py
    python benchmarks/run.py bench_adam.py --write # ... and update benchmarks/RESULTS.md

Each benchmark test sets `benchmark.group` and `benchmark.extra_info` with
`impl` ("oxkernels", "torch", "numpy", ...), `device`, and optionally `bytes`
and `flops`. Within a group, every other implementation is compared with
oxkernels: ratio = their median time / ours (> 1 means oxkernels is faster).
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def copy_bandwidth_gbs(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Best-of-n NumPy copy of nbytes, counting bytes read plus bytes written."""
    import time

    import numpy as np

    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best / 1e9


def cpu_isa() -> str:
    """The instruction set our CPU kernels run with here (avx512, avx2 or scalar)."""
    import oxkernels

    return oxkernels.info()["isa"]


def machine_line(device: str) -> str:
    import numpy as np

    parts = [f"{cpu_model()}, {os.cpu_count()} cores, {cpu_isa()} kernels", f"numpy {np.__version__}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if device == "cuda" and torch.cuda.is_available():
            parts.insert(0, torch.cuda.get_device_name())
    except ImportError:
        pass
    if device == "cpu":
        parts.append(f"copy bandwidth {copy_bandwidth_gbs():.1f} GB/s (256 MB, read+write)")
    return "; ".join(parts)


def run_suite(path: Path, device: str, max_time: float) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", str(path), "--benchmark-only", "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={out}", f"--benchmark-max-time={max_time}", "--benchmark-min-rounds=5",
               # Warm up before calibrating: a slow first call (lazy allocations, sleeping
               # threads) otherwise makes pytest-benchmark plan 5 single-call rounds.
               "--benchmark-warmup=on", "--benchmark-warmup-iterations=20"]
        if device != "all":
            cmd += ["-k", device]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=HERE.parent, check=False)
        try:
            return json.loads(out.read_text())["benchmarks"]
        except (OSError, ValueError, KeyError):  # nothing ran (all deselected or skipped)
            return []


def fmt_time(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.1f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def table(benchmarks: list) -> str:
    groups: dict = {}
    for b in benchmarks:
        groups.setdefault(b["group"] or b["name"], []).append(b)
    lines = ["| case | impl | median | GB/s | GFLOP/s | oxkernels speedup |", "|---|---|---|---|---|---|"]
    for group, rows in groups.items():
        ours = [r for r in rows if r["extra_info"].get("impl") == "oxkernels"]
        ours_t = ours[0]["stats"]["median"] if ours else None
        for r in sorted(rows, key=lambda r: r["extra_info"].get("impl") != "oxkernels"):
            info, t = r["extra_info"], r["stats"]["median"]
            gbs = f"{info['bytes'] / t / 1e9:.1f}" if info.get("bytes") else ""
            gfs = f"{info['flops'] / t / 1e9:.1f}" if info.get("flops") else ""
            ratio = f"{t / ours_t:.2f}×" if ours_t and info.get("impl") != "oxkernels" else ""
            lines.append(f"| {group} | {info.get('impl', r['name'])} | {fmt_time(t)} | {gbs} | {gfs} | {ratio} |")
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by `python benchmarks/run.py --write`.\n"
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="*", help="bench_*.py files (default: all)")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="cpu",
                   help="select benchmarks whose id contains this word (default cpu)")
    p.add_argument("--max-time", type=float, default=0.5, help="seconds per benchmark (pytest-benchmark)")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    suites = [HERE / s if not Path(s).exists() else Path(s) for s in args.suites] or sorted(HERE.glob("bench_*.py"))
    machine = machine_line(args.device)
    print(f"machine: {machine}")
    # CPU tables are kept per instruction set (AVX-512 and AVX2 machines differ a lot)
    table_key = args.device if args.device == "cuda" else f"{args.device} {cpu_isa()}"
    for suite in suites:
        benchmarks = run_suite(suite, args.device, args.max_time)
        if not benchmarks:
            print(f"{suite.name}: no benchmarks ran")
            continue
        body = table(benchmarks)
        print(f"\n## {suite.stem} ({args.device})\n{body}\n", flush=True)
        if args.write:
            stamp = datetime.date.today().isoformat()
            write_section(f"{suite.stem} {table_key}",
                          f"## {suite.stem} — {table_key}\n\n{machine}; {stamp}\n\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
