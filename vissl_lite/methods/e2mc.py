"""E2MC: effective entropy maximisation for continued pretraining (Chakraborty, LeCun, Rudner,
Learned-Miller 2024, arXiv:2411.15931).

An add-on (see ``addon.py``) to any method, meant for a few epochs of continued pretraining from
an already-trained encoder (``backbone.pretrained_path``). High-dimensional entropy is hard to
estimate, so the paper maximises it through two low-dimensional constraints on the embedding
z (B x D, here the backbone features of the first global view):

    u = sigmoid(z)                                    each dimension mapped into [0, 1]
    H_d = m-spacing entropy estimate of column u[:, d] (Vasicek / Learned-Miller's estimator):
          H_d = 1/(B - m) * sum_i log((B + 1) / m * (u_(i+m),d - u_(i),d) + eps),  m = round(sqrt(B))
          with u_(1),d <= ... <= u_(B),d the sorted column
    C   = cov(z) (D x D, over the batch);  R = sum_{i != j} C_ij^2 / D
    loss = L_base - lambda_ent * mean_d H_d + lambda_cov * R

Maximising each 1-D marginal entropy (uniform marginals on [0, 1]) plus decorrelating the
dimensions stands in for maximising the joint entropy. Our reading of the paper (not its code):
the sigmoid squashing, the m-spacing estimator and the VICReg-style off-diagonal covariance term
are as summarised by the paper; the default weights (1.0, 1.0) are ours, not verified against
it. The sort is a fixed-shape device op: no host sync. ``lambda_ent = lambda_cov = 0`` computes
nothing: the base method exactly. The add-on needs its own forward pass of the first global
view through the backbone (the base's features are detached in its StepOutput).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict

import torch
from torch import nn

from vissl_lite.errors import ConfigError
from vissl_lite.methods.addon import AddOnMethod
from vissl_lite.methods.base import StepOutput
from vissl_lite.registry import METHODS


@dataclass
class E2MCConfig:
    name: str = "e2mc"
    base: Any = field(default_factory=lambda: {"name": "simclr"})  # the wrapped method's config
    lambda_ent: float = 1.0           # weight of the marginal-entropy term (ours, see docstring)
    lambda_cov: float = 1.0           # weight of the off-diagonal covariance term (ours)
    eps: float = 1e-6                 # inside the log of the m-spacing estimate

    def __post_init__(self):
        for key in ("lambda_ent", "lambda_cov", "eps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"method.{key}={getattr(self, key)}: must be >= 0")


def marginal_entropy(z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over dimensions of the m-spacing entropy estimate of each column of sigmoid(z)."""
    u = torch.sigmoid(z.float()).sort(dim=0).values
    b = u.shape[0]
    m = max(1, round(math.sqrt(b)))
    spacings = u[m:] - u[:-m]                                   # (B - m, D)
    return torch.log((b + 1) / m * spacings + eps).mean()


def off_diagonal_covariance(z: torch.Tensor) -> torch.Tensor:
    """sum_{i != j} cov(z)_ij^2 / D (VICReg's covariance term)."""
    z = z.float()
    z = z - z.mean(dim=0)
    cov = z.T @ z / (z.shape[0] - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / z.shape[1]


@METHODS.register("e2mc", help="E2MC add-on: marginal-entropy maximisation + decorrelation, for continued pretraining (Chakraborty et al. 2024)")
class E2MC(AddOnMethod):
    """Any base method + maximised 1-D marginal entropies and decorrelated embedding dimensions."""

    Config = E2MCConfig
    tiny_config = {"base": {"name": "simclr", "proj_hidden_dim": 32, "proj_output_dim": 16}}

    def add_to(self, out: StepOutput, batch: Dict[str, Any]) -> StepOutput:
        if self.cfg.lambda_ent == 0 and self.cfg.lambda_cov == 0:
            return out
        z = self.backbone(batch["views"][0])
        entropy = marginal_entropy(z, self.cfg.eps)
        decorrelation = off_diagonal_covariance(z)
        loss = out.loss - self.cfg.lambda_ent * entropy + self.cfg.lambda_cov * decorrelation
        metrics = {**out.metrics, "marginal_entropy": entropy.detach(),
                   "off_diag_cov": decorrelation.detach()}
        return StepOutput(loss, metrics, embedding=out.embedding)
