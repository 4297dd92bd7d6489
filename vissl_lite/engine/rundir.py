"""The run folder: refuse to write over another run, and fail early when it cannot be written.

A new run (``resume`` not set) into an ``output_dir`` whose ``checkpoints/`` holds checkpoints
would replace that run's ``last.pt``, metrics and config: it stops instead, naming the three ways
on (``resume=auto``, a new ``output_dir``, or ``overwrite=true``, which first deletes the files a
run writes there, and nothing else). A folder that cannot be created or written (read-only, or a
path through a file) is reported before any training, naming the path.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import List

import torch.distributed as dist

from vissl_lite import distributed as vdist
from vissl_lite.errors import ConfigError

RUN_FILES = ("checkpoints", "metrics.jsonl", "config.yaml", "curves.png", "wandb", "train.log")


def _holds_checkpoints(output_dir: Path) -> bool:
    folder = output_dir / "checkpoints"
    return folder.is_dir() and (any(folder.glob("*.pt")) or any(folder.glob("*.dcp")))


def _any_rank(value: bool) -> bool:
    if not vdist.is_dist():
        return value
    found: List[bool] = [False] * vdist.world_size()
    dist.all_gather_object(found, value)
    return any(found)


def prepare_output_dir(output_dir: Path, resume, overwrite: bool, main: bool) -> None:
    """Check (every rank) and, on rank 0, clear (``overwrite``) and create ``output_dir``."""
    fresh = resume in (None, "", "none", "null", False)
    if fresh and _any_rank(_holds_checkpoints(output_dir)):
        if not overwrite:
            raise ConfigError(
                f"output_dir={output_dir} holds another run's checkpoints; continue it with "
                f"resume=auto, choose a new output_dir, or set overwrite=true to delete that "
                f"run's files first")
        if main:
            for name in RUN_FILES:
                path = output_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        vdist.barrier()
    if main:
        _check_writable(output_dir)


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"output_dir={output_dir} cannot be written ({e.strerror or type(e).__name__}: "
            f"{e.filename or output_dir}); set output_dir to a writable folder") from None
    if not os.access(output_dir, os.W_OK):
        raise ConfigError(f"output_dir={output_dir} is not writable; set output_dir to a "
                          f"writable folder")
