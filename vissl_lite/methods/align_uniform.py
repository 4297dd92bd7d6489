"""Alignment and uniformity on the hypersphere (Wang & Isola 2020, arXiv:2005.10242).

The two properties the paper finds contrastive losses optimise, trained directly: the two views
of an image map close together (alignment), and the embeddings of all images spread uniformly over
the unit sphere (uniformity, the log of the mean Gaussian potential between every pair):

    x_i = normalize(g(f(v_i^1))),  y_i = normalize(g(f(v_i^2)))           i = 1..N (global batch)
    L_align   = 1/N sum_i ||x_i - y_i||_2^alpha
    L_uniform(u) = log 1/(N(N-1)/2) sum_{i<j} exp(-t ||u_i - u_j||_2^2)
    loss      = w_align L_align + w_uniform (L_uniform(x) + L_uniform(y)) / 2

as the official ``align_uniform`` package and its STL-10 example (github.com/SsnL/align_uniform)
and lightly's ``HypersphereLoss(t, lam, alpha)`` (w_align = 1, w_uniform = lam). The paper's
ImageNet code is a MoCo variant whose uniformity also runs over a queue of momentum-encoder keys;
here, as in the STL-10 example, it runs over the batch only.

Alignment is a mean over images, so each rank's own mean averaged by DDP is the global one;
uniformity couples every pair, so it runs over the embeddings gathered from every rank with
gradient (each rank computes the global term; DDP's average is the one-process gradient).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_with_grad
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS


@dataclass
class AlignUniformConfig:
    name: str = "align_uniform"
    align_alpha: float = 2.0          # power of the distance between positives (paper: 2)
    unif_t: float = 2.0               # the Gaussian potential's t (STL-10 example: 2)
    align_weight: float = 1.0
    unif_weight: float = 1.0          # lightly's lam
    proj_hidden_dim: int = 2048       # used when proj_layers > 1
    proj_output_dim: int = 128        # the example's feat_dim
    proj_layers: int = 1              # the example's fc8 / MoCo's fc: one Linear, then normalise

    def __post_init__(self):
        if self.align_alpha <= 0 or self.unif_t <= 0:
            raise ConfigError(f"method.align_alpha={self.align_alpha}, method.unif_t="
                              f"{self.unif_t}: both must be > 0")


def align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Mean over rows of ||x_i - y_i||^alpha."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniform_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log of the mean over pairs i < j of exp(-t ||x_i - x_j||^2)."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def align_uniform_loss(z_a: torch.Tensor, z_b: torch.Tensor, alpha: float = 2.0, t: float = 2.0,
                       align_weight: float = 1.0, unif_weight: float = 1.0):
    """The weighted sum and its two terms; alignment over this rank's rows, uniformity over the
    global batch."""
    x, y = F.normalize(z_a.float(), dim=1), F.normalize(z_b.float(), dim=1)
    align = align_loss(x, y, alpha)
    uniform = 0.5 * (uniform_loss(gather_with_grad(x), t) + uniform_loss(gather_with_grad(y), t))
    return align_weight * align + unif_weight * uniform, align, uniform


@METHODS.register("align_uniform", help="Alignment + uniformity on the hypersphere (Wang & Isola 2020)")
class AlignUniform(Method):
    """Backbone + projector on two views, L_align + L_uniform of the normalised projections."""

    Config = AlignUniformConfig
    views = ViewSpec("simclr", 2, 0)  # the presets set the example's colour jitter
    min_batch_size = 2
    tiny_config = {"proj_output_dim": 16}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim,
                                        c.proj_layers)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        view_a, view_b = batch["views"][:2]
        h = self.backbone(torch.cat([view_a, view_b]))   # one pass, as the example
        z_a, z_b = self.projector(h).chunk(2)
        c = self.cfg
        loss, align, uniform = align_uniform_loss(z_a, z_b, c.align_alpha, c.unif_t,
                                                  c.align_weight, c.unif_weight)
        return StepOutput(loss, {"align": align.detach(), "uniform": uniform.detach()},
                          embedding=h[: view_a.shape[0]].detach())
