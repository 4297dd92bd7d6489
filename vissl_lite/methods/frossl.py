"""FroSSL: Frobenius-norm minimisation for self-supervised learning (Skean et al. 2023,
arXiv:2310.02903).

Each of V views is embedded and normalised along the *batch* dimension (every feature a unit
vector over the N images). FroSSL maximises the entropy of each view's trace-normalised
covariance, estimated through its Frobenius norm (a flat spectrum has a small norm, a collapsed
one a norm of 1), and pulls every view to the views' mean:

    Z_v = normalize_over_batch(g(f(x_v)))                         (N, D), v = 1..V
    K_v = Z_v^T Z_v / tr(Z_v^T Z_v)     (or Z_v Z_v^T if N <= D: the same non-zero eigenvalues)
    Zbar = 1/V sum_v Z_v
    loss = sum_v [ 2 log ||K_v||_F  +  w V D mse(Z_v, Zbar) ]

(eq. 3 and 6 of the paper; the square of the Frobenius norm is taken out of the log as the 2).
As the official multi-view loss (github.com/OFSkean/FroSSL solo/losses/frossl.py
``multiview_frossl_loss_func``) and lightly's ``FroSSLLoss``: both divide by the trace as a
Python number (``.item()``), so no gradient flows through it; here the trace is detached, the
same gradient without a host read.

The normalisation over the batch and the covariance couple all images, so the embeddings are
gathered from every rank with gradient: every rank computes the global loss and DDP's gradient
average is the one-process gradient (the official code computes it per GPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

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
class FroSSLConfig:
    name: str = "frossl"
    num_views: int = 2
    invariance_weight: float = 1.0    # w (official CIFAR-10 / ImageNet-100: 1; ImageNet: 2)
    proj_hidden_dim: int = 2048       # official: 2048-2048-1024, Linear-BN-ReLU twice, Linear
    proj_output_dim: int = 1024
    proj_layers: int = 3

    def __post_init__(self):
        if self.num_views < 2:
            raise ConfigError(f"method.num_views={self.num_views}: FroSSL needs >= 2 views")


def log_frobenius(z: torch.Tensor) -> torch.Tensor:
    """2 log ||K||_F of the trace-normalised covariance of ``z`` (N, D), trace without gradient."""
    n, d = z.shape
    cov = z.T @ z if n > d else z @ z.T
    cov = cov / torch.trace(cov).detach()
    return 2 * torch.log(torch.linalg.norm(cov, ord="fro"))


def frossl_loss(views: List[torch.Tensor], invariance_weight: float = 1.0):
    """The loss over the global batch, and its two summed terms (regulariser, invariance)."""
    z = [F.normalize(gather_with_grad(v.float()), p=2, dim=0) for v in views]
    mean = torch.stack(z).mean(dim=0)
    num_views, dim = len(z), z[0].shape[1]
    regulariser = sum(log_frobenius(v) for v in z)
    invariance = sum(num_views * dim * F.mse_loss(v, mean) for v in z)
    return regulariser + invariance_weight * invariance, regulariser, invariance


@METHODS.register("frossl", help="FroSSL: Frobenius-norm entropy of each view's covariance + invariance (Skean et al. 2023)")
class FroSSL(Method):
    """Backbone + projector on V views; covariance-entropy and invariance terms."""

    Config = FroSSLConfig
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.views = ViewSpec("simclr", c.num_views, 0)
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim,
                                        c.proj_layers)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        views = batch["views"][: self.cfg.num_views]
        h = [self.backbone(v) for v in views]            # one pass per view, as solo-learn's
        loss, regulariser, invariance = frossl_loss([self.projector(x) for x in h],
                                                    self.cfg.invariance_weight)
        return StepOutput(loss, {"log_fro": regulariser.detach() / len(views),
                                 "invariance": invariance.detach()}, embedding=h[0].detach())
