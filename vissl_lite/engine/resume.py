"""What a checkpoint holds for exact resume, and putting it back.

``checkpoint_state`` gathers everything a resumed run needs to continue bit for bit (weights,
method state, optimizer, scheduler, scaler, the online linear head, every rank's RNG state and the
``TrainState``); ``restore`` loads it into freshly built components. ``find_and_check`` finds the
checkpoint ``resume`` points at and refuses one from another method or backbone, or ranks that
would continue from different checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch.distributed as dist

from vissl_lite.engine import dcp
from vissl_lite.engine.checkpoint import (FORMAT_VERSION, check_compatible, find_resume,
                                          load_checkpoint)
from vissl_lite.engine.logger import log
from vissl_lite.engine.state import TrainState
from vissl_lite.errors import CheckpointError, ConfigError
from vissl_lite.methods.base import per_rank_buffer_names
from vissl_lite.rng import derive_seed, rng_state, seed_everything, set_rng_state

if TYPE_CHECKING:
    from vissl_lite.engine.components import Components

RUNTIME_STREAM = 17  # the training process's RNG stream after the model is built
_NOT_COMPARED = ("resume", "output_dir", "overwrite", "logger.")


def find_and_check(cfg, output_dir: Path, world: int) -> Tuple[Optional[Path], Optional[Dict]]:
    """The checkpoint to resume from and its contents, or ``(None, None)`` for a fresh run."""
    path = find_resume(cfg.resume, output_dir)
    ckpt = None
    if path is not None:   # a sharded checkpoint's weights are read after the model is sharded
        ckpt = dcp.read_extra(path) if dcp.is_sharded(path) else load_checkpoint(path)
    if world > 1:
        _check_ranks_resume_alike(ckpt, world, output_dir)
    if ckpt is not None:
        check_compatible(ckpt, cfg.method.name, cfg.backbone.name, str(path))
    return path, ckpt


def _check_ranks_resume_alike(ckpt: Optional[Dict[str, Any]], world: int, output_dir: Path) -> None:
    """Every rank must continue from the same checkpoint (or none): a node that cannot see
    rank 0's checkpoints would otherwise start afresh beside the others and hang or diverge."""
    found: List[Any] = [None] * world
    dist.all_gather_object(found, None if ckpt is None else (ckpt["step"], ckpt["epoch"]))
    if len(set(found)) > 1:
        per_rank = ", ".join(f"rank {r}: {'none' if f is None else f'step {f[0]}'}"
                             for r, f in enumerate(found))
        raise ConfigError(
            f"the ranks found different checkpoints to resume from ({per_rank}); rank 0 "
            f"writes the checkpoints, so output_dir={output_dir} must be on a file "
            f"system every node sees (or give every node resume=PATH to the same file)")


def checkpoint_state(c: "Components", state: TrainState, cfg,
                     sharded: bool = False) -> Dict[str, Any]:
    """The checkpoint dict; called on every rank (the RNG states and per-rank buffers are gathered).
    ``sharded``: without weights and optimizer state, which DCP writes (``engine/dcp.py``)."""
    buffers = dict(c.method.named_buffers())
    own = {"rng": rng_state(), "buffers": {name: buffers[name].detach().cpu()
                                           for name in per_rank_buffer_names(c.method)}}
    if c.runtime.world > 1:
        ranks: List[Any] = [None] * c.runtime.world
        dist.all_gather_object(ranks, own)
    else:
        ranks = [own]
    head = c.online_head
    return {
        "format_version": FORMAT_VERSION,
        "method": cfg.method.name,
        "backbone": cfg.backbone.name,
        "config": c.config_dict,
        **({} if sharded else {"model": c.method.state_dict(),
                                "optimizer": c.optimizer.state_dict()}),
        "method_state": c.method.extra_state_for_checkpoint(),
        "scheduler": c.scheduler.state_dict(),
        "scaler": c.scaler.state_dict() if c.scaler is not None else None,
        "online_linear": (None if head is None else
                          {"head": head.state_dict(), "optimizer": head.optimizer.state_dict()}),
        "rng": [r["rng"] for r in ranks],
        "per_rank_buffers": [r["buffers"] for r in ranks],
        "world_size": c.runtime.world,
        **state.to_checkpoint(),
    }


