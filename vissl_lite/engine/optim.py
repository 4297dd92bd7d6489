"""Optimizers: SGD, AdamW (torch) and LARS (You et al. 2017, as used by BYOL and Barlow Twins).

LARS is written here because torch has none and the timm/apex variants differ in details that
matter for SSL (whether weight decay enters the trust ratio, which parameters are excluded). This
one follows the Barlow Twins / BYOL reference code: for every parameter ``w`` with gradient ``g``

    g <- g + wd * w
    g <- g * eta * ||w|| / ||g||        (trust ratio; 1 if either norm is 0)
    mu <- momentum * mu + g
    w <- w - lr * mu

and parameters marked ``lars_exclude`` (biases and normalisation weights, by default) get neither
weight decay nor the trust ratio: plain SGD with momentum.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import torch
from torch import nn

from vissl_lite.errors import ConfigError


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling; see the module docstring for the update.

    Under fp16's ``GradScaler`` the step is skipped on the device: ``_step_supports_amp_scaling``
    makes the scaler hand over ``found_inf`` (and ``grad_scale`` when the gradients are still
    scaled) instead of reading the inf flag back to the host before every step, as it does for
    optimizers without that contract.
    """

    _step_supports_amp_scaling = True

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.02):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every group with ``torch._foreach_*`` kernels (no per-parameter loop of
        kernels, nothing read back to the host: the trust ratios stay on the device)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        skip = None if found_inf is None else found_inf.ne(0)
        for group in self.param_groups:
            params = [w for w in group["params"] if w.grad is not None]
            if not params:
                continue
            grads = [w.grad for w in params]
            if grad_scale is not None:
                grads = torch._foreach_div(grads, grad_scale)
            if skip is not None:
                grads = [g.masked_fill(skip, 0) for g in grads]
            if not group["lars_exclude"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                    torch.ones_like(w_norm))
                torch._foreach_mul_(grads, trust.unbind(0))
            mus = [self._momentum_buffer(w) for w in params]
            if skip is None:
                torch._foreach_mul_(mus, group["momentum"])
                torch._foreach_add_(mus, grads)
                torch._foreach_add_(params, mus, alpha=-group["lr"])
            else:  # mu <- keep * (momentum mu + g) + (1 - keep) mu, exact for keep in {0, 1}
                keep = (~skip).to(mus[0].dtype)
                moved = torch._foreach_add(torch._foreach_mul(mus, group["momentum"]), grads)
                torch._foreach_mul_(moved, keep)
                torch._foreach_mul_(mus, 1 - keep)
                torch._foreach_add_(mus, moved)
                torch._foreach_add_(params, torch._foreach_mul(mus, keep), alpha=-group["lr"])
        return loss

    def _momentum_buffer(self, w: torch.Tensor) -> torch.Tensor:
        state = self.state[w]
        if "mu" not in state:
            state["mu"] = torch.zeros_like(w)
        return state["mu"]


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


def param_groups(model: nn.Module, weight_decay: float,
                 exclude_bias_and_norm: bool = True) -> List[Dict]:
    """Split trainable parameters into a decayed group and an excluded group.

    Excluded: biases and every 1-d parameter (norm weights), plus what timm models list in
    ``no_weight_decay()``. Excluded parameters get no weight decay and no LARS adaptation.
    A model with a ``param_lr_scale(name) -> float`` method gets one group per (excluded, scale)
    pair, with that ``lr_scale`` (which ``ParamScheduler`` multiplies the lr by).
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
                 apply_weight_decay=not excluded, lars_exclude=excluded, lr_scale=scale)
            for (excluded, scale), params in ordered if params or (excluded, scale) == (False, 1.0)]


OPTIMIZERS = ("sgd", "adamw", "lars")


def build_optimizer(optim_cfg, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimizer named by ``optim.name`` over ``param_groups(model)``; ``lr`` is already scaled.

    SGD and AdamW are fused when the parameters are on a GPU; LARS uses foreach kernels.
    """
    name = str(optim_cfg.name).lower()
    groups = param_groups(model, optim_cfg.weight_decay, optim_cfg.exclude_bias_and_norm)
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
                    momentum=optim_cfg.momentum, eta=optim_cfg.lars_eta)
    raise ConfigError(f"optim.name: unknown optimizer '{optim_cfg.name}'; "
                      f"choose one of {', '.join(OPTIMIZERS)}")


def scaled_lr(optim_cfg, global_batch_size: int) -> float:
    """``optim.lr``, times ``batch_size / lr_batch_base`` when ``optim.scale_lr`` (Goyal et al. 2017)."""
    if optim_cfg.scale_lr:
        return optim_cfg.lr * global_batch_size / optim_cfg.lr_batch_base
    return optim_cfg.lr
