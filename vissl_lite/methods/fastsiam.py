"""FastSiam: SimSiam with K views, each predicting the mean of the others (Pototzky et al. 2022,
"FastSiam: Resource-Efficient Self-supervised Learning on a Single GPU", GCPR 2022).

SimSiam's target is one other view's projection; FastSiam averages the projections of the K - 1
other views into a less noisy target, so a small batch trains as stably as a large one:

    z_k = f(v_k), p_k = h(z_k)                                   k = 1..K (K = 4 in the paper)
    t_k = sg( 1/(K-1) sum_{j != k} z_j )                         mean of the other views
    loss = 1/K sum_k D(p_k, t_k),   D = negative cosine similarity, mean over the batch

Networks, heads and the per-view passes are SimSiam's (``simsiam.py``). The loss is lightly's
``FastSiamModel`` (docs/source/getting_started/benchmarks/cifar10_benchmark.py). No term gathers
across ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import StepOutput
from vissl_lite.methods.simsiam import SimSiam, SimSiamConfig, negative_cosine, normalized_std
from vissl_lite.registry import METHODS


@dataclass
class FastSiamConfig(SimSiamConfig):
    name: str = "fastsiam"
    num_views: int = 4                # K: views per image (paper, lightly's FastSiamTransform)

    def __post_init__(self):
        if self.num_views < 2:
            raise ConfigError(f"method.num_views={self.num_views}: FastSiam needs >= 2 views")


def fastsiam_loss(p: List[torch.Tensor], z: List[torch.Tensor]) -> torch.Tensor:
    """1/K sum_k D(p_k, sg(mean_{j != k} z_j))."""
    z_all = torch.stack([x.detach().float() for x in z])         # (K, B, D)
    k = z_all.shape[0]
    others = (z_all.sum(dim=0, keepdim=True) - z_all) / (k - 1)  # (K, B, D): mean of the others
    return sum(negative_cosine(p[i], others[i]) for i in range(k)) / k


@METHODS.register("fastsiam", help="FastSiam: SimSiam with K views, each predicting the others' mean (Pototzky et al. 2022)")
class FastSiam(SimSiam):
    """SimSiam's networks; K views, each prediction pulled to the mean of the others."""

    Config = FastSiamConfig
    tiny_config = {**SimSiam.tiny_config, "num_views": 3}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        self.views = ViewSpec("simclr", self.cfg.num_views, 0)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        h, z, p = self.encode(batch["views"][: self.cfg.num_views])
        loss = fastsiam_loss(p, z)
        return StepOutput(loss, {"z_std": normalized_std(z[0])}, embedding=h[0].detach())
