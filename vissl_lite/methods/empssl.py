"""EMP-SSL: self-supervised learning in one training epoch (Tong et al. 2023, arXiv:2304.03977).

Extreme multi-patch SSL: every image is cut into many small random patches (20 to 200, each a
fixed-size crop of a quarter of the image, resized to the input size), and the embeddings of the
patches of an image are pulled to their mean while the total coding rate (TCR) of each patch set
over the batch is maximised, which spreads the embeddings and prevents collapse. With that many
positives per image one epoch already gives a usable representation (the official README: 84.2%
CIFAR-10 top-1 after one epoch, bag-of-features linear probe):

    z_{v,i} = normalize(g(f(x_{v,i})))          v = 1..P patches, i = 1..N images (global batch)
    R(Z_v)  = 1/2 log det(I_d + d / (N eps) Z_v^T Z_v)                  (TCR of patch set v)
    zbar_i  = 1/P sum_v z_{v,i}
    loss    = - 1/P sum_v R(Z_v)  -  lambda 1/(P N) sum_{v,i} cos(z_{v,i}, zbar_i)

as the official main.py (github.com/tsb0601/EMP-SSL: ``loss = patch_sim * loss_contract + tcr *
loss_TCR`` with both terms negated; eps = 0.2 not squared, lambda = 200). lightly's
``tcr_loss`` and ``invariance_loss`` compute the two terms (tests hold them equal); its
``EMPSSLLoss`` adds the coding rate with a plus sign, which would *minimise* it (collapse), so the
sum here is the official one. The log-determinant is taken of the smaller of the d x d and N x N
Gram matrices (Sylvester's identity: the same value and gradient).

The patches are the method's views: ``num_patches`` global views of one recipe, drawn by the
CPU or the batched GPU pipeline with a fixed count per run; they go through the backbone in one
pass. The coding rate couples the batch, so the embeddings are gathered from every rank with
gradient for it; the invariance term is per image (each rank's mean, averaged by DDP). The
official evaluation pools the 4096-d first projector layer over test patches; here evaluators
read the backbone's features of the whole image, as for every method.
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
class EMPSSLConfig:
    name: str = "empssl"
    num_patches: int = 20             # P (official CIFAR command: 20; paper also 200)
    tcr_eps: float = 0.2              # official --eps (used unsquared)
    inv_coef: float = 200.0           # official --patch_sim
    proj_hidden_dim: int = 4096       # official encoder: 512-4096 (pre_feature), 4096-4096-1024
    proj_output_dim: int = 1024
    proj_layers: int = 3

    def __post_init__(self):
        if self.num_patches < 2:
            raise ConfigError(f"method.num_patches={self.num_patches}: EMP-SSL needs >= 2 patches")
        if self.tcr_eps <= 0:
            raise ConfigError(f"method.tcr_eps={self.tcr_eps}: must be > 0")


def coding_rate(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean over patch sets of 1/2 log det(I + d/(N eps) Z^T Z); ``z`` is (P, N, d)."""
    _, n, d = z.shape
    gram = z.transpose(1, 2) @ z if d <= n else z @ z.transpose(1, 2)
    eye = torch.eye(gram.shape[-1], device=z.device, dtype=z.dtype)
    return 0.5 * torch.logdet(eye + d / (n * eps) * gram).mean()


def patch_similarity(z: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of every patch embedding with its image's mean embedding."""
    return F.cosine_similarity(z, z.mean(dim=0, keepdim=True), dim=-1).mean()


def empssl_loss(z: torch.Tensor, eps: float = 0.2, inv_coef: float = 200.0):
    """The loss, the coding rate and the patch similarity; ``z`` (P, n, d) normalised."""
    rate = coding_rate(gather_with_grad(z.transpose(0, 1)).transpose(0, 1), eps)
    similarity = patch_similarity(z)
    return -rate - inv_coef * similarity, rate, similarity


@METHODS.register("empssl", help="EMP-SSL: many fixed-size patches per image, coding rate + patch invariance (Tong et al. 2023)")
class EMPSSL(Method):
    """Backbone + projector on P patches of every image; TCR and invariance to the patch mean."""

    Config = EMPSSLConfig
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16, "num_patches": 4}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.views = ViewSpec("simclr", c.num_patches, 0)  # presets set the patch crop (scale 1/4)
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim,
                                        c.proj_layers)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        patches = batch["views"][: self.cfg.num_patches]
        n = patches[0].shape[0]
        h = self.backbone(torch.cat(patches))            # one pass over every patch, as official
        z = F.normalize(self.projector(h).float(), dim=-1).reshape(len(patches), n, -1)
        loss, rate, similarity = empssl_loss(z, self.cfg.tcr_eps, self.cfg.inv_coef)
        return StepOutput(loss, {"tcr": rate.detach(), "patch_sim": similarity.detach()},
                          embedding=h[:n].detach())
