"""Optimizers: SGD, AdamW (torch) and LARS (``vissl_lite.engine.lars``), over parameter groups
that keep biases and normalisation weights apart (no weight decay, no LARS adaptation, and an
optional learning-rate scale: Barlow Twins trains them at 0.0048 against 0.2 for the weights).
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from vissl_lite.engine.lars import LARS
from vissl_lite.errors import ConfigError


def _no_weight_decay_names(model: nn.Module) -> set:
    """Names that timm models list in ``no_weight_decay()`` (pos_embed, cls_token, ...), prefixed."""
    if getattr(model, "decay_listed_params", False):
        return set()
    names = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            try:
                listed = fn()
            except TypeError:
                continue
            names |= {f"{prefix}.{n}" if prefix else n for n in listed}
    return names


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True,
                 exclude_lr_scale: float = 1.0) -> List[Dict]:
    """Split trainable parameters into a decayed group and an excluded group.

    Excluded: biases and every 1-d parameter (norm weights), plus what timm models list in
    ``no_weight_decay()``. Excluded parameters get no weight decay, no LARS adaptation and
    ``lr_scale = exclude_lr_scale`` (``optim.exclude_lr_scale``; ``ParamScheduler`` multiplies the
    scheduled lr by a group's ``lr_scale`` at every step, so the ratio holds throughout).
    A model with a ``param_lr_scale(name) -> float`` method gets one group per (excluded, scale)
    pair, its scale multiplied in.
    """
    skip = _no_weight_decay_names(model) if exclude_bias_and_norm else set()
    # a method may scale the lr per parameter (e.g. DINOv2's layer-wise decay): one group per scale
    lr_scale = getattr(model, "param_lr_scale", lambda name: 1.0)
    buckets: Dict[tuple, List] = {(False, 1.0): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = exclude_bias_and_norm and (p.ndim <= 1 or name.endswith(".bias") or name in skip)
        buckets.setdefault((excluded, float(lr_scale(name))), []).append(p)
    ordered = sorted(buckets.items(), key=lambda kv: (kv[0][0], -kv[0][1]))  # decayed, lr x1 first
    return [dict(params=params, weight_decay=0.0 if excluded else weight_decay,
                 apply_weight_decay=not excluded, lars_exclude=excluded,
                 lr_scale=scale * exclude_lr_scale if excluded else scale)
            for (excluded, scale), params in ordered if params or (excluded, scale) == (False, 1.0)]


OPTIMIZERS = ("sgd", "adamw", "lars")


def build_optimizer(optim_cfg, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimizer named by ``optim.name`` over ``param_groups(model)``; ``lr`` is already scaled.

    SGD and AdamW are fused when the parameters are on a GPU; LARS uses foreach kernels.
    """
    name = str(optim_cfg.name).lower()
    if optim_cfg.exclude_lr_scale != 1.0 and not optim_cfg.exclude_bias_and_norm:
        raise ConfigError(f"optim.exclude_lr_scale={optim_cfg.exclude_lr_scale} scales the lr of "
                          f"biases and norm weights, which optim.exclude_bias_and_norm=false does "
                          f"not set apart; set optim.exclude_bias_and_norm=true")
    groups = param_groups(model, optim_cfg.weight_decay, optim_cfg.exclude_bias_and_norm,
                          optim_cfg.exclude_lr_scale)
    if not any(g["params"] for g in groups):
        raise ConfigError("the model has no trainable parameters (all requires_grad=False)")
    # on a GPU, one fused kernel for all parameters (it also lets an fp16 GradScaler skip its sync)
    fused = {"fused": True} if all(p.is_cuda for g in groups for p in g["params"]) else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum,
                               weight_decay=optim_cfg.weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg.betas),
                                 weight_decay=optim_cfg.weight_decay, **fused)
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=optim_cfg.weight_decay,
                    momentum=optim_cfg.momentum, eta=optim_cfg.lars_eta,
                    denominator=optim_cfg.lars_denominator, clip=optim_cfg.lars_clip)
    raise ConfigError(f"optim.name: unknown optimizer '{optim_cfg.name}'; "
                      f"choose one of {', '.join(OPTIMIZERS)}")


def scaled_lr(optim_cfg, global_batch_size: int) -> float:
    """``optim.lr``, times ``batch_size / lr_batch_base`` when ``optim.scale_lr`` (Goyal et al. 2017)."""
    if optim_cfg.scale_lr:
        return optim_cfg.lr * global_batch_size / optim_cfg.lr_batch_base
    return optim_cfg.lr
