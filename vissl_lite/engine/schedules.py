"""``ParamScheduler``: writes the learning rate and weight decay of every optimizer step into the
parameter groups, from the formulas of ``vissl_lite.schedules`` (groups that are excluded from
weight decay keep 0). No state beyond the step is needed, so a resumed run gets the same values.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from vissl_lite.schedules import cosine_schedule, linear_schedule, warmup_cosine_schedule

__all__ = ["ParamScheduler", "cosine_schedule", "linear_schedule", "warmup_cosine_schedule"]


class ParamScheduler:
    """Sets ``lr`` and ``weight_decay`` of an optimizer's groups from the step number.

    A group's ``lr_scale`` (default 1) multiplies the learning rate; a group with
    ``apply_weight_decay=False`` (biases and norm weights) keeps a weight decay of 0.
    ``weight_decay_end=None`` keeps the weight decay constant.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 lr: float, min_lr: float = 0.0, warmup_start_lr: float = 0.0,
                 weight_decay: float = 0.0, weight_decay_end: Optional[float] = None):
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.base_lr, self.min_lr, self.warmup_start_lr = lr, min_lr, warmup_start_lr
        self.weight_decay = weight_decay
        self.weight_decay_end = weight_decay if weight_decay_end is None else weight_decay_end
        self.last_step = -1

    def lr_at(self, step: int) -> float:
        return warmup_cosine_schedule(step, self.total_steps, self.warmup_steps, self.base_lr,
                                      self.min_lr, self.warmup_start_lr)

    def weight_decay_at(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    def step(self, step: int) -> Dict[str, float]:
        """Apply the values of optimizer step ``step`` (0-based) and return them."""
        lr, wd = self.lr_at(step), self.weight_decay_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
            group["weight_decay"] = wd if group.get("apply_weight_decay", True) else 0.0
        self.last_step = step
        return {"lr": lr, "wd": wd}

    def state_dict(self) -> Dict[str, Any]:
        return {"last_step": self.last_step, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.last_step = int(state.get("last_step", -1))
