"""Run logging: progress (a tqdm bar on a terminal, plain lines otherwise), ``metrics.jsonl``,
wandb (offline by default), ``train.log`` and ``curves.png``.

Only rank 0 logs. The JSONL file is the source of truth (one record per logged step or epoch,
appended, so a resumed run continues the same file after dropping the records past its
checkpoint); wandb mirrors it when installed and enabled; the PNG plot of every logged metric is
drawn from it at the end (``curves.py``). What the run prints is also kept in ``train.log``
(``console.py``).
"""
from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Dict, List, Optional

from tqdm.auto import tqdm

from vissl_lite.engine.console import (PlainProgress, TrainLog, log, setup_console_logging,
                                       stderr_is_terminal)
from vissl_lite.engine.curves import plot_curves
from vissl_lite.engine.mirrors import TensorBoardMirror, wandb_environment
from vissl_lite.jsonl import read_jsonl
from vissl_lite.numbers import tidy

__all__ = ["RunLogger", "read_jsonl", "step_record", "log", "setup_console_logging", "plot_curves"]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return tidy(value)


def step_record(window: List[Any], step: int, epoch: int, img_per_s: float) -> Dict[str, Any]:
    """The ``metrics.jsonl`` record of the steps read back since the last log step (``StepNumbers``):
    each number averaged over them, the learning rate and weight decay of the last one."""
    rows = [{"loss": n.loss, "grad_norm": n.grad_norm, **n.values} for n in window]
    record: Dict[str, Any] = {"type": "step", "step": step, "epoch": epoch}
    for k in rows[-1]:
        values = [r[k] for r in rows if k in r]
        record[k] = sum(values) / len(values)
    record["lr"], record["wd"] = rows[-1]["lr"], rows[-1]["wd"]
    record["img_per_s"] = img_per_s
    return record


class RunLogger:
    """Writes metrics of rank 0 to JSONL, wandb and the progress bar; a no-op on other ranks."""

    def __init__(self, output_dir: str | os.PathLike, logger_cfg, config_dict: Dict[str, Any],
                 enabled: bool = True, resume_step: Optional[int] = None,
                 train_log: Optional[TrainLog] = None):
        self.enabled = enabled
        self.cfg = logger_cfg
        self.dir = Path(output_dir)
        self.jsonl = self.dir / "metrics.jsonl"
        self.bar: Optional[tqdm] = None
        self.plain: Optional[PlainProgress] = None
        self.wandb = None
        self.tensorboard = None
        self._file_only = train_log.file_only if train_log is not None else (lambda line: None)
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.jsonl.exists():
            self.jsonl.unlink()
        self._init_wandb(config_dict, resumed=resume_step is not None)
        self.tensorboard = TensorBoardMirror.open(self.dir,
                                                  getattr(logger_cfg, "tensorboard", False))

    def _truncate_after(self, step: int) -> None:
        """Drop records a killed run wrote after its last checkpoint (they will be redone)."""
        kept = [r for r in read_jsonl(self.jsonl) if r.get("step", 0) <= step]
        tmp = self.jsonl.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.jsonl)

    def _init_wandb(self, config_dict: Dict[str, Any], resumed: bool) -> None:
        mode = str(self.cfg.wandb.mode).lower()
        if mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed; metrics go to metrics.jsonl only "
                        "(pip install wandb, or set logger.wandb.mode=disabled)")
            return
        id_file = self.dir / "wandb" / "run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        if not (resumed and id_file.is_file()):
            id_file.write_text(secrets.token_hex(4))   # wandb run ids: lowercase alphanumerics
        wandb_environment(self.dir)
        try:
            self.wandb = wandb.init(project=self.cfg.wandb.project, entity=self.cfg.wandb.entity,
                                    mode=mode, dir=str(self.dir), config=config_dict,
                                    id=id_file.read_text().strip(), resume="allow",
                                    name=self.dir.name)
        except Exception as e:  # no login, no network: training must not stop for the logger
            log.warning(f"wandb.init failed ({type(e).__name__}: {e}); continuing without wandb "
                        f"(logger.wandb.mode=offline needs no account)")
            self.wandb = None

    def start_progress(self, total: int, initial: int) -> None:
        """A bar on a terminal; plain lines (console and ``train.log``) otherwise. With a bar, the
        same lines go to ``train.log`` alone."""
        if not self.enabled:
            return
        every = float(self.cfg.get("progress_every_s", 30.0))
        if self.cfg.progress and stderr_is_terminal():
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            desc="pretrain")
            self.plain = PlainProgress(total, initial, every, self._file_only)
        elif self.cfg.progress:
            self.plain = PlainProgress(total, initial, every, log.info)
        else:
            self.plain = PlainProgress(total, initial, every, self._file_only)

    def progress(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                      for k, v in postfix.items()}, refresh=False)
        if self.plain is not None:
            self.plain.update(n, postfix)

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            data = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            self.wandb.log(data, step=int(record.get("step", 0)))
        if self.tensorboard is not None:
            self.tensorboard.log(record)

    def info(self, message: str) -> None:
        if self.enabled:
            log.info(message)

    def close(self, plot: bool = True) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if plot and self.cfg.plot:
            try:
                plot_curves(read_jsonl(self.jsonl), self.dir / "curves.png")
            except Exception as e:  # a plot must never fail a finished run
                log.warning(f"could not draw curves.png: {type(e).__name__}: {e}")
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
