"""Add-ons: a method that wraps any registered method and adds a term to its loss.

E-SSL's rotation prediction (``essl.py``) and T-REGS's spanning-tree regulariser (``tregs.py``)
are not methods of their own but additions to one. Each is a small ``AddOnMethod`` registered
under its own name, whose config nests the base method's config under ``base``:

    method:
      name: essl                 # the add-on
      lambda_rot: 0.4            # the add-on's own options
      base:                      # any registered method, with its usual options
        name: simclr
        temperature: 0.5

The wrapper builds the base method on the same backbone (``self.base``), asks the pipeline for the
base's views plus ``extra_local_views`` more local views (appended last), hands the base its own
views, and adds its term to the base's loss. Every hook (``setup``, ``on_before_optimizer_step``,
``on_step_end``, ``backbone_for_eval``, checkpoint state) is delegated, so the trainer sees one
ordinary Method and nothing else changes. An add-on whose weight is 0 asks for no extra view and
computes nothing: it is then the base method exactly.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.registry import METHODS
from vissl_lite.shapes import RunShape


class AddOnMethod(Method):
    """Base class of add-ons; subclasses set ``extra_local_views`` and implement ``extra_loss``.

    Their ``Config`` has a ``base: Any`` field holding the wrapped method's config (with its
    ``name``); ``vissl_lite.config.load_config`` validates it against that method's schema.
    """

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        base_cfg = self.cfg.base       # a dict, or the base's Config when validated by load_config
        name = base_cfg.get("name") if isinstance(base_cfg, dict) else getattr(base_cfg, "name", None)
        if not name:
            raise ConfigError(f"method.base.name is missing: name the method that "
                              f"'{self.cfg.name}' adds to, e.g. method.base.name=simclr")
        base_cls = METHODS.get(name)
        if issubclass(base_cls, AddOnMethod):
            raise ConfigError(f"method.base.name={name} is itself an add-on; nest add-ons by "
                              f"naming a plain method as the innermost base")
        self.base = base_cls(backbone, base_cfg)
        spec = self.base.views
        self.views = ViewSpec(spec.recipe, spec.num_global, spec.num_local + self.extra_local_views,
                              spec.crop_boxes)
        self.min_batch_size = self.base.min_batch_size

    @classmethod
    def check_shape(cls, cfg: Any, shape: RunShape) -> None:
        base = cfg.base
        name = base.get("name") if isinstance(base, dict) else getattr(base, "name", None)
        if name:
            METHODS.light(name).check_run(base, shape)

    @property
    def extra_local_views(self) -> int:
        """Local views the add-on needs after the base's (0 when it is switched off)."""
        return 0

    def base_batch(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        views: List[torch.Tensor] = batch["views"]
        if not self.extra_local_views:
            return batch
        return {**batch, "views": views[: len(views) - self.extra_local_views]}

    def setup(self, total_steps: int, steps_per_epoch: int) -> None:
        super().setup(total_steps, steps_per_epoch)
        self.base.setup(total_steps, steps_per_epoch)

    def check_data_size(self, num_samples: int) -> None:
        self.base.check_data_size(num_samples)

    def on_before_optimizer_step(self, step: int) -> None:
        self.base.on_before_optimizer_step(step)

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.base.on_step_end(step, total_steps)

    def backbone_for_eval(self) -> nn.Module:
        return self.base.backbone_for_eval()

    def extra_state_for_checkpoint(self) -> Dict[str, Any]:
        return self.base.extra_state_for_checkpoint()

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        self.base.load_extra_state(state)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        out = self.base.training_step(self.base_batch(batch))
        return self.add_to(out, batch)

    def add_to(self, out: StepOutput, batch: Dict[str, Any]) -> StepOutput:
        """The base's output plus the add-on's term (subclasses)."""
        raise NotImplementedError
