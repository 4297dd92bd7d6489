"""Checkpoints: atomic writes, keep-last-N plus best, exact-resume state, loading for evaluation.

A checkpoint is one ``torch.save`` dict (see ``docs/interfaces.md``) holding everything a resumed
run needs to continue bit for bit: weights (the teacher/EMA and buffers such as DINO's center are
part of the method's ``state_dict``), optimizer, scheduler, AMP scaler, the RNG states of every
rank, the epoch and the position inside it, and the resolved config. It is written to a temporary
file in the same folder, flushed to disk and renamed over the target (``os.replace`` is atomic
on POSIX), so a crash or a SIGKILL during a write leaves the previous file untouched.

Everything stored is a tensor or a Python primitive, so ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from vissl_lite.engine import dcp
from vissl_lite.errors import CheckpointError
from vissl_lite.methods import build_method

FORMAT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write in the block, then renamed over ``path``.

    A failed write (disk full, folder gone read-only) leaves no temporary file and the previous
    ``path`` as it was, and ends in a ``CheckpointError`` naming the path and the fix.
    """
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            tmp.unlink()
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise dcp.write_error(path, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file and a rename (all or nothing)."""
    path = Path(path)
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` (a hard link when the file system allows), atomically."""
    with _replacing(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a vissl_lite checkpoint; a clear ``CheckpointError`` if it is missing or not one."""
    path = Path(path)
    if path.is_dir() and not dcp.is_sharded(path):
        path = last_in(path / "checkpoints") or last_in(path) or path
    if dcp.is_sharded(path):
        return _checked(_read_sharded(path), path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (give a .pt file or a run folder "
                              f"that holds checkpoints/{LAST})")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip, or a legacy pickle
        kind = "an empty file" if not head else ("a text file" if _is_text(head) else "another kind of file")
        raise CheckpointError(f"{path} is not a checkpoint ({kind}); give a .pt file written by "
                              f"vissl-lite pretrain, e.g. runs/<run>/checkpoints/last.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        detail = "" if "weights_only" in detail or "Weights only" in detail else f": {detail}"
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}{detail}); the file "
                              f"is truncated or not a vissl_lite checkpoint; use another one, e.g. "
                              f"checkpoints/step_*.pt") from None
    return _checked(ckpt, path)


def _read_sharded(path: Path) -> Dict[str, Any]:
    try:
        return dcp.read_full(path)
    except Exception as e:
        raise CheckpointError(f"cannot read sharded checkpoint {path} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); use another "
                              f"one, e.g. checkpoints/step_*.dcp") from None


def last_in(folder: Path) -> Optional[Path]:
    """``last.pt`` or the sharded ``last.dcp`` in ``folder`` (the newer when both are there)."""
    found = [p for p in (folder / LAST, folder / dcp.LAST) if p.is_file() or dcp.is_sharded(p)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _checked(ckpt: Any, path: Path) -> Dict[str, Any]:
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a vissl_lite checkpoint (no 'format_version'/'model' "
                              f"entries); a plain state_dict belongs in backbone.pretrained_path")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format_version']}, newer than "
                              f"this vissl_lite understands ({FORMAT_VERSION}); upgrade vissl_lite")
    return ckpt


def _is_text(head: bytes) -> bool:
    """UTF-8 without NUL bytes (a character cut at the end of ``head`` still counts as text)."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:
            return False
    return b"\x00" not in head


def check_compatible(ckpt: Dict[str, Any], method: str, backbone: str, source: str = "") -> None:
    """Refuse to resume or load a checkpoint trained with another method or backbone."""
    where = f" {source}" if source else ""
    if ckpt.get("method") != method or ckpt.get("backbone") != backbone:
        raise CheckpointError(
            f"checkpoint{where} was trained with method={ckpt.get('method')} and "
            f"backbone={ckpt.get('backbone')}, but this run uses method={method} and "
            f"backbone={backbone}; resume with the same config, or set output_dir to a new folder "
            f"(or resume=null) to start a fresh run")


def find_resume(resume: Optional[str], output_dir: str | os.PathLike) -> Optional[Path]:
    """The checkpoint ``resume`` points at: ``auto`` = the run folder's last one if any, else a path."""
    if resume in (None, "", "none", "null", False):
        return None
    if str(resume).lower() == "auto":
        return last_in(Path(output_dir) / "checkpoints")
    path = Path(str(resume))
    if path.is_dir() and not dcp.is_sharded(path):
        path = last_in(path / "checkpoints") or last_in(path) or path / LAST
    if not (path.is_file() or dcp.is_sharded(path)):
        raise CheckpointError(f"resume={resume}: no checkpoint there; give a .pt file, a run folder, "
                              f"or resume=auto to continue {output_dir} when it has one")
    return path


class CheckpointManager:
    """Writes ``step_XXXXXXX.pt`` files (keeping the last N), ``last.pt`` and ``best.pt``."""

    def __init__(self, folder: str | os.PathLike, keep_last: int = 2):
        self.folder = Path(folder)
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.folder / LAST

    def save(self, state: Dict[str, Any], step: int, is_best: bool = False) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.keep_last > 0:
            path = self.folder / f"step_{step:07d}.pt"
            atomic_save(state, path)
            _atomic_link(path, self.last)
            self._prune()
        else:
            path = self.last
            atomic_save(state, path)
        if is_best:
            _atomic_link(path, self.folder / BEST)
        return path

    def step_files(self) -> List[Path]:
        files = [p for p in self.folder.glob("step_*.pt") if _STEP_FILE.match(p.name)]
        return sorted(files, key=lambda p: int(_STEP_FILE.match(p.name).group(1)))

    def _prune(self) -> None:
        for old in self.step_files()[:-self.keep_last]:
            old.unlink(missing_ok=True)


def load_pretrained(path: str | os.PathLike, map_location: Any = "cpu") -> Tuple[Any, Any]:
    """Rebuild the method from a checkpoint's own config and load its weights (for evaluation).

    Returns ``(method, cfg)`` with the method in eval mode on ``map_location``.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    cfg = OmegaConf.create(ckpt["config"])
    OmegaConf.set_readonly(cfg, False)
    for key in ("pretrained_path", "pretrained"):  # the weights come from the checkpoint
        if "backbone" in cfg and key in cfg.backbone:
            cfg.backbone[key] = None
    OmegaConf.set_readonly(cfg, True)
    method = build_method(cfg)
    missing, unexpected = method.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit the model rebuilt from its config "
                              f"(missing keys: {missing[:5]}, unexpected keys: {unexpected[:5]}); "
                              f"was it written by another version of the method?")
    method.load_extra_state(ckpt.get("method_state", {}))
    return method.to(map_location).eval(), cfg
