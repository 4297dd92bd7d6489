"""How long `vissl-lite` takes to answer the commands that do not train: wall time per command.

Each command runs ``--runs`` times in a fresh interpreter (``python -m vissl_lite.cli``, as the
console script does); the table prints the median, the minimum and whether torch was imported.
Targets (issue 22): ``--version`` and ``--help`` under 0.5 s; ``config``, ``list`` and a config
error under 1.5 s, none of them importing torch (2.5 s on its own on a 2-core machine).

    python benchmarks/cli_startup.py [--runs 5]

Figures depend on the machine and its load; state both when quoting them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: what the command does, its arguments, its expected exit status
COMMANDS = [
    ("--version", ["--version"], 0),
    ("--help", ["--help"], 0),
    ("list", ["list"], 0),
    ("config preset", ["config", "simclr/cifar10_resnet18"], 0),
    ("config error (typo)", ["config", "simclr/cifar10_resnet18", "optim.lrr=0.3"], 2),
    ("pretrain, config error", ["pretrain", "simclr/cifar10_resnet18", "optim.lrr=0.3"], 2),
]
#: runs the command in-process and reports whether torch got imported (on stderr, last line)
PROBE = ("import sys, runpy\nsys.argv = ['vissl-lite', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('vissl_lite.cli', run_name='__main__')\n"
         "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")


def time_command(args, expected: int, runs: int):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    times, torch_loaded = [], None
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                              env=env, cwd=REPO)
        times.append(time.perf_counter() - start)
        if done.returncode != expected:
            raise SystemExit(f"vissl-lite {' '.join(args)}: exit {done.returncode}, expected "
                             f"{expected}:\n{done.stderr[-2000:]}")
        torch_loaded = done.stderr.strip().splitlines()[-1].endswith("True")
    return statistics.median(times), min(times), torch_loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    baseline = [sys.executable, "-c", "pass"]
    bare = statistics.median(_wall(baseline) for _ in range(args.runs))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; bare interpreter start {bare:.2f} s; median of {args.runs}")
    print(f"{'command':<26} {'median s':>9} {'min s':>7}  torch imported")
    for label, argv, expected in COMMANDS:
        median, best, torch_loaded = time_command(argv, expected, args.runs)
        print(f"{label:<26} {median:9.2f} {best:7.2f}  {'yes' if torch_loaded else 'no'}")


def _wall(cmd) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
