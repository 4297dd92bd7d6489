"""VICReg: Variance-Invariance-Covariance Regularization (Bardes et al. 2022, arXiv:2105.04906).

Two views go through the backbone and an expander (Linear-BN-ReLU, Linear-BN-ReLU, Linear; 8192
wide on ImageNet). With Z, Z' the (N, d) embeddings of the *global* batch:

    s(Z, Z')  = 1/(n d) sum_i ||z_i - z'_i||^2                        invariance (mean squared error)
    v(Z)      = 1/d sum_j max(0, 1 - sqrt(Var(Z_:j) + 1e-4))          variance hinge, unbiased Var
    C(Z)      = 1/(N - 1) sum_i (z_i - mean Z)(z_i - mean Z)^T
    c(Z)      = 1/d sum_{j != k} C(Z)_jk^2                            off-diagonal covariance
    loss      = 25 s(Z, Z') + 25 (v(Z) + v(Z')) / 2 + 1 (c(Z) + c(Z'))    (eq. 1-6 and the code)

The variance and covariance terms need the statistics of the global batch: the embeddings are
gathered from every rank with gradient (``gather_with_grad``), so every rank computes the global
terms and DDP's gradient average equals the single-process gradient. The invariance term is a
per-sample mean, computed on the local batch (its DDP average is the global mean), as lightly's
``VICRegLoss(gather_distributed=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_with_grad
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS


@dataclass
class VICRegConfig:
    name: str = "vicreg"
    sim_coeff: float = 25.0           # lambda (invariance)
    std_coeff: float = 25.0           # mu (variance)
    cov_coeff: float = 1.0            # nu (covariance)
    eps: float = 1e-4                 # inside the square root of the variance
    proj_hidden_dim: int = 8192       # paper: expander 8192-8192-8192
    proj_output_dim: int = 8192
    proj_layers: int = 3


def variance_term(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Mean over dimensions of the hinge max(0, 1 - std), std = sqrt(unbiased var + eps)."""
    return F.relu(1.0 - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal covariances over the number of dimensions; for ``z`` of
    shape (N, ..., d) the covariance is taken over N at each position of ``...`` and the terms
    are averaged over the positions (VICRegL's matched feature-map cells, (N, M, d))."""
    n, d = z.shape[0], z.shape[-1]
    z = z - z.mean(dim=0)
    cov = torch.einsum("n...c,n...e->...ce", z, z) / (n - 1)
    off = cov.pow(2).sum((-2, -1)) - torch.diagonal(cov, dim1=-2, dim2=-1).pow(2).sum(-1)
    return (off / d).mean()


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, sim_coeff: float = 25.0,
                std_coeff: float = 25.0, cov_coeff: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's loss; variance and covariance over the batch gathered from every rank."""
    z_a, z_b = z_a.float(), z_b.float()
    invariance = F.mse_loss(z_a, z_b)
    g_a, g_b = gather_with_grad(z_a), gather_with_grad(z_b)
    variance = 0.5 * (variance_term(g_a, eps) + variance_term(g_b, eps))
    covariance = covariance_term(g_a) + covariance_term(g_b)
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


@METHODS.register("vicreg", help="VICReg: invariance + variance + covariance regularisation (Bardes et al. 2022)")
class VICReg(Method):
    """VICReg: backbone + expander, the three terms over the global batch."""

    Config = VICRegConfig
    views = ViewSpec("byol", 2, 0)    # the paper uses BYOL's augmentations
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 32}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim,
                                        c.proj_output_dim, c.proj_layers)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        view_a, view_b = batch["views"][:2]
        z_a = self.projector(self.backbone(view_a))       # separate passes, as the reference code
        z_b = self.projector(self.backbone(view_b))
        c = self.cfg
        loss = vicreg_loss(z_a, z_b, c.sim_coeff, c.std_coeff, c.cov_coeff, c.eps)
        with torch.no_grad():
            std = torch.sqrt(z_a.float().var(dim=0) + c.eps).mean()
        return StepOutput(loss, {"emb_std": std})
