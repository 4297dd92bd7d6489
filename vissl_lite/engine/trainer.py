"""The method-agnostic training loop: ``Trainer(cfg).fit()``.

``fit`` builds the run from the config (``runtime.py``: device and process group;
``components.py``: method, model, optimizer, schedules, loader, monitor; ``resume.py``: the
checkpoint to continue from), then loops over epochs and optimizer steps (``step.py``). Around
the steps the loop reads their numbers back in batches (at log steps, before a checkpoint and at
the end of an epoch), logs them (``logger.py``; the printed lines also go to ``train.log``,
``console.py``), runs the online monitor at the end of an epoch, writes checkpoints
(``checkpoint.py``; ``best.pt`` follows a monitor metric; ``clock.py``: every
``checkpoint.every_minutes``), stops cleanly on SIGINT/SIGTERM/SIGUSR1 (``stop.py``) or a
non-finite loss, and on CPU keeps freed memory for the next step (``vissl_lite/host_memory.py``).
The trainer never names a method.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from vissl_lite import distributed as vdist
from vissl_lite.augment.resolved import with_resolved_augment
from vissl_lite.autoconf import describe_auto, resolve_auto
from vissl_lite.config import save_config
from vissl_lite.data.loader import describe_train_data
from vissl_lite.engine.checkpoint import BEST, CheckpointManager, atomic_save
from vissl_lite.engine.clock import CheckpointClock
from vissl_lite.engine.components import Components, build_components
from vissl_lite.engine.console import TrainLog, epoch_numbers, learning_summary
from vissl_lite.engine.dcp import ShardedCheckpoints
from vissl_lite.engine.logger import RunLogger, log, setup_console_logging, step_record
from vissl_lite.engine.resume import checkpoint_state, find_and_check
from vissl_lite.engine.rundir import prepare_output_dir
from vissl_lite.engine.runtime import Runtime, describe_batch, micro_batch_size
from vissl_lite.engine.sharding import gathered
from vissl_lite.engine.state import TrainState
from vissl_lite.engine.step import (PendingStep, StepNumbers, StepRunner, non_finite_message,
                                    read_back)
from vissl_lite.engine.stop import StopSignal
from vissl_lite.errors import NonFiniteLossError
from vissl_lite.host_memory import reused_host_memory
from vissl_lite.methods import build_method
from vissl_lite.rng import preserved_rng, seed_everything


class Trainer:
    """Pretrains the method described by a full experiment config (``vissl_lite.config``).

    ``method``, ``dataset`` (yielding ``(image, label)``) and ``transform`` (image -> list of
    views) replace what the config would build, for use from Python with one's own parts.
    """

    def __init__(self, cfg, method: Optional[nn.Module] = None, dataset=None,
                 transform: Optional[Callable] = None):
        self.cfg = cfg
        self.method = method
        self.dataset, self.transform = dataset, transform
        self.output_dir = Path(cfg.output_dir)
        self.manager = CheckpointManager(self.output_dir / "checkpoints", cfg.checkpoint.keep_last)
        self.last_checkpoint: Optional[Path] = None
        self.state = TrainState()
        self.components: Optional[Components] = None
        self.logger: Optional[RunLogger] = None
        self._train_log: Optional[TrainLog] = None
        self._runner: Optional[StepRunner] = None
        self._pending: List[PendingStep] = []     # steps whose numbers are still on the device
        self._window: List[StepNumbers] = []      # read back, not yet logged
        self._stop_requested = False
        self._clock: Optional[CheckpointClock] = None
        self._checkpoint_due = False
        self._saved_step: Optional[int] = None
        self._consecutive_skips = 0
        self._last_record: Dict[str, Any] = {}
        self._baseline: Dict[str, float] = {}     # monitor.at_start's numbers

    def fit(self) -> Dict[str, Any]:
        self._started = time.perf_counter()
        setup_console_logging()
        runtime = Runtime.create(self.cfg.train)
        resolved = resolve_auto(self.cfg, runtime.device, custom_data=self.dataset is not None
                                or self.transform is not None)   # `auto` values, for this device
        auto_summary, self.cfg = describe_auto(self.cfg, resolved), resolved
        with (StopSignal(runtime.device) as stop,
              reused_host_memory(resolved.train.reuse_host_memory)):
            try:
                self._build(runtime, stop)
                if auto_summary:
                    self.logger.info(auto_summary)  # what `auto` resolved to (config.yaml too)
                result = self._loop(stop)
            except BaseException as error:
                self._close(plot=False, error=error)
                raise
        self._close(plot=True)
        return result

    def _close(self, plot: bool, error: Optional[BaseException] = None) -> None:
        if self.logger is not None:
            self.logger.close(plot=plot)
        if self._train_log is not None:
            if error is not None:
                self._train_log.record_error(error)
            self._train_log.close()
            self._train_log = None

    def _build(self, runtime: Runtime, stop: StopSignal) -> None:
        cfg = self.cfg
        prepare_output_dir(self.output_dir, cfg.resume, cfg.overwrite, runtime.main)
        seed_everything(cfg.seed, cfg.deterministic)
        method = self.method if self.method is not None else build_method(cfg)
        if self.transform is None:   # config.yaml and checkpoints record the views' values
            cfg = self.cfg = with_resolved_augment(cfg, method.views)
        micro = micro_batch_size(cfg, method, runtime.world)
        ckpt_path, ckpt = find_and_check(cfg, self.output_dir, runtime.world)
        if runtime.main:   # everything printed from here on is kept in the run folder too
            self._train_log = TrainLog(self.output_dir, append=ckpt is not None)
        if ckpt is None and str(cfg.resume).lower() == "auto" and runtime.main:
            log.info(f"resume=auto: no checkpoint in {self.output_dir / 'checkpoints'}, "
                     f"starting a new run")
        c, self.state = build_components(cfg, runtime, method, micro, ckpt, self.dataset,
                                         self.transform)
        self.components = c
        if c.strategy == "fsdp":     # every rank writes its shards (engine/dcp.py)
            self.manager = ShardedCheckpoints(self.manager.folder, cfg.checkpoint.keep_last)
        if runtime.main:
            save_config(cfg, self.output_dir / "config.yaml")
        self.logger = RunLogger(self.output_dir, cfg.logger, c.config_dict, enabled=runtime.main,
                                resume_step=self.state.step if ckpt is not None else None,
                                train_log=self._train_log)
        if ckpt is not None:
            self.logger.info(f"resumed from {ckpt_path} at step {self.state.step} (epoch "
                             f"{self.state.epoch}, batch {self.state.batch_in_epoch})")
        batch = describe_batch(cfg.train.batch_size, runtime.world, cfg.train.accumulate)
        self.logger.info(f"device {runtime.device}, {batch}, precision {cfg.train.precision}, "
                         f"{describe_train_data(cfg, c.loader)}, output {self.output_dir}")
        self.last_checkpoint = ckpt_path
        self._saved_step = self.state.step if ckpt_path is not None else None
        self._clock = CheckpointClock(cfg.checkpoint.every_minutes, runtime.device)
        self._runner = StepRunner(c.method, c.model, c.optimizer, c.scheduler, c.scaler,
                                  cfg.train, runtime.device, runtime.world, c.total_steps, stop,
                                  c.online_head, self._clock)

    # ------------------------------------------------------------------ the loop
    def _loop(self, stop: StopSignal) -> Dict[str, Any]:
        c, s, cfg = self.components, self.state, self.cfg
        total, per_epoch = c.total_steps, c.steps_per_epoch
        log_every, every = max(1, cfg.train.log_every), cfg.checkpoint.every_steps
        if s.step == 0 and c.monitor is not None and cfg.monitor.at_start:
            self._monitor_at_start()
        self.logger.start_progress(total, s.step)
        stop.arm()
        window_start, window_steps = time.perf_counter(), 0
        step_save = False
        while s.step < total:
            c.loader.set_epoch(s.epoch, s.batch_in_epoch * cfg.train.accumulate)
            batches = iter(c.loader)
            while s.batch_in_epoch < per_epoch and s.step < total:
                self._pending.append(self._step(batches))
                s.step += 1
                s.batch_in_epoch += 1
                window_steps += 1
                step_save = bool(every) and s.step % every == 0
                log_now = s.step % log_every == 0 or s.step == total
                # one process needs no agreement: it stops at the step the signal arrived in
                alone_stopped = c.runtime.world == 1 and stop.received is not None
                if log_now or step_save or s.batch_in_epoch >= per_epoch or alone_stopped:
                    self._drain()
                    self._stop_requested |= alone_stopped
                if log_now:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    self._log_window(window_steps / elapsed)
                    window_start, window_steps = time.perf_counter(), 0
                if self._stop_requested:
                    self._stop_on_signal(stop)
                step_save |= self._checkpoint_due
                if step_save and s.batch_in_epoch < per_epoch:
                    self._save()
            if s.batch_in_epoch >= per_epoch:
                self._end_epoch(force_save=step_save)
        if self._saved_step != s.step:
            self._save()
        skipped = c.loader.skipped() if hasattr(c.loader, "skipped") else 0
        if skipped:  # data.on_corrupt=skip
            self.logger.info(f"skipped {skipped} unreadable image(s)")
        self.logger.info(f"done: {s.step} steps; checkpoint {self.manager.last}")
        if gain := learning_summary(self._baseline, s.metrics, time.perf_counter() - self._started,
                                    getattr(c.monitor, "num_classes", None)):
            self.logger.info(gain)
        return {"step": s.step, "epoch": s.epoch, "skipped_steps": s.skipped_steps,
                "checkpoint": str(self.manager.last), "output_dir": str(self.output_dir),
                "loss": self._last_record.get("loss"), **s.metrics}

    def _step(self, batches) -> PendingStep:
        """One optimizer step (a seam for benchmarks that time steps)."""
        return self._runner.run(batches, self.state.step)

    def _drain(self) -> None:
        """Read the pending steps' numbers back from the device, in one transfer.

        A non-finite loss or gradient found here stops the run naming its step, before anything
        is logged or saved, so the last checkpoint stays a good one.
        """
        pending, self._pending = self._pending, []
        scaled = self.components.scaler is not None
        for numbers in read_back(pending):
            if numbers.skipped:
                self._count_skip(numbers)
            else:
                self._consecutive_skips = 0
                if not numbers.finite(scaled):
                    raise NonFiniteLossError(non_finite_message(
                        numbers, self.state.epoch, self.cfg.train.precision, self.last_checkpoint))
            self._window.append(numbers)
            if math.isfinite(numbers.loss):
                self.state.add_loss(numbers.loss)
            self._stop_requested |= numbers.stop
            self._checkpoint_due |= numbers.checkpoint_due

    def _count_skip(self, numbers: StepNumbers) -> None:
        self.state.skipped_steps += 1
        self._consecutive_skips += 1
        limit = self.cfg.train.max_consecutive_skips
        message = non_finite_message(numbers, self.state.epoch, self.cfg.train.precision,
                                     self.last_checkpoint)
        if limit and self._consecutive_skips >= limit:
            raise NonFiniteLossError(f"{self._consecutive_skips} steps in a row were skipped "
                                     f"(train.max_consecutive_skips={limit}); the last: {message}")
        self.logger.info(f"step {numbers.step + 1}: {message.split(';')[0]}; step skipped "
                         f"(train.skip_nonfinite=true, {self.state.skipped_steps} so far)")

    def _log_window(self, steps_per_s: float) -> None:
        window, self._window = self._window, []
        record = step_record(window, self.state.step, self.state.epoch,
                             steps_per_s * self.cfg.train.batch_size)
        self._last_record = record
        self.logger.write(record)
        self.logger.progress(len(window), loss=record["loss"], lr=record["lr"],
                             img_s=round(record["img_per_s"]))

    # ------------------------------------------------------------------ epochs, checkpoints
    def _end_epoch(self, force_save: bool = False) -> None:
        s, cfg = self.state, self.cfg
        epoch = s.epoch
        results: Dict[str, Any] = {"loss": s.finish_epoch()}
        if self.components.monitor is not None and (epoch + 1) % cfg.monitor.every_epochs == 0:
            results.update(self._monitor(epoch))
        s.metrics = results
        self.logger.info(f"epoch {epoch + 1}: {epoch_numbers(results)}")
        self.logger.write({"type": "epoch", "step": s.step, "epoch": epoch + 1,
                           **{("epoch_loss" if k == "loss" else k): v for k, v in results.items()}})
        is_best = cfg.checkpoint.save_best and s.improve_best(cfg.checkpoint.best_metric, results)
        every = cfg.checkpoint.every_epochs
        scheduled = bool(every) and (epoch + 1) % every == 0
        if scheduled or s.step >= self.components.total_steps or force_save:
            self._save(is_best=is_best)
        elif is_best:
            self._save(is_best=True, best_only=True)

    def _monitor_at_start(self) -> None:
        """``monitor.at_start``: the encoder at initialisation, the baseline for every later epoch."""
        results = self._baseline = self._monitor(-1)
        self.logger.info(f"before training: {epoch_numbers(results)}")
        self.logger.write({"type": "epoch", "step": 0, "epoch": 0, **results})

    def _monitor(self, epoch: int) -> Dict[str, float]:
        c = self.components
        with preserved_rng(), gathered(c.method):
            results = c.monitor.run(epoch) or {}
        c.method.train()
        return {k: float(v) for k, v in results.items() if isinstance(v, (int, float))
                or (torch.is_tensor(v) and v.numel() == 1)}

    def _save(self, is_best: bool = False, best_only: bool = False) -> None:
        self._drain()
        c, sharded = self.components, self.components.strategy == "fsdp"
        state = checkpoint_state(c, self.state, self.cfg, sharded)  # every rank: RNG gather
        if sharded:
            self.manager.save(c.method, c.optimizer, state, self.state.step, is_best, best_only)
        elif c.runtime.main:
            if best_only:
                atomic_save(state, self.manager.folder / BEST)
            else:
                self.manager.save(state, self.state.step, is_best)
        if not best_only:
            self.last_checkpoint = self.manager.last
            self._saved_step = self.state.step
            self._checkpoint_due = False
            self._clock.restart()

    def _stop_on_signal(self, stop: StopSignal) -> None:
        self._save()
        vdist.barrier()  # no rank exits (which makes torchrun stop the others) before it is written
        self.logger.info(f"{stop.name} received: checkpoint written at step {self.state.step} to "
                         f"{self.manager.last}; continue with resume=auto")
        raise SystemExit(stop.exit_code)
