"""The method-agnostic training loop: ``Trainer(cfg).fit()``.

One optimizer step is

    for each of `accumulate` micro-batches:  loss = model(batch).loss; backward(loss / accumulate)
    unscale (fp16) -> method.on_before_optimizer_step -> clip -> finite check -> optimizer step
    method.on_step_end(step, total_steps)

where ``model`` is the ``Method`` wrapped in DDP (and ``torch.compile``) so that ``model(batch)``
runs ``Method.training_step``; the trainer never names a method. Around it: distributed setup for
``torchrun`` (NCCL on GPU, gloo on CPU), the global batch split over ranks and accumulation steps,
AMP (bf16 autocast, or fp16 with a GradScaler), per-step lr / weight-decay schedules, atomic
checkpoints with exact resume (also mid-epoch), SIGTERM handling (checkpoint, then exit 143), a
clear stop on non-finite losses, and logging (progress bar, metrics.jsonl, wandb, curves.png).
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from vissl_lite import distributed as vdist
from vissl_lite.autoconf import describe_auto, resolve_auto
from vissl_lite.engine.checkpoint import (FORMAT_VERSION, CheckpointManager, check_compatible,
                                          find_resume, load_checkpoint)
from vissl_lite.engine.logger import RunLogger, log, setup_console_logging
from vissl_lite.engine.optim import build_optimizer, scaled_lr
from vissl_lite.engine.rng import (derive_seed, preserved_rng, rng_state, seed_everything,
                                   set_rng_state)
from vissl_lite.engine.schedules import ParamScheduler
from vissl_lite.errors import NonFiniteLossError

_RUNTIME_STREAM = 17  # the training process's RNG stream after the model is built
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _config_error(message: str) -> Exception:
    from vissl_lite.errors import ConfigError
    return ConfigError(message)


def _destroy_process_group() -> None:
    """At interpreter exit, tear down the process group a Trainer created.

    The group lives as long as the process, not as one ``fit()``: under torchrun a destroyed
    default group cannot be created again (the new group reuses the old one's keys in the agent's
    store and connects to dead peers), so a second ``Trainer(...).fit()`` in the same script (a
    sweep, pretraining then a second stage) reuses the first one's group instead.
    """
    if vdist.is_dist():
        dist.destroy_process_group()


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


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
        self._stop_signal: Optional[int] = None
        self.last_checkpoint: Optional[Path] = None

    # ------------------------------------------------------------------ setup
    def _setup_device(self) -> torch.device:
        want = str(self.cfg.train.device).lower()
        if want not in ("auto", "cpu", "cuda"):
            raise _config_error(f"train.device must be auto, cpu or cuda, got '{want}'")
        if want == "cuda" and not torch.cuda.is_available():
            raise _config_error("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
        use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
        device = torch.device("cuda", vdist.local_rank()) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not vdist.is_dist():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            atexit.register(_destroy_process_group)
        return device

    def _batch_sizes(self, method: nn.Module, world: int) -> int:
        t = self.cfg.train
        if t.accumulate < 1:
            raise _config_error(f"train.accumulate must be >= 1, got {t.accumulate}")
        parts = world * t.accumulate
        if t.batch_size % parts:
            raise _config_error(
                f"train.batch_size={t.batch_size} (global) must split evenly over {world} rank(s) x "
                f"{t.accumulate} accumulation step(s); use a multiple of {parts}")
        micro = t.batch_size // parts
        per_loss = t.batch_size // t.accumulate
        need = getattr(method, "min_batch_size", 1)
        if per_loss < need:
            raise _config_error(
                f"method '{self.cfg.method.name}' needs at least {need} samples per loss "
                f"computation, but train.batch_size / train.accumulate = {per_loss}; raise "
                f"train.batch_size or lower train.accumulate")
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in method.modules())
        if has_bn and micro < 2:
            raise _config_error(
                f"batch norm needs >= 2 samples per rank, but train.batch_size={t.batch_size} over "
                f"{world} rank(s) and {t.accumulate} accumulation step(s) gives {micro}; raise "
                f"train.batch_size")
        return micro

    def _check_backbone(self, method: nn.Module) -> None:
        supported = getattr(method, "supported_backbones", ())
        family = getattr(getattr(method, "backbone", None), "family", None)
        if supported and family is not None and family not in supported:
            raise _config_error(
                f"method '{self.cfg.method.name}' needs a {' or '.join(supported)} backbone, got "
                f"backbone.name={self.cfg.backbone.name} ({family})")

    def _install_signal_handler(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self._stop_signal = signum

        return signal.signal(signal.SIGTERM, handler)

    # ------------------------------------------------------------------ main entry
    def fit(self) -> Dict[str, Any]:
        setup_console_logging()
        previous_handler = self._install_signal_handler()
        try:
            return self._fit()
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)

    def _fit(self) -> Dict[str, Any]:
        from vissl_lite.config import save_config, to_dict

        device = self._setup_device()
        resolved = resolve_auto(self.cfg, device, custom_data=self.dataset is not None
                                or self.transform is not None)   # `auto` values, for this device
        auto_summary, self.cfg = describe_auto(self.cfg, resolved), resolved
        cfg, t = self.cfg, self.cfg.train
        rank, world = vdist.rank(), vdist.world_size()
        main = rank == 0
        seed_everything(cfg.seed, cfg.deterministic)
        if t.precision not in PRECISIONS:
            raise _config_error(f"train.precision must be one of {', '.join(PRECISIONS)}, "
                                f"got '{t.precision}'")

        method = self.method
        if method is None:
            from vissl_lite.methods import build_method
            method = build_method(cfg)
        self._check_backbone(method)
        micro = self._batch_sizes(method, world)

        ckpt_path = find_resume(cfg.resume, self.output_dir)
        ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
        if world > 1:
            self._check_ranks_resume_alike(ckpt, world)
        if ckpt is not None:
            check_compatible(ckpt, cfg.method.name, cfg.backbone.name, str(ckpt_path))
        elif str(cfg.resume).lower() == "auto" and main:
            log.info(f"resume=auto: no checkpoint in {self.output_dir / 'checkpoints'}, "
                     f"starting a new run")

        loader = self._build_loader(cfg, method, rank, world, device, micro)
        steps_per_epoch = len(loader) // t.accumulate
        if steps_per_epoch < 1:
            raise _config_error(f"one epoch has {len(loader)} batches per rank, fewer than "
                                f"train.accumulate={t.accumulate}; use more data or smaller batches")
        total_steps = t.epochs * steps_per_epoch
        if t.max_steps is not None:
            total_steps = min(total_steps, t.max_steps)

        method.to(device)
        if t.channels_last:
            method.to(memory_format=torch.channels_last)
        if t.sync_bn and world > 1:
            if device.type == "cuda":
                method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
            elif main:
                log.warning("train.sync_bn=true is ignored on CPU (torch's SyncBatchNorm is GPU-only)")
        method.setup(total_steps, steps_per_epoch)
        method.train()

        lr = scaled_lr(cfg.optim, t.batch_size)
        optimizer = build_optimizer(cfg.optim, method, lr)
        scheduler = ParamScheduler(
            optimizer, total_steps, round(cfg.optim.warmup_epochs * steps_per_epoch), lr,
            min_lr=cfg.optim.min_lr, warmup_start_lr=cfg.optim.warmup_start_lr,
            weight_decay=cfg.optim.weight_decay, weight_decay_end=cfg.optim.weight_decay_end)
        amp_dtype = PRECISIONS[t.precision]
        scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None

        self.state = dict(step=0, epoch=0, batch_in_epoch=0, epoch_loss_sum=0.0,
                          epoch_loss_count=0, skipped_steps=0, best=None, metrics={})
        if ckpt is not None:
            self._restore(ckpt, method, optimizer, scheduler, scaler, rank, world)
        else:
            seed_everything(derive_seed(cfg.seed, rank, _RUNTIME_STREAM), cfg.deterministic)

        model: nn.Module = method
        if world > 1:
            model = nn.parallel.DistributedDataParallel(
                method, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=t.find_unused_parameters)
        if t.compile:
            model = torch.compile(model)

        config_dict = to_dict(cfg)
        if main:
            save_config(cfg, self.output_dir / "config.yaml")
        self.logger = RunLogger(self.output_dir, cfg.logger, config_dict, enabled=main,
                                resume_step=self.state["step"] if ckpt is not None else None)
        if auto_summary:
            self.logger.info(auto_summary)   # what `auto` resolved to (config.yaml has it too)
        if ckpt is not None:
            self.logger.info(f"resumed from {ckpt_path} at step {self.state['step']} "
                             f"(epoch {self.state['epoch']}, batch {self.state['batch_in_epoch']})")
        self.manager = CheckpointManager(self.output_dir / "checkpoints", cfg.checkpoint.keep_last)
        self.last_checkpoint = ckpt_path
        self.ctx = dict(method=method, model=model, optimizer=optimizer, scheduler=scheduler,
                        scaler=scaler, loader=loader, device=device, amp_dtype=amp_dtype,
                        total_steps=total_steps, steps_per_epoch=steps_per_epoch, lr=lr,
                        config_dict=config_dict, world=world, rank=rank)
        try:
            result = self._loop()
        except BaseException:
            self.logger.close(plot=False)
            raise
        self.logger.close(plot=True)
        return result

    def _build_loader(self, cfg, method, rank, world, device, micro):
        from vissl_lite.data.loader import build_train_loader
        return build_train_loader(cfg, method.views, rank, world, device, batch_size=micro,
                                  dataset=self.dataset, transform=self.transform)

    def _check_ranks_resume_alike(self, ckpt: Optional[Dict[str, Any]], world: int) -> None:
        """Every rank must continue from the same checkpoint (or none): a node that cannot see
        rank 0's checkpoints would otherwise start afresh beside the others and hang or diverge."""
        found: List[Any] = [None] * world
        dist.all_gather_object(found, None if ckpt is None else (ckpt["step"], ckpt["epoch"]))
        if len(set(found)) > 1:
            per_rank = ", ".join(f"rank {r}: {'none' if f is None else f'step {f[0]}'}"
                                 for r, f in enumerate(found))
            raise _config_error(
                f"the ranks found different checkpoints to resume from ({per_rank}); rank 0 "
                f"writes the checkpoints, so output_dir={self.output_dir} must be on a file "
                f"system every node sees (or give every node resume=PATH to the same file)")

    def _restore(self, ckpt, method, optimizer, scheduler, scaler, rank, world) -> None:
        try:
            method.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise _config_error(f"the checkpoint's weights do not fit this model ({str(e)[:300]}); "
                                f"was the backbone or head config changed since it was written?") from None
        method.load_extra_state(ckpt.get("method_state", {}))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt.get("scheduler", {}))
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        for key in self.state:
            if key in ckpt:
                self.state[key] = ckpt[key]
        rngs: List[Dict] = ckpt.get("rng", [])
        if ckpt.get("world_size", 1) != world and rank == 0:
            log.warning(f"the checkpoint was written with {ckpt.get('world_size')} rank(s), this "
                        f"run has {world}: training continues, but not bit-exactly")
        if rank < len(rngs):
            set_rng_state(rngs[rank])
        else:
            seed_everything(derive_seed(self.cfg.seed, rank, _RUNTIME_STREAM, self.state["step"]))
        changed = self._config_changes(ckpt.get("config", {}))
        if changed and rank == 0:
            log.warning("config differs from the checkpoint's in: " + ", ".join(changed[:10]))

    def _config_changes(self, old: Dict[str, Any]) -> List[str]:
        from vissl_lite.config import to_dict
        ignore = ("resume", "output_dir", "logger.")
        new_flat, old_flat = _flatten(to_dict(self.cfg)), _flatten(old)
        return [f"{k}: {old_flat.get(k)} -> {new_flat.get(k)}"
                for k in sorted(set(new_flat) | set(old_flat))
                if not k.startswith(ignore) and new_flat.get(k) != old_flat.get(k)]

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> Dict[str, Any]:
        c, s, cfg = self.ctx, self.state, self.cfg
        total, spe = c["total_steps"], c["steps_per_epoch"]
        log_every = max(1, cfg.train.log_every)
        self._window: List[Dict[str, float]] = []
        self._pending: List[Dict[str, Any]] = []
        self._stop_requested = False
        step_save = False
        self._last_record: Dict[str, Any] = {}
        self._saved_step = s["step"] if self.last_checkpoint is not None else None
        self.logger.start_progress(total, s["step"])
        t_window = time.perf_counter()
        steps_in_window = 0
        while s["step"] < total:
            c["loader"].set_epoch(s["epoch"], s["batch_in_epoch"] * cfg.train.accumulate)
            batches = iter(c["loader"])
            while s["batch_in_epoch"] < spe and s["step"] < total:
                self._pending.append(self._optimizer_step(batches))
                s["step"] += 1
                s["batch_in_epoch"] += 1
                steps_in_window += 1
                every = cfg.checkpoint.every_steps
                step_save = bool(every) and s["step"] % every == 0
                log_now = s["step"] % log_every == 0 or s["step"] == total
                if log_now or step_save or s["batch_in_epoch"] >= spe:
                    self._drain()
                if log_now:
                    elapsed = max(time.perf_counter() - t_window, 1e-9)
                    record = self._window_record(self._window, steps_in_window / elapsed)
                    self._last_record = record
                    self.logger.write(record)
                    self.logger.progress(steps_in_window, loss=record["loss"], lr=record["lr"],
                                         img_s=round(record["img_per_s"]))
                    self._window, steps_in_window, t_window = [], 0, time.perf_counter()
                if self._stop_requested:
                    self._stop_on_signal()
                if step_save and s["batch_in_epoch"] < spe:
                    self._save()
            if s["batch_in_epoch"] >= spe:
                self._end_epoch(force_save=step_save)
        if self._saved_step != s["step"]:
            self._save()
        result = {"step": s["step"], "epoch": s["epoch"], "skipped_steps": s["skipped_steps"],
                  "checkpoint": str(self.manager.last), "output_dir": str(self.output_dir),
                  "loss": self._last_record.get("loss"), **s["metrics"]}
        self.logger.info(f"done: {s['step']} steps; checkpoint {self.manager.last}")
        return result

    _saved_step: Optional[int] = None

    def _window_record(self, window: List[Dict[str, float]], steps_per_s: float) -> Dict[str, Any]:
        s = self.state
        keys = [k for k in window[-1] if k != "stop"]
        record: Dict[str, Any] = {"type": "step", "step": s["step"], "epoch": s["epoch"]}
        for k in keys:
            values = [w[k] for w in window if k in w]
            record[k] = sum(values) / len(values)
        record["lr"], record["wd"] = window[-1]["lr"], window[-1]["wd"]
        record["img_per_s"] = steps_per_s * self.cfg.train.batch_size
        return record

    def _drain(self) -> None:
        """Read the pending steps' numbers back from the device, in one transfer.

        Without ``train.skip_nonfinite`` the host does not wait for the device after every step
        (a ``.item()`` per step stops the CPU from queueing the next step's kernels while the GPU
        runs this one); the numbers are read here instead: at log steps, before a checkpoint and
        at the end of an epoch. A non-finite loss or gradient found here stops the run naming its
        step, before anything is logged or saved, so the last checkpoint stays a good one.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        flat = torch.cat([p["packed"] for p in pending]).tolist()
        s, check = self.state, not self.cfg.train.skip_nonfinite
        start = 0
        for p in pending:
            row = flat[start:start + len(p["keys"]) + 3]
            start += len(row)
            loss, grad_norm, stop = row[:3]
            if check and not (math.isfinite(loss) and (math.isfinite(grad_norm) or p["scaled"])):
                self._non_finite(p["step"], loss, grad_norm, p["values"]["lr"])
            self._window.append({"loss": loss, "grad_norm": grad_norm, **p["values"],
                                 **dict(zip(p["keys"], row[3:]))})
            if math.isfinite(loss):
                s["epoch_loss_sum"] += loss
                s["epoch_loss_count"] += 1
            self._stop_requested = self._stop_requested or stop > 0

    def _optimizer_step(self, batches) -> Dict[str, Any]:
        from vissl_lite.data.loader import move_batch

        c, t = self.ctx, self.cfg.train
        method, model, optimizer, scaler = c["method"], c["model"], c["optimizer"], c["scaler"]
        step = self.state["step"]
        values = c["scheduler"].step(step)
        memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        device = c["device"]
        autocast = torch.autocast(device.type, dtype=c["amp_dtype"] or torch.float32,
                                  enabled=c["amp_dtype"] is not None)
        loss_sum = torch.zeros((), device=device)
        metrics: Dict[str, Any] = {}
        for micro in range(t.accumulate):
            batch = move_batch(next(batches), device, memory_format)
            sync = (model.no_sync() if c["world"] > 1 and micro < t.accumulate - 1
                    and hasattr(model, "no_sync") else contextlib.nullcontext())
            with sync:
                with autocast:
                    out = model(batch)
                loss = out.loss.float() / t.accumulate
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += loss.detach()
            for k, v in out.metrics.items():
                v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
                metrics[k] = metrics.get(k, 0.0) + v.to(device) / t.accumulate
        if scaler is not None:
            scaler.unscale_(optimizer)
        method.on_before_optimizer_step(step)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = t.grad_clip if t.grad_clip else float("inf")
        grad_norm = (torch.nn.utils.clip_grad_norm_(params, max_norm) if params
                     else torch.zeros((), device=device))
        stop = float(self._stop_signal is not None)
        packed = torch.stack([loss_sum, grad_norm.float().to(device),
                              torch.tensor(stop, device=device),
                              *[metrics[k] for k in metrics]])
        if c["world"] > 1:
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            packed /= c["world"]
        ok = True          # checked in _drain unless a bad step must be skipped before it is taken
        if t.skip_nonfinite:
            loss_value, gnorm_value = packed[:2].tolist()
            # fp16 overflows in the gradient are normal: the GradScaler skips the step and rescales
            ok = math.isfinite(loss_value) and (math.isfinite(gnorm_value) or scaler is not None)
        if ok:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        else:
            self._non_finite(step, loss_value, gnorm_value, values["lr"])
            if scaler is not None:
                scaler.update()
        optimizer.zero_grad(set_to_none=True)
        method.on_step_end(step, c["total_steps"])
        return {"step": step, "packed": packed.detach(), "keys": list(metrics), "values": values,
                "scaled": scaler is not None}

    def _non_finite(self, step: int, loss: float, grad_norm: float, lr: float) -> None:
        what = f"loss={loss}" if not math.isfinite(loss) else f"gradient norm={grad_norm}"
        if self.cfg.train.skip_nonfinite:
            self.state["skipped_steps"] += 1
            self.logger.info(f"step {step}: non-finite {what}; step skipped "
                             f"(train.skip_nonfinite=true, {self.state['skipped_steps']} so far)")
            return
        last = (f"{self.last_checkpoint}" if self.last_checkpoint is not None
                else "none written yet")
        precision = self.cfg.train.precision
        raise NonFiniteLossError(
            f"non-finite {what} at step {step} (epoch {self.state['epoch']}, lr={lr:.4g}, "
            f"precision={precision}); last good checkpoint: {last}. Likely causes: a learning rate "
            f"too high for this batch size (lower optim.lr, lengthen optim.warmup_epochs, or set "
            f"train.grad_clip=1.0), or {'fp16 overflow (use train.precision=bf16 or fp32)' if precision == 'fp16' else 'low precision (try train.precision=fp32)' if precision != 'fp32' else 'a bug in the loss (e.g. log(0) or division by 0)'}. "
            f"Continue from the checkpoint with resume=auto after the change, or set "
            f"train.skip_nonfinite=true to skip such steps.")

    # ------------------------------------------------------------------ epochs, checkpoints
    def _end_epoch(self, force_save: bool = False) -> None:
        s, cfg = self.state, self.cfg
        epoch = s["epoch"]
        epoch_loss = s["epoch_loss_sum"] / max(s["epoch_loss_count"], 1)
        s["epoch"], s["batch_in_epoch"] = epoch + 1, 0
        s["epoch_loss_sum"], s["epoch_loss_count"] = 0.0, 0
        results: Dict[str, Any] = {"loss": epoch_loss}
        every = cfg.monitor.every_epochs
        if every and every > 0 and (epoch + 1) % every == 0:
            results.update(self._monitor(epoch))
        s["metrics"] = results
        self.logger.write({"type": "epoch", "step": s["step"], "epoch": epoch + 1,
                           **{("epoch_loss" if k == "loss" else k): v for k, v in results.items()}})
        is_best = self._is_best(results)
        scheduled = (cfg.checkpoint.every_epochs and (epoch + 1) % cfg.checkpoint.every_epochs == 0)
        last_epoch = s["step"] >= self.ctx["total_steps"]
        if scheduled or last_epoch or force_save:
            self._save(is_best=is_best)
        elif is_best:
            self._save(is_best=True, best_only=True)

    def _is_best(self, results: Dict[str, Any]) -> bool:
        cp, s = self.cfg.checkpoint, self.state
        if not cp.save_best or cp.best_metric not in results:
            return False
        value = float(results[cp.best_metric])
        if not math.isfinite(value):
            return False
        minimise = cp.best_metric == "loss"
        better = (s["best"] is None or (value < s["best"] if minimise else value > s["best"]))
        if better:
            s["best"] = value
        return better

    def _monitor(self, epoch: int) -> Dict[str, Any]:
        c = self.ctx
        if getattr(self, "_monitor_disabled", False):
            return {}
        if getattr(self, "_monitor_obj", None) is None:
            try:
                from vissl_lite.eval.monitor import OnlineMonitor
            except ImportError as e:
                self.logger.info(f"online monitor unavailable ({e}); set monitor.every_epochs=0")
                self._monitor_disabled = True
                return {}
            self._monitor_obj = OnlineMonitor(self.cfg, c["method"], c["device"])
        with preserved_rng():
            results = self._monitor_obj.run(epoch) or {}
        c["method"].train()
        return {k: float(v) for k, v in results.items() if isinstance(v, (int, float))
                or (torch.is_tensor(v) and v.numel() == 1)}

    def _checkpoint_state(self) -> Dict[str, Any]:
        c, s, cfg = self.ctx, self.state, self.cfg
        rng = rng_state()
        if c["world"] > 1:
            rngs: List[Any] = [None] * c["world"]
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        return {
            "format_version": FORMAT_VERSION,
            "method": cfg.method.name,
            "backbone": cfg.backbone.name,
            "config": c["config_dict"],
            "model": c["method"].state_dict(),
            "method_state": c["method"].extra_state_for_checkpoint(),
            "optimizer": c["optimizer"].state_dict(),
            "scheduler": c["scheduler"].state_dict(),
            "scaler": c["scaler"].state_dict() if c["scaler"] is not None else None,
            "rng": rngs,
            "world_size": c["world"],
            **{k: s[k] for k in ("step", "epoch", "batch_in_epoch", "epoch_loss_sum",
                                 "epoch_loss_count", "skipped_steps", "best", "metrics")},
        }

    def _save(self, is_best: bool = False, best_only: bool = False) -> None:
        self._drain()
        state = self._checkpoint_state()  # every rank: the RNG states are gathered
        if self.ctx["rank"] == 0:
            if best_only:
                from vissl_lite.engine.checkpoint import BEST, atomic_save
                atomic_save(state, self.manager.folder / BEST)
            else:
                self.last_checkpoint = self.manager.save(state, self.state["step"], is_best)
                self._saved_step = self.state["step"]
        if not best_only:
            self.last_checkpoint = self.manager.last
            self._saved_step = self.state["step"]

    def _stop_on_signal(self) -> None:
        self._save()
        vdist.barrier()  # no rank exits (which makes torchrun stop the others) before it is written
        self.logger.info(f"SIGTERM received: checkpoint written at step {self.state['step']} to "
                         f"{self.manager.last}; continue with resume=auto")
        raise SystemExit(128 + signal.SIGTERM)
