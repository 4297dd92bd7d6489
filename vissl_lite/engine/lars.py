"""LARS (You et al. 2017) in the two forms the self-supervised sources use.

For a parameter ``w`` with gradient ``g``, weight decay ``wd``, trust coefficient ``eta`` and the
group's learning rate ``lr``, every form updates

    u  <- (g + wd * w) * trust      mu <- momentum * mu + u      w <- w - lr * mu

and they differ in ``trust`` (``optim.lars_denominator``, ``optim.lars_clip``):

``norm_of_sum`` (Barlow Twins and VICReg ``main.py``, MoCo v3 ``moco/optimizer.py``, BYOL's
``optimizers.py``, SimCLR's ``lars_optimizer.py``)::

    trust = eta * ||w|| / ||g + wd * w||               (1 if either norm is 0)

``sum_of_norms`` (apex ``LARC`` as SwAV uses it, solo-learn's and lightly's ``LARS``)::

    trust = eta * ||w|| / (||g|| + wd * ||w|| + 1e-8)  (if ||w|| or ||g|| is 0: trust 1 and
                                                         no weight decay)

``clip`` (solo-learn's ``clip_lr``, apex ``LARC(clip=True)``) replaces ``trust`` by
``min(trust / lr, 1)``: the adapted rate ``lr * trust`` becomes ``min(trust, lr)``, capped at the
scheduled rate. Every source uses ``eta = 0.001`` except solo-learn's CIFAR recipes (0.02, always
with ``clip``). Parameters of a group with ``lars_exclude`` (biases and normalisation weights;
``optim.exclude_bias_and_norm``) get neither weight decay nor the trust ratio: plain SGD with
momentum, as in every source but SwAV, whose LARC adapts and decays every parameter
(``exclude_bias_and_norm: false``). lightly's ``LARS`` also skips the trust ratio of any group
whose weight decay is 0; here (as in solo-learn and apex) a group is adapted unless excluded.
SimCLR puts ``lr`` inside the momentum buffer (``mu <- momentum * mu + lr * u``): the same update
while ``lr`` is constant.
"""
from __future__ import annotations

from typing import Iterable, List

import torch

DENOMINATORS = ("norm_of_sum", "sum_of_norms")


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling; see the module docstring for the update.

    Under fp16's ``GradScaler`` the step is skipped on the device: ``_step_supports_amp_scaling``
    makes the scaler hand over ``found_inf`` (and ``grad_scale`` when the gradients are still
    scaled) instead of reading the inf flag back to the host before every step, as it does for
    optimizers without that contract.
    """

    _step_supports_amp_scaling = True

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001, denominator: str = "norm_of_sum",
                 clip: bool = False, eps: float = 1e-8):
        if denominator not in DENOMINATORS:
            raise ValueError(f"LARS denominator must be one of {DENOMINATORS}, got {denominator!r}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        denominator=denominator, clip=clip, eps=eps, lars_exclude=False)
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
                grads = _adapt(params, grads, group)
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


def _adapt(params: List[torch.Tensor], grads: List[torch.Tensor], group) -> List[torch.Tensor]:
    """``(g + wd w) * trust`` for every parameter of a group, in the group's convention."""
    wd, eta = group["weight_decay"], group["eta"]
    w_norm = torch.stack(torch._foreach_norm(params))
    if group["denominator"] == "norm_of_sum":
        grads = torch._foreach_add(grads, params, alpha=wd)
        u_norm = torch.stack(torch._foreach_norm(grads))
        ok = (w_norm > 0) & (u_norm > 0)
        trust = eta * w_norm / u_norm
    else:
        g_norm = torch.stack(torch._foreach_norm(grads))
        ok = (w_norm > 0) & (g_norm > 0)
        trust = eta * w_norm / (g_norm + wd * w_norm + group["eps"])
        decay = ok.to(w_norm.dtype) * wd
        grads = torch._foreach_add(grads, torch._foreach_mul(params, decay.unbind(0)))
    if group["clip"]:
        trust = (trust / group["lr"]).clamp(max=1.0)
    trust = torch.where(ok, trust, torch.ones_like(trust))
    return torch._foreach_mul(grads, trust.unbind(0))
