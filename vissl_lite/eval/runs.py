"""What a pretraining run is and how it trained, read from its files (no model is built).

A run folder (``vissl-lite pretrain``'s ``output_dir``) holds ``config.yaml``, ``metrics.jsonl``
(``step`` records: loss, lr, img_per_s, ...; ``epoch`` records: epoch loss and the online
monitor's kNN, RankMe, ...) and ``checkpoints/*.pt`` (with ``step``, ``epoch`` and ``config``).
The report (``eval/report.py``) puts a run's identity and curves at its top; ``vissl-lite
compare`` (``eval/compare.py``) overlays several runs' curves.

Wall time is not logged per record: the training time at a step is the sum, over the step
records before it, of the steps each record covers times ``batch_size / img_per_s`` (the
measured throughput of that window); the time spent in monitors and checkpoints is not in it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from vissl_lite.config import global_view_size
from vissl_lite.errors import EvalError
from vissl_lite.jsonl import read_jsonl

Series = Tuple[List[float], List[float]]
NOT_CURVES = {"type", "step", "epoch", "lr", "wd", "img_per_s", "grad_norm"}


def run_folder_of(checkpoint: Path) -> Optional[Path]:
    """The run folder a checkpoint file belongs to (``RUN/checkpoints/x.pt``), if it has one."""
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        if (folder / "metrics.jsonl").is_file() or (folder / "config.yaml").is_file():
            return folder
    return None


def read_records(folder: Path) -> List[Dict[str, Any]]:
    return read_jsonl(folder / "metrics.jsonl")


def read_config(folder: Path) -> Dict[str, Any]:
    path = folder / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}


def checkpoint_state(path: Path) -> Dict[str, Any]:
    """``step``, ``epoch`` and ``config`` of a vissl-lite checkpoint (memory-mapped: the weights
    are not read)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise EvalError(f"cannot read {path} as a vissl-lite checkpoint ({type(e).__name__})") from None
    return {"step": ckpt.get("step"), "epoch": ckpt.get("epoch"), "config": ckpt.get("config") or {}}


def identity(config: Dict[str, Any], step: Optional[int], epoch: Optional[int]) -> Dict[str, Any]:
    """What was trained, how long and on what: the lines a reader needs before any number."""
    get = lambda section, key, default=None: (config.get(section) or {}).get(key, default)  # noqa: E731
    backbone = str(get("backbone", "name", "?"))
    if get("backbone", "cifar_stem"):
        backbone += " (CIFAR stem)"
    batch = get("train", "batch_size")
    data = f"{get('data', 'name', '?')} ({get('data', 'root', '?')})"
    if get("data", "subset"):
        data += f", {get('data', 'subset')}-image subset"
    return {"method": get("method", "name", "?"), "backbone": backbone,
            "epochs": f"{epoch} of {get('train', 'epochs', '?')}" if epoch is not None else "-",
            "steps": step if step is not None else "-",
            "images seen": step * batch if step is not None and batch else "-",
            "global batch": batch if batch else "-", "dataset": data,
            "image size": global_view_size(config) if config else "-"}


def step_times(records: List[Dict[str, Any]], batch_size: Optional[int]) -> Dict[int, float]:
    """Training seconds at the end of each logged step (module docstring)."""
    times, total, last = {}, 0.0, 0
    for r in records:
        if r.get("type") != "step":
            continue
        rate = r.get("img_per_s") or 0.0
        if batch_size and rate > 0:
            total += (r["step"] - last) * batch_size / rate
        last = r["step"]
        times[r["step"]] = total
    return times


def curves(records: List[Dict[str, Any]], batch_size: Optional[int] = None,
           x: str = "step") -> Dict[str, Series]:
    """metric -> (x, values): ``loss`` of the step records and every number of the epoch records
    (the monitor's kNN, RankMe, ...), against ``step`` or training ``time`` (seconds)."""
    times = step_times(records, batch_size)
    out: Dict[str, Series] = {}

    def where(step: int) -> float:
        if x == "step":
            return float(step)
        before = [s for s in times if s <= step]
        return times[max(before)] if before else 0.0

    for r in records:
        names = ["loss"] if r.get("type") == "step" else [
            k for k, v in r.items() if k not in NOT_CURVES and isinstance(v, (int, float))]
        for name in names:
            if isinstance(r.get(name), (int, float)):
                xs, ys = out.setdefault(name, ([], []))
                xs.append(where(int(r.get("step", 0))))
                ys.append(float(r[name]))
    return out


class Run:
    """One run's identity, config and records: from a run folder, or a checkpoint inside one."""

    def __init__(self, path: Path):
        path = Path(path)
        if path.is_dir():
            folder = path
            last = path / "checkpoints" / "last.pt"
            state = checkpoint_state(last) if last.is_file() else {}
        elif path.is_file():
            folder, state = run_folder_of(path), checkpoint_state(path)
        else:
            raise EvalError(f"run not found: {path} (give a run folder written by vissl-lite "
                            f"pretrain, or a checkpoint inside one)")
        self.folder = folder
        self.name = folder.name if folder else path.stem
        self.records = read_records(folder) if folder else []
        self.config = read_config(folder) if folder else {}
        self.config = self.config or state.get("config") or {}
        step, epoch = state.get("step"), state.get("epoch")
        if step is None:
            steps = [r for r in self.records if r.get("type") in ("step", "epoch")]
            step = steps[-1]["step"] if steps else None
            epoch = max((r["epoch"] for r in self.records if r.get("type") == "epoch"), default=None)
        self.identity = identity(self.config, step, epoch)

    @property
    def batch_size(self) -> Optional[int]:
        return (self.config.get("train") or {}).get("batch_size")

    def curves(self, x: str = "step") -> Dict[str, Series]:
        return curves(self.records, self.batch_size, x)

    def final_monitor(self) -> Dict[str, float]:
        """The numbers of the last epoch record (epoch loss and the online monitor's)."""
        epochs = [r for r in self.records if r.get("type") == "epoch"]
        return {k: float(v) for k, v in (epochs[-1] if epochs else {}).items()
                if k not in NOT_CURVES and isinstance(v, (int, float))}
