"""Run logging: a tqdm progress bar, ``metrics.jsonl``, wandb (offline by default) and ``curves.png``.

Only rank 0 logs. The JSONL file is the source of truth (one record per logged step or epoch,
appended, so a resumed run continues the same file after dropping the records past its
checkpoint); wandb mirrors it when installed and enabled; the PNG plot is drawn from it at the end.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from tqdm.auto import tqdm

from vissl_lite.engine.mirrors import TensorBoardMirror, wandb_environment
from vissl_lite.numbers import tidy

log = logging.getLogger("vissl_lite")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time, so a redirected or replaced stderr
    (pytest's capture, a notebook, ``contextlib.redirect_stderr``) never meets a closed stream."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[vissl_lite] %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_console_logging() -> None:
    """Show the run's INFO lines on stderr as ``[vissl_lite] ...``.

    An application that configured logging itself (the root logger has handlers) keeps control:
    records propagate to its handlers and nothing is added here, so no line is printed twice.
    """
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if log.handlers or logging.getLogger().handlers:
        return
    log.addHandler(_StderrHandler())


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return tidy(value)


def read_jsonl(path: str | os.PathLike) -> List[Dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return records


class RunLogger:
    """Writes metrics of rank 0 to JSONL, wandb and the progress bar; a no-op on other ranks."""

    def __init__(self, output_dir: str | os.PathLike, logger_cfg, config_dict: Dict[str, Any],
                 enabled: bool = True, resume_step: Optional[int] = None):
        self.enabled = enabled
        self.cfg = logger_cfg
        self.dir = Path(output_dir)
        self.jsonl = self.dir / "metrics.jsonl"
        self.bar = None
        self.wandb = None
        self.tensorboard = None
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
        if self.enabled and self.cfg.progress:
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            desc="pretrain")

    def progress(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                      for k, v in postfix.items()}, refresh=False)

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
            if self.bar is not None:
                self.bar.write(f"[vissl_lite] {message}", file=sys.stderr)
            else:
                log.info(message)

    def close(self, plot: bool = True) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if plot and self.cfg.plot:
            try:
                plot_curves(self.jsonl, self.dir / "curves.png")
            except Exception as e:  # a plot must never fail a finished run
                log.warning(f"could not draw curves.png: {type(e).__name__}: {e}")
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def plot_curves(jsonl: str | os.PathLike, out: str | os.PathLike) -> Optional[Path]:
    """Loss and learning rate against the step, from ``metrics.jsonl``, as a PNG."""
    records = [r for r in read_jsonl(jsonl) if r.get("type") == "step"]
    if not records:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records]
    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(1, 2)
    ax_loss.plot(steps, [_as_float(r.get("loss")) for r in records], lw=1.2)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_lr.plot(steps, [_as_float(r.get("lr")) for r in records], lw=1.2, color="tab:orange")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)
    return out


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
