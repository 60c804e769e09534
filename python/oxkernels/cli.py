"""The `oxkernels` command (also `python -m oxkernels`).

Each subcommand lives in its own module, which provides
`add_parser(subparsers)`; the parser it adds sets `func` to the function that
runs the command with the parsed arguments.
"""
import argparse
import importlib
import sys

# Modules that define subcommands, in the order --help lists them.
COMMAND_MODULES = ["oxkernels.cli", "oxkernels.linreg_demo", "oxkernels.train", "oxkernels.tune", "oxkernels.bench"]


def add_parser(subparsers):
    p = subparsers.add_parser("info", help="print what this build holds (version, CUDA, CPU ISA, threads)")
    p.set_defaults(func=run_info)


def run_info(args) -> int:
    from . import info

    i = info(devices=True)
    print(f"oxkernels {i['version']}")
    if i["cuda_built"]:
        print(f"CUDA kernels: built for {i['cuda_archs']} (runtime {i['cuda_runtime']})")
        gpus = i["gpus"]
        names = _gpu_names() if gpus else []
        gpus = [f"{n} {g}" for n, g in zip(names, gpus)] if len(names) == len(gpus) else gpus
        print("GPUs seen: " + (", ".join(gpus) if gpus else f"none ({i['cuda_status']})"))
    else:
        print("CUDA kernels: not built")
    isa_note = "" if i["isa"] == i["isa_best"] else f" (CPU supports {i['isa_best']})"
    print(f"CPU instruction set: {i['isa']}{isa_note}")
    print(f"CPU threads: {i['threads']} ({i['thread_pool']} pool)")
    return 0


def _gpu_names() -> list:
    """GPU names from torch, when torch is installed (the native module reports only numbers)."""
    try:
        import torch
    except ImportError:
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oxkernels", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code or 0)
