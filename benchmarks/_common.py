"""Shared pieces of the benchmark scripts: data path, device description, peak memory, child runs.

Each measured configuration runs in a child process of its script (``run_child``), so that the
peak memory of one row (CUDA ``max_memory_allocated``, or the peak resident set size of the
process on CPU, which can only grow within a process) is not mixed with another's, and so that
lightly, which is not a dependency of vissl_lite, is imported only in the rows that use it.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
RESULT_MARK = "@@BENCH_RESULT@@ "
LIGHTLY_INSTALL = (
    "lightly is not importable, so the lightly baseline rows are skipped. lightly 1.6.0 is not a "
    "dependency of vissl_lite (it pulls hydra-core, which holds omegaconf < 2.4); install it on "
    "the side and point PYTHONPATH at it:\n"
    "    pip download lightly==1.6.0 lightning-utilities --no-deps -d /tmp/lwheel\n"
    "    pip install --no-deps --target /tmp/lightly_site /tmp/lwheel/*.whl\n"
    "    PYTHONPATH=/tmp/lightly_site python {script} ...")


def default_data() -> str:
    """``$CIFAR10_ROOT``, else the shared archive beside this checkout (the benchmarks never download)."""
    return os.environ.get("CIFAR10_ROOT") or str(REPO.parent / "shared" / "datasets"
                                                  / "cifar10-jpeg.tar.gz")


def check_data(path: str) -> str:
    """The absolute data path, or exit with a message naming the fix."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SystemExit(f"data not found: {path}. Give --data (a CIFAR-10 ImageFolder directory "
                         f"or .tar.gz with train/ and test/) or set $CIFAR10_ROOT.")
    return str(p.resolve())


def cifar10_methods() -> List[str]:
    """Every method with a CIFAR-10 preset (configs/<method>/cifar10_*.yaml), found, not listed."""
    from vissl_lite.presets import list_presets

    return sorted({name.split("/")[0] for name in list_presets()
                   if name.split("/")[1].startswith("cifar10_")})


def preset(method: str) -> Path:
    """The CIFAR-10 preset of a method (configs/<method>/cifar10_*.yaml)."""
    from vissl_lite.presets import list_presets

    found = [path for name, path in list_presets(method).items()
             if name.split("/")[1].startswith("cifar10_")]
    if not found:
        raise SystemExit(f"no CIFAR-10 preset for method '{method}' in configs/{method}/; "
                         f"methods with one: {', '.join(cifar10_methods())}")
    return found[0]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_description(device: torch.device) -> str:
    """One line naming the device the figures come from."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    host = f"{cores} CPU cores ({_cpu_model()}), torch {torch.__version__}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); host: {host}"
    return f"CPU only, no GPU: {host}, {torch.get_num_threads()} torch threads"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: ``max_memory_allocated`` since the last reset; CPU: this process's peak RSS (GB).

    The CPU figure is the peak of the training process alone (DataLoader workers are separate
    processes) over its whole life, so it includes data held in memory before the timed steps.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb * (1 if sys.platform != "darwin" else 1 / 1024) / 1e6


def memory_label(device: torch.device) -> str:
    return "peak GPU mem (GB)" if device.type == "cuda" else "peak RSS (GB)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def emit_result(result: Dict[str, Any]) -> None:
    """Print a child's result on one marked line for ``run_child`` to pick up."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def _child_env(extra_pythonpath: Optional[str]) -> Dict[str, str]:
    """This process's environment with ``extra_pythonpath`` put first on PYTHONPATH."""
    env = dict(os.environ)
    if extra_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_pythonpath, env.get("PYTHONPATH"))
                                            if p)
    return env


def run_child(script: Path, job: Dict[str, Any], extra_pythonpath: Optional[str] = None,
              quiet: bool = True) -> Dict[str, Any]:
    """Run ``script --job JSON`` in a fresh process; return its result dict, or {'error': ...}."""
    proc = subprocess.run([sys.executable, str(script), "--job", json.dumps(job)],
                          env=_child_env(extra_pythonpath),
                          cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
    if result is None or proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
        return {"error": f"exit code {proc.returncode}:\n{tail}"}
    if not quiet:
        print("\n".join(l for l in proc.stdout.splitlines() if not l.startswith(RESULT_MARK)))
    return result


def lightly_available(extra_pythonpath: Optional[str] = None) -> bool:
    """Whether a child process (with ``extra_pythonpath``) can import lightly's pieces we use."""
    code = ("from lightly.loss import NTXentLoss, BarlowTwinsLoss, DINOLoss\n"
            "from lightly.models.modules import SimCLRProjectionHead\n"
            "from lightly.transforms import SimCLRTransform, DINOTransform")
    return subprocess.run([sys.executable, "-c", code], env=_child_env(extra_pythonpath),
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    numeric = [bool(cells) and all(_is_number(r[i]) for r in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if n else v.ljust(w)
                                 for v, w, n in zip(values, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2))
                          for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("x%"))
        return True
    except ValueError:
        return text in ("-", "n/a")


def fmt_rate(images_per_s: float) -> str:
    """Images/s with a decimal where the figure is small (CPU-scale runs)."""
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.1f}"


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *[_quote(a) for a in sys.argv]])


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:,+@" for c in arg) else repr(arg)


def write_text(path: Optional[str], text: str) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"wrote {p}")

