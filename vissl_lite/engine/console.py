"""What a run prints, and its copy in the run folder.

- ``[vissl_lite] ...`` lines go to stderr through the ``vissl_lite`` logger, written with
  ``tqdm.write`` so that they land above a progress bar instead of through it.
- ``train.log`` in the run folder receives every line the run prints on rank 0 (the logger's
  records, the progress lines, and the error that ended a run), appended to on resume.
- A progress bar needs a terminal: written to a file or a pipe (a batch job, ``| tee``, nohup),
  its redraws turn into a heap of carriage returns, and nested bars into garbage. There the run
  prints plain lines instead (``PlainProgress``), at most every ``logger.progress_every_s``.
"""
from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

from tqdm.auto import tqdm

from vissl_lite.errors import VisslLiteError

log = logging.getLogger("vissl_lite")
TRAIN_LOG = "train.log"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time, so a redirected or replaced stderr
    (pytest's capture, a notebook, ``contextlib.redirect_stderr``) never meets a closed stream;
    through ``tqdm.write``, which clears and redraws any progress bar around the line."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[vissl_lite] %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


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


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class TrainLog:
    """``train.log``: a file handler on the ``vissl_lite`` logger for the duration of a run."""

    def __init__(self, output_dir: Path, append: bool):
        self.handler = logging.FileHandler(Path(output_dir) / TRAIN_LOG, mode="a" if append else "w",
                                           encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(self.handler)

    def file_only(self, message: str) -> None:
        """A line for the file alone (the console shows the same thing as a progress bar)."""
        self.handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None))

    def record_error(self, error: BaseException) -> None:
        """The error that ends the run: a user error's one line, a bug's traceback (the console
        gets them from ``vissl-lite``/Python as usual)."""
        if isinstance(error, SystemExit):
            return
        if isinstance(error, VisslLiteError):
            self.file_only(f"error: {error}")
        else:
            self.file_only("".join(traceback.format_exception(error)).rstrip())

    def close(self) -> None:
        log.removeHandler(self.handler)
        self.handler.close()


class PlainProgress:
    """``step 120/1000 (12%), loss 4.12, lr 0.3, img_s 850, 2.1 steps/s, eta 7m10s`` lines, at
    most every ``every_s`` seconds (the first at the first log step), to ``emit``."""

    def __init__(self, total: int, initial: int, every_s: float, emit):
        self.total, self.done, self.every_s, self.emit = total, initial, float(every_s), emit
        self._start, self._start_step = time.monotonic(), initial
        self._last: Optional[float] = None

    def update(self, n: int, postfix: Dict[str, Any]) -> None:
        self.done += n
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s and self.done < self.total:
            return
        self._last = now
        rate = (self.done - self._start_step) / max(now - self._start, 1e-9)
        numbers = "".join(f", {k} {_short(v)}" for k, v in postfix.items())
        eta = f", eta {_duration((self.total - self.done) / rate)}" if rate > 0 else ""
        self.emit(f"step {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%)"
                  f"{numbers}, {rate:.3g} steps/s{eta}")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def learning_summary(baseline: Dict[str, float], final: Dict[str, float], seconds: float,
                     num_classes: Optional[int]) -> str:
    """``kNN top-1 30.8% -> 45.2% (+14.4) in 4 min 52 s; chance is 10%``: what the run bought,
    in one line, when the encoder was measured at initialisation (``monitor.at_start``) and at
    the end; empty otherwise."""
    if "knn_top1" not in baseline or "knn_top1" not in final:
        return ""
    before, after = baseline["knn_top1"], final["knn_top1"]
    minutes, secs = divmod(int(round(seconds)), 60)
    took = f"{minutes} min {secs} s" if minutes else f"{secs} s"
    chance = f"; chance is {100 / num_classes:.3g}%" if num_classes else ""
    return f"kNN top-1 {before:.1f}% -> {after:.1f}% ({after - before:+.1f}) in {took}{chance}"


def epoch_numbers(results: Dict[str, Any]) -> str:
    """``loss 4.673, knn_top1 33.3, ...``: an epoch's numbers as the console shows them."""
    return ", ".join(f"{k} {v:.4g}" for k, v in results.items())
