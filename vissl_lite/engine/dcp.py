"""Sharded checkpoints (``train.strategy=fsdp``) with ``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint is a folder ``checkpoints/step_XXXXXXX.dcp``:

    .metadata, __0_0.distcp, __1_0.distcp, ...   DCP: the weights and the optimizer state; every
                                                 rank writes its own shards, in parallel
    extra.pt                                     rank 0's ``torch.save`` of the rest of the
                                                 checkpoint dict (``resume.checkpoint_state``:
                                                 config, schedules, every rank's RNG, position)

It is written into a temporary folder beside it and renamed when complete (``os.rename`` of a
folder is atomic on POSIX), so it is complete or absent. ``last.dcp`` and ``best.dcp`` are
symbolic links to step folders, replaced atomically; the oldest step folders beyond
``checkpoint.keep_last`` are deleted (never the one ``best.dcp`` points to).

Weights and optimizer state go through ``torch.distributed.checkpoint.state_dict``
(``get_state_dict`` / ``set_state_dict``: parameter names as keys, for FSDP-sharded and plain
modules alike), so a checkpoint written on N ranks loads on M (DCP reshards on load) or on one
process without a process group, and ``read_full`` reads it into a plain state dict (export,
``load_backbone``, evaluation).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_state_dict)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from vissl_lite import distributed as vdist
from vissl_lite.errors import CheckpointError

#: DCP's warning on one process (no process group): that is what a single-process run means
_SINGLE = ".*assuming the intent is to (load|save) in a single process"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP calls without its one-process warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE, category=UserWarning)
        yield

SUFFIX = ".dcp"
LAST, BEST = "last" + SUFFIX, "best" + SUFFIX
EXTRA = "extra.pt"
METADATA = ".metadata"


def is_sharded(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / METADATA).is_file()


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 extra: Dict[str, Any]) -> None:
    """Write a sharded checkpoint at ``folder`` (collective: every rank calls it)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    main = vdist.is_main()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    vdist.barrier()
    weights, optim = get_state_dict(model, optimizer)
    try:
        with _quiet():
            dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=str(tmp))
        if main:
            torch.save(extra, tmp / EXTRA)
            if folder.exists():      # the same step written again (a signal at a saved step)
                shutil.rmtree(folder)
            os.rename(tmp, folder)
    except OSError as e:
        raise write_error(folder, e) from None
    finally:
        vdist.barrier()


def write_error(path: Path, e: OSError) -> CheckpointError:
    """A failed checkpoint write (disk full, read-only folder): the path, and what to do."""
    return CheckpointError(
        f"cannot write checkpoint {path}: {e.strerror or e or type(e).__name__}; the previous "
        f"checkpoint is intact. Free space on that disk or set output_dir to a writable folder "
        f"with room, then continue with resume=auto")


def read_extra(folder: Path) -> Dict[str, Any]:
    """The checkpoint dict without weights and optimizer state (``sharded``: the folder)."""
    extra = torch.load(Path(folder) / EXTRA, map_location="cpu", weights_only=True)
    return {**extra, "sharded": str(Path(folder).resolve())}


def load_sharded(folder: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load weights and optimizer state into ``model`` (sharded or not) on any number of ranks."""
    weights, optim = get_state_dict(model, optimizer)
    saved = FileSystemReader(folder).read_metadata().state_dict_metadata
    # get_state_dict gives every parameter an optimizer state; one that had none when saved (a
    # parameter without gradient so far, e.g. DINO's frozen last layer) is left without
    optim["state"] = {name: value for name, value in optim["state"].items()
                      if all(f"optimizer.state.{name}.{key}" in saved for key in value)}
    state = {"model": weights, "optimizer": optim}
    with _quiet():
        dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=StateDictOptions(strict=False))


def read_full(folder: Path) -> Dict[str, Any]:
    """The whole checkpoint dict with the full (unsharded) weights, read by this process alone."""
    with _quiet():
        state = _load_state_dict_from_keys({"model"}, checkpoint_id=str(folder))
    return {**read_extra(folder), "model": state["model"]}


class ShardedCheckpoints:
    """Writes ``step_XXXXXXX.dcp`` folders, the ``last.dcp`` and ``best.dcp`` links, and prunes."""

    def __init__(self, folder: Path, keep_last: int = 2):
        self.folder = Path(folder)
        self.keep_last = max(1, keep_last)

    @property
    def last(self) -> Path:
        return self.folder / LAST

    def save(self, model: nn.Module, optimizer, extra: Dict[str, Any], step: int,
             is_best: bool = False, best_only: bool = False) -> Path:
        path = self.folder / f"step_{step:07d}{SUFFIX}"
        save_sharded(path, model, optimizer, extra)
        if vdist.is_main():
            if not best_only:
                _link(path, self.last)
            if is_best or best_only:
                _link(path, self.folder / BEST)
            self._prune()
        vdist.barrier()
        return path

    def step_folders(self) -> List[Path]:
        return sorted(p for p in self.folder.glob(f"step_*{SUFFIX}") if p.is_dir())

    def _prune(self) -> None:
        keep = {_target(self.last), _target(self.folder / BEST)}
        for old in self.step_folders()[:-self.keep_last]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (a relative symbolic link), replaced atomically."""
    tmp = link.with_name(f".{link.name}.tmp.{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


def _target(link: Path) -> Optional[str]:
    return os.readlink(link) if link.is_symlink() else None
