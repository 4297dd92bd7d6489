"""VICRegL: VICReg on global and on local features (Bardes, Ponce & LeCun, NeurIPS 2022,
arXiv:2210.01571; facebookresearch/VICRegL ``main_vicregl.py``).

Every view v (globals first) goes through the ResNet to its last feature map; its average pool
goes to the expander g, each of its h x w cells to the local projector l (one MLP applied per
cell). With V(X, Y) = lambda s(X, Y) + mu v(X, Y) + nu' c(X, Y) VICReg's loss (``vicreg.py``) on
tensors (B, ..., d) whose variance and covariance are taken over the batch at each position:

    z_v = g(pool(f(v)))                         (B, d)          global embeddings
    m_v = l(f(v))                               (B, h_v w_v, d') local embeddings, one per cell
    p_v = the cell centres of v in source-image pixels          (B, h_v w_v, 2), from its crop box
    global = lambda mean_{i < G, j != i} ||z_i - z_j||^2 / (B d)
             + mu mean_v v(z_v) + nu mean_v c(z_v)
    NN_k(X -> Y; D) = the k cells x of X nearest to their nearest neighbour in Y under the
                      distances D, with that neighbour: two (B, k, d') tensors
    local(i, j) = 1/2 [V(NN_k1(m_i -> m_j; |m - m'|)) + V(NN_k2(m_j -> m_i; |m - m'|))]  features
                + 1/2 [V(NN_k1(m_i -> m_j; |p - p'|)) + V(NN_k2(m_j -> m_i; |p - p'|))]  location
    loss = alpha global + (1 - alpha) mean_{i < G, j != i} local(i, j)

lambda = mu = 25, nu = 1, nu' = nu / 2 (the official local covariance halves each view's term),
alpha = 0.75, (k1, k2) = (20, 4), all cells for the feature matches (``--l2_all_matches 1``); G the
number of global views. Matches are ordered by their distance, as lightly's ``VICRegLLoss`` (the
official code keeps them in grid order; the batch statistics of each match slot differ with the
order). Variances and covariances are over the batch gathered from every rank, with gradient, as
``vicreg.py``; matching is per image and needs no gather.

The cell centres come from the views' crop boxes (``ViewSpec.crop_boxes``): cell (r, c) of an
h x w map of a crop (top, left, height, width) lies at (top + (r + 1/2) height / h,
left + (c + 1/2) width / w), the column mirrored where the view was, as the official
``_location_to_NxN_grid``. One difference: the official training default ``--no-flip-grid 1`` leaves
the grid unmirrored on flipped views; here it follows the flip (``flip_grid``), as the geometry is
and as lightly's ``RandomResizedCropAndFlip``. Matching is two ``topk`` and two ``gather`` per
direction, fixed shapes: no host syncs, one graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_with_grad
from vissl_lite.errors import ConfigError, DataError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.methods.vicreg import covariance_term, variance_term, vicreg_loss
from vissl_lite.registry import METHODS


@dataclass
class VICRegLConfig:
    name: str = "vicregl"
    alpha: float = 0.75               # --alpha 0.75 (README's ResNet-50 commands)
    inv_coeff: float = 25.0           # lambda
    var_coeff: float = 25.0           # mu
    cov_coeff: float = 1.0            # nu (halved in the local terms, as the official code)
    eps: float = 1e-4
    num_matches: List[int] = field(default_factory=lambda: [20, 4])   # --num_matches 20 4
    l2_all_matches: bool = True       # --l2_all_matches 1: feature matches over all cells
    flip_grid: bool = True            # cell positions follow the mirror (official: --no-flip-grid 1)
    num_local_crops: int = 0          # ResNet-50 commands: --num-crops 2 (no local crops)
    proj_hidden_dim: int = 8192       # --mlp 8192-8192-8192
    proj_output_dim: int = 8192
    proj_layers: int = 3
    maps_hidden_dim: int = 512        # --maps-mlp 512-512-512
    maps_output_dim: int = 512
    maps_layers: int = 3

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"method.alpha={self.alpha} must lie in [0, 1] (the global loss's "
                              f"weight; VICRegL: 0.75)")
        if len(self.num_matches) != 2 or min(self.num_matches) < 1:
            raise ConfigError(f"method.num_matches={list(self.num_matches)}: give two positive "
                              f"counts [k1, k2] (VICRegL: [20, 4])")


def crop_grid(boxes: torch.Tensor, height: int, width: int, flip: bool = True) -> torch.Tensor:
    """(B, 5) crop boxes (``CroppedViews.boxes``) -> (B, height * width, 2): the source-image
    (row, column) of the centre of every cell of a row-major ``height x width`` map of the view."""
    top, left, h, w, mirrored = boxes.float().unbind(1)
    fy = (torch.arange(height, device=boxes.device) + 0.5) / height
    fx = (torch.arange(width, device=boxes.device) + 0.5) / width
    fx = torch.where(mirrored[:, None] > 0.5, 1.0 - fx, fx) if flip else fx.expand(len(boxes), -1)
    y = top[:, None] + fy * h[:, None]
    x = left[:, None] + fx * w[:, None]
    return torch.stack([y[:, :, None].expand(-1, -1, width),
                        x[:, None, :].expand(-1, height, -1)], dim=-1).flatten(1, 2)


def nearest_matches(inputs: torch.Tensor, candidates: torch.Tensor, distances: torch.Tensor,
                    k: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows of ``inputs`` (B, N, d) closest to their nearest row of ``candidates``
    (B, M, d) under ``distances`` (B, N, M), nearest first, and those neighbours: (B, k, d) each.
    ``k`` None or above N: all N rows."""
    k = inputs.shape[1] if k is None else min(k, inputs.shape[1])
    best, nearest = distances.topk(1, dim=2, largest=False)
    _, chosen = best.squeeze(2).topk(k, dim=1, largest=False)
    d = inputs.shape[2]
    partner = nearest.gather(1, chosen[:, :, None])
    return (inputs.gather(1, chosen[:, :, None].expand(-1, -1, d)),
            candidates.gather(1, partner.expand(-1, -1, candidates.shape[2])))


