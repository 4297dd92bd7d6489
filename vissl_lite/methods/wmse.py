"""W-MSE: Whitening for self-supervised representation learning (Ermolov et al. 2021,
arXiv:2007.06346).

V views (2 or 4) of each image go through the backbone and a projector to d-dimensional
embeddings. The batch is cut into random sub-batches of ``w_size`` samples (the same cut for
every view); each view's sub-batch is whitened, and the whitened views of a sample are pulled
together (Sec. 3, Algorithm 1 of the paper; htdt/self-supervised ``w_mse.py``):

    for each sub-batch S (|S| = w_size) and view v:
        X  = Z_v[S] - mean(Z_v[S])                         (w_size, d)
        S_cov = X^T X / (w_size - 1) = L L^T                Cholesky
        W_v[S] = X L^{-T}                                   whitened: cov(W_v[S]) = I
    l(a, b) = 2 - 2 mean_i cos(a_i, b_i)                    MSE of L2-normalised vectors
    loss = mean over w_iter random cuts and over view pairs (u < v) of l(W_u, W_v)

``w_size`` must exceed d (else the covariance is singular; the paper uses w_size = 2d). The
embeddings are gathered from every rank with gradient and every rank whitens the global batch
with the same random cut (drawn on the device and broadcast from rank 0: a collective, no host
read), so every rank computes the global loss and DDP's gradient average is the single-process
gradient. The cut is ``torch.randperm`` of fixed size viewed as (N / w_size, w_size): fixed
shapes, and the Cholesky factorisation is ``cholesky_ex`` (no error check, hence no sync).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import broadcast_from_main, gather_with_grad
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS
from vissl_lite.shapes import RunShape


@dataclass
class WMSEConfig:
    name: str = "wmse"
    num_views: int = 2                # 2 or 4 positives per image (W-MSE 2 / W-MSE 4)
    w_size: int = 128                 # whitening sub-batch size (> proj_output_dim)
    w_iter: int = 1                   # random cuts per step
    w_eps: float = 0.0                # covariance shrinkage towards the identity
    proj_hidden_dim: int = 1024
    proj_output_dim: int = 64

    def __post_init__(self):
        if self.num_views not in (2, 4):
            raise ConfigError(f"method.num_views={self.num_views}: W-MSE uses 2 or 4 views")
        if self.w_size <= self.proj_output_dim:
            raise ConfigError(f"method.w_size={self.w_size} must exceed the embedding size "
                              f"method.proj_output_dim={self.proj_output_dim} (else the covariance "
                              f"is singular); the paper uses w_size = 2 x proj_output_dim")
        if self.w_iter < 1:
            raise ConfigError(f"method.w_iter={self.w_iter}: must be >= 1")


def whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Whiten each group of ``x`` (G, n, d): centre, then multiply by the inverse Cholesky
    factor of the (shrunk) covariance, so that each group's covariance becomes the identity."""
    n, d = x.shape[-2:]
    xc = x - x.mean(dim=-2, keepdim=True)
    cov = xc.transpose(-1, -2) @ xc / (n - 1)
    if eps:
        cov = (1 - eps) * cov + eps * torch.eye(d, device=x.device, dtype=x.dtype)
    chol = torch.linalg.cholesky_ex(cov)[0]
    return torch.linalg.solve_triangular(chol, xc.transpose(-1, -2), upper=False).transpose(-1, -2)


def norm_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of L2-normalised rows: 2 - 2 mean cos."""
    return 2 - 2 * (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).mean()


def wmse_loss(views: Sequence[torch.Tensor], w_size: int, w_iter: int = 1, eps: float = 0.0,
              perms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """W-MSE over the batch gathered from every rank; ``views``: one (n, d) tensor per view.

    ``perms`` (w_iter, N): the random cuts; by default drawn on the device and broadcast from
    rank 0 (``torch.randperm(N)`` once per iteration, as lightly's ``WMSELoss``).
    """
    zs = [gather_with_grad(v.float()) for v in views]
    n_total, d = zs[0].shape
    if n_total % w_size:
        raise ConfigError(f"W-MSE: the global batch {n_total} is not a multiple of method.w_size="
                          f"{w_size}; pick train.batch_size as a multiple of it")
    if perms is None:
        perms = torch.stack([torch.randperm(n_total, device=zs[0].device) for _ in range(w_iter)])
        broadcast_from_main(perms)
    with torch.autocast(device_type=zs[0].device.type, enabled=False):
        total = 0.0
        for it in range(w_iter):
            cut = perms[it].view(-1, w_size)                              # (G, w_size)
            white = [whiten(z[cut], eps) for z in zs]                     # (G, w_size, d) each
            for i in range(len(zs)):
                for j in range(i + 1, len(zs)):
                    total = total + norm_mse(white[i].reshape(-1, d), white[j].reshape(-1, d))
    num_pairs = len(zs) * (len(zs) - 1) // 2
    return total / (w_iter * num_pairs)


@METHODS.register("wmse", help="W-MSE: MSE between whitened views (Ermolov et al. 2021)")
class WMSE(Method):
    """W-MSE: backbone + projector; sub-batch whitening, MSE of normalised whitened views."""

    Config = WMSEConfig
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 4, "w_size": 8}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.views = ViewSpec("simclr", c.num_views, 0)
        self.min_batch_size = c.w_size
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim, 2)

    @classmethod
    def check_shape(cls, cfg: WMSEConfig, shape: RunShape) -> None:
        if shape.per_loss % cfg.w_size:
            raise ConfigError(f"W-MSE whitens sub-batches of method.w_size={cfg.w_size}: the global "
                              f"batch per loss, train.batch_size / train.accumulate = "
                              f"{shape.per_loss}, must be a multiple of it; change train.batch_size "
                              f"or method.w_size")

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        views = batch["views"][: self.cfg.num_views]
        h = torch.cat([self.backbone(v) for v in views])   # per-view backbone passes, one head
        z = self.projector(h).chunk(len(views))             # pass (as the reference code)
        c = self.cfg
        return StepOutput(wmse_loss(z, c.w_size, c.w_iter, c.w_eps), {})