def restore(ckpt: Dict[str, Any], c: "Components", cfg) -> TrainState:
    """Load ``ckpt`` into the components and the RNGs; returns the run's state."""
    try:
        if "sharded" in ckpt:
            dcp.load_sharded(ckpt["sharded"], c.method, c.optimizer)
        elif c.strategy == "fsdp" and c.runtime.world > 1:
            raise CheckpointError("a checkpoint written under train.strategy=ddp cannot resume a "
                                  "sharded run; resume it with train.strategy=ddp")
        else:
            c.method.load_state_dict(ckpt["model"])
            c.optimizer.load_state_dict(ckpt["optimizer"])
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint's weights do not fit this model ({str(e)[:300]}); "
                              f"was the backbone or head config changed since it was written?"
                              ) from None
    c.method.load_extra_state(ckpt.get("method_state", {}))
    _restore_per_rank_buffers(ckpt, c.method, c.runtime.rank, c.runtime.world)
    c.scheduler.load_state_dict(ckpt.get("scheduler", {}))
    if c.scaler is not None and ckpt.get("scaler"):
        c.scaler.load_state_dict(ckpt["scaler"])
    if c.online_head is not None and ckpt.get("online_linear"):
        c.online_head.load_state_dict(ckpt["online_linear"]["head"])
        c.online_head.optimizer.load_state_dict(ckpt["online_linear"]["optimizer"])
    state = TrainState.from_checkpoint(ckpt)
    rank, world = c.runtime.rank, c.runtime.world
    rngs: List[Dict] = ckpt.get("rng", [])
    if ckpt.get("world_size", 1) != world and rank == 0:
        log.warning(f"the checkpoint was written with {ckpt.get('world_size')} rank(s), this "
                    f"run has {world}: training continues, but not bit-exactly")
    if rank < len(rngs):
        set_rng_state(rngs[rank])
    else:
        seed_everything(derive_seed(cfg.seed, rank, RUNTIME_STREAM, state.step))
    changed = config_changes(c.config_dict, ckpt.get("config", {}))
    if changed and rank == 0:
        log.warning("config differs from the checkpoint's in: " + ", ".join(changed[:10]))
    return state


def _restore_per_rank_buffers(ckpt: Dict[str, Any], method, rank: int, world: int) -> None:
    """Each rank takes back its own per-rank buffers; on another number of ranks (or from a
    checkpoint without them) they keep their initial values, which the method is told through
    ``method_state``'s ``world_size``."""
    names = per_rank_buffer_names(method)
    saved = ckpt.get("per_rank_buffers") or []
    if not names:
        return
    if ckpt.get("world_size", 1) != world or len(saved) != world:
        if rank == 0:
            log.warning(f"per-rank buffers {', '.join(names)} start afresh: the checkpoint holds "
                        f"{len(saved)} rank(s) of them, this run has {world}")
        return
    buffers = dict(method.named_buffers())
    for name in names:
        value = saved[rank].get(name)
        if value is None or value.shape != buffers[name].shape:
            got = "none" if value is None else tuple(value.shape)
            raise CheckpointError(f"the checkpoint's per-rank buffer {name} (shape {got}) does not "
                                  f"fit this model ({tuple(buffers[name].shape)}); was the method "
                                  f"config changed since it was written?")
        buffers[name].copy_(value)


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_changes(new: Dict[str, Any], old: Dict[str, Any]) -> List[str]:
    """``key: old -> new`` for each config value that differs (paths and logging not counted)."""
    new_flat, old_flat = _flatten(new), _flatten(old)
    return [f"{k}: {old_flat.get(k)} -> {new_flat.get(k)}"
            for k in sorted(set(new_flat) | set(old_flat))
            if not k.startswith(_NOT_COMPARED) and new_flat.get(k) != old_flat.get(k)]