def global_loss(z: Sequence[torch.Tensor], num_global: int, inv_coeff: float = 25.0,
                var_coeff: float = 25.0, cov_coeff: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICRegL's global term: invariance between each global view and every other view, variance
    and covariance of every view over the batch gathered from every rank."""
    z = [x.float() for x in z]
    pairs = [(i, j) for i in range(num_global) for j in range(len(z)) if j != i]
    invariance = sum(F.mse_loss(z[i], z[j]) for i, j in pairs) / len(pairs)
    gathered = [gather_with_grad(x) for x in z]
    variance = sum(variance_term(g, eps) for g in gathered) / len(z)
    covariance = sum(covariance_term(g) for g in gathered) / len(z)
    return inv_coeff * invariance + var_coeff * variance + cov_coeff * covariance


def local_loss(maps: Sequence[torch.Tensor], grids: Sequence[torch.Tensor], num_global: int,
               num_matches: Sequence[int] = (20, 4), l2_all_matches: bool = True,
               inv_coeff: float = 25.0, var_coeff: float = 25.0, cov_coeff: float = 1.0,
               eps: float = 1e-4) -> torch.Tensor:
    """VICRegL's local term over the pairs (global view i, any other view j): ``maps`` (B, N_v, d)
    local embeddings, ``grids`` (B, N_v, 2) their cells' positions in the source image."""
    maps = [m.float() for m in maps]

    def vicreg(pair: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return vicreg_loss(*pair, inv_coeff, var_coeff, 0.5 * cov_coeff, eps)

    def both_ways(a, b, key_a, key_b, k) -> torch.Tensor:
        with torch.no_grad():
            d_ab, d_ba = torch.cdist(key_a, key_b), torch.cdist(key_b, key_a)
        return 0.5 * (vicreg(nearest_matches(a, b, d_ab, k[0]))
                      + vicreg(nearest_matches(b, a, d_ba, k[1])))

    l2_matches = (None, None) if l2_all_matches else tuple(num_matches)
    terms = []
    for i in range(num_global):
        for j in range(len(maps)):
            if j != i:
                a, b = maps[i], maps[j]
                terms.append(both_ways(a, b, a.detach(), b.detach(), l2_matches)
                             + both_ways(a, b, grids[i].float(), grids[j].float(), num_matches))
    return sum(terms) / len(terms)


@METHODS.register("vicregl", help="VICRegL: VICReg on pooled and on matched local ResNet features (Bardes et al. 2022)")
class VICRegL(Method):
    """ResNet + expander on the pooled features + local projector on every feature-map cell."""

    Config = VICRegLConfig
    min_batch_size = 2
    supported_backbones = ("resnet",)
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 32, "maps_hidden_dim": 16,
                   "maps_output_dim": 16}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        # the paper's and lightly's BYOL views, with each view's crop box for the cell positions
        self.views = ViewSpec("byol", 2, c.num_local_crops, crop_boxes=True)
        dim = backbone.num_features
        self.projector = (projection_mlp(dim, c.proj_hidden_dim, c.proj_output_dim,
                                         c.proj_layers, last_bias=False) if c.alpha > 0 else None)
        self.maps_projector = (projection_mlp(dim, c.maps_hidden_dim, c.maps_output_dim,
                                              c.maps_layers, last_bias=False)
                               if c.alpha < 1 else None)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        if "boxes" not in batch:
            raise DataError("vicregl needs each view's crop box (batch['boxes']): build its views "
                            "with the method's ViewSpec (crop_boxes=True), as the loaders do")
        c = self.cfg
        pooled, z, maps, grids = [], [], [], []
        for view, box in zip(batch["views"], batch["boxes"]):   # one pass per view, as the code
            fmap = self.backbone.forward_features(view)
            b, _, height, width = fmap.shape
            pooled.append(fmap.mean(dim=(2, 3)))
            if self.projector is not None:
                z.append(self.projector(pooled[-1]))
            if self.maps_projector is not None:
                cells = fmap.flatten(2).transpose(1, 2).flatten(0, 1)
                maps.append(self.maps_projector(cells).view(b, height * width, -1))
                grids.append(crop_grid(box, height, width, c.flip_grid))
        coeffs = (c.inv_coeff, c.var_coeff, c.cov_coeff, c.eps)
        num_global = self.views.num_global
        metrics: Dict[str, Any] = {}
        loss = pooled[0].new_zeros(())
        if z:
            g = global_loss(z, num_global, *coeffs)
            loss = loss + c.alpha * g
            metrics["global_loss"] = g.detach()
            with torch.no_grad():
                metrics["emb_std"] = torch.sqrt(z[0].float().var(dim=0) + c.eps).mean()
        if maps:
            local = local_loss(maps, grids, num_global, c.num_matches, c.l2_all_matches, *coeffs)
            loss = loss + (1 - c.alpha) * local
            metrics["local_loss"] = local.detach()
        return StepOutput(loss, metrics, embedding=pooled[0].detach())
