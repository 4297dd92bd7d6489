"""The one interface between the trainer and a self-supervised method.

A ``Method`` is an ``nn.Module`` built from a backbone plus its heads. It tells the augmentation
pipeline which views it needs (``views``), turns a batch of views into a loss (``training_step``),
updates what is not learned by gradient (``on_step_end``: EMA teachers, centers, schedules), and
hands evaluators the encoder to freeze (``backbone_for_eval``). The trainer calls nothing else and
knows no method by name.

Batch format given to ``training_step`` (built by ``vissl_lite.data.loader``):
    {"views":  [Tensor(B, 3, H_i, W_i), ...]   float, normalised, on the training device;
                                              global views first, then local views
     "labels": Tensor(B) long                 never used for the loss; for online monitors only
     "index":  Tensor(B) long}                position of each sample in the data set
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

import torch
from torch import nn

from vissl_lite.augment.spec import ViewSpec


@dataclass
class StepOutput:
    """A training step's scalar loss and the numbers to log (floats or 0-d tensors)."""

    loss: torch.Tensor
    metrics: Dict[str, Any] = field(default_factory=dict)
    embedding: Optional[torch.Tensor] = None  # detached, for online monitors (e.g. RankMe)


class Method(nn.Module):
    """Base class of every method plugin (see module docstring).

    Subclasses set ``Config`` to a dataclass of their hyper-parameters (the ``method`` section of
    the YAML file is validated against it) and are registered with ``@METHODS.register("name")``.
    They are constructed as ``cls(backbone, cfg)`` where ``cfg`` is that validated section.
    """

    Config: ClassVar[type]
    views: ViewSpec = ViewSpec()

    #: minimum global batch the loss is defined for (checked by the trainer before it starts)
    min_batch_size: ClassVar[int] = 2
    #: backbone families the method supports, e.g. ("vit",); empty means any
    supported_backbones: ClassVar[tuple] = ()

    def setup(self, total_steps: int, steps_per_epoch: int) -> None:
        """Called once by the trainer before the first step (schedules that depend on run length)."""
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch

    def forward(self, batch: Dict[str, Any]) -> StepOutput:
        return self.training_step(batch)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        raise NotImplementedError

    def on_before_optimizer_step(self, step: int) -> None:
        """Hook after backward, before the optimizer step (e.g. DINO freezes its last layer)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Hook after the optimizer step (e.g. EMA teacher update)."""

    def backbone_for_eval(self) -> nn.Module:
        """The encoder evaluators freeze: images (B, 3, H, W) -> pooled features (B, D)."""
        return self.backbone

    def extra_state_for_checkpoint(self) -> Dict[str, Any]:
        """Anything outside ``state_dict`` the method must persist (buffers are in state_dict)."""
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        pass
