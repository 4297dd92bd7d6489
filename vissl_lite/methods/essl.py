"""E-SSL: Equivariant self-supervised learning (Dangovski et al. 2022, arXiv:2111.00899).

An add-on (see ``addon.py``) to any method: next to the base method's views, the pipeline makes
one more, smaller view (a local crop: 16 px on CIFAR as rdangovs/essl, 96 px at 224); it is
rotated by 0, 90, 180 and 270 degrees, and a small head on the backbone features predicts the
rotation (4-way classification). The backbone thus becomes sensitive (equivariant) to rotations
while the base loss keeps it invariant to the other augmentations:

    x_r = rot90(x, k) for k in {0, 1, 2, 3}                 labels k
    loss = L_base + lambda * CE(head(f(x_r)), k)            lambda = 0.4 with SimCLR on CIFAR

``all_rotations=true`` (reference code) rotates every image all four ways (4B images);
``false`` rotates each quarter of the batch by one angle (B images, 4x cheaper). Both are fixed
shapes (``torch.rot90`` on slices whose sizes depend only on B), with labels built on the device.
The head is the reference's: Linear-LayerNorm-ReLU, Linear-LayerNorm-ReLU, Linear to 4 logits.
``lambda_rot = 0`` asks for no extra view and gives the base method exactly (the head then gets
no gradient: DDP needs ``train.find_unused_parameters=true`` in that case).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.errors import ConfigError
from vissl_lite.methods.addon import AddOnMethod
from vissl_lite.methods.base import StepOutput
from vissl_lite.registry import METHODS


@dataclass
class ESSLConfig:
    name: str = "essl"
    base: Any = field(default_factory=lambda: {"name": "simclr"})  # the wrapped method's config
    lambda_rot: float = 0.4           # weight of the rotation loss (0.4 with SimCLR on CIFAR)
    rot_hidden_dim: int = 2048
    all_rotations: bool = True        # every image 4 ways (reference) or one angle per quarter

    def __post_init__(self):
        if self.lambda_rot < 0:
            raise ConfigError(f"method.lambda_rot={self.lambda_rot}: must be >= 0")


def rotate_batch(x: torch.Tensor, all_rotations: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotated images and their labels k (rotation by k x 90 degrees counter-clockwise)."""
    if all_rotations:
        parts = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    else:
        parts = [torch.rot90(q, k, dims=(2, 3)) for k, q in enumerate(torch.tensor_split(x, 4))]
    labels = torch.cat([torch.full((p.shape[0],), k, dtype=torch.long, device=x.device)
                        for k, p in enumerate(parts)])
    return torch.cat(parts), labels


def rotation_head(in_dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, 4))


@METHODS.register("essl", help="E-SSL add-on: rotation prediction on an extra small view, on any method (Dangovski et al. 2022)")
class ESSL(AddOnMethod):
    """Any base method + predicting the rotation of an extra, smaller view."""

    Config = ESSLConfig
    tiny_config = {"base": {"name": "simclr", "proj_hidden_dim": 32, "proj_output_dim": 16},
                   "rot_hidden_dim": 32}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        self.rotation_head = rotation_head(backbone.num_features, self.cfg.rot_hidden_dim)

    @property
    def extra_local_views(self) -> int:
        return 1 if self.cfg.lambda_rot > 0 else 0

    def add_to(self, out: StepOutput, batch: Dict[str, Any]) -> StepOutput:
        if not self.extra_local_views:
            return out
        images, labels = rotate_batch(batch["views"][-1], self.cfg.all_rotations)
        logits = self.rotation_head(self.backbone(images))
        rot_loss = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            rot_acc = (logits.argmax(dim=1) == labels).float().mean()
        metrics = {**out.metrics, "rot_loss": rot_loss.detach(), "rot_acc": rot_acc}
        return StepOutput(out.loss + self.cfg.lambda_rot * rot_loss, metrics)
