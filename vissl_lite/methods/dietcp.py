"""DIET-CP: datum-index classification for continued pretraining (Rodas, Montesino, Ambsdorf,
Klindt, Balestriero 2025, arXiv:2509.06990), after DIET (Ibrahim et al. 2023, arXiv:2302.10260).

Each training image is its own class: a linear head W (num_data x D) on the backbone features
of one augmented view predicts the image's position in the data set, with label smoothing:

    h = backbone(view)                                  (B, D)
    loss = CE_ls(W h, index),  CE_ls = (1 - ls) * CE(W h, index) + ls * mean_k -log softmax(W h)_k
    ls = 0.3 (DIET's default label smoothing; DIET-CP keeps DIET's objective)

No projector, no second view, no teacher: the only hyper-parameters are the optimiser's, which
is why DIET-CP suits small target sets (the paper: ~1000 images) and continued pretraining from
backbone-only weights (``backbone.pretrained_path``). ``num_data`` must be at least the training
set's size (``data.subset`` when set); the trainer checks it once on the host before the first
step (``check_data_size``), so the step itself has fixed shapes and no host sync.
The label smoothing value 0.3 is taken from the task brief / DIET's code defaults and was not
re-checked against the DIET-CP paper here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.registry import METHODS


@dataclass
class DIETCPConfig:
    name: str = "dietcp"
    num_data: int = 50000             # classes of the datum-index head: the training set's size
    label_smoothing: float = 0.3

    def __post_init__(self):
        if self.num_data < 2:
            raise ConfigError(f"method.num_data={self.num_data}: must be the training set's size (>= 2)")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"method.label_smoothing={self.label_smoothing}: must be in [0, 1)")


def diet_loss(logits: torch.Tensor, index: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy of the datum-index logits (B, N) against the sample indices, smoothed."""
    return F.cross_entropy(logits.float(), index, label_smoothing=label_smoothing)


@METHODS.register("dietcp", help="DIET-CP: datum-index classification for continued pretraining on small sets (Rodas et al. 2025)")
class DIETCP(Method):
    """Backbone + a linear head over the N training images, trained to predict each image's index."""

    Config = DIETCPConfig
    views = ViewSpec("simclr", 1, 0)
    min_batch_size = 1
    tiny_config = {"num_data": 64}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        self.head = nn.Linear(backbone.num_features, self.cfg.num_data)

    def check_data_size(self, num_samples: int) -> None:
        if num_samples > self.cfg.num_data:
            raise ConfigError(f"method.num_data={self.cfg.num_data} but the training set has "
                              f"{num_samples} images; set method.num_data={num_samples}")

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        h = self.backbone(batch["views"][0])
        logits = self.head(h)
        index = batch["index"]
        loss = diet_loss(logits, index, self.cfg.label_smoothing)
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == index).float().mean()
        return StepOutput(loss, {"index_acc": acc}, embedding=h.detach())
