"""T-REGS: minimum-spanning-tree regularisation (Mordacq et al. 2025, arXiv:2510.23484).

The length of the minimum spanning tree (MST) of a batch of embeddings grows as the points
spread out; maximising it on the unit sphere counters dimensional collapse and pushes towards a
uniform distribution. T-REG of a batch Z = (z_1 .. z_B):

    E(Z)     = sum over edges (i, j) of MST(Z) of ||z_i - z_j||_2
    T-REG(Z) = -gamma * E(Z) + lambda * sum_i (||z_i||_2 - 1)^2        (soft sphere constraint)

``reduction="mean"`` (the default here) divides both terms by B, so that the weights do not
depend on the batch size (the mean edge length times (B - 1) / B and the mean sphere penalty);
``reduction="sum"`` is the formula above as written.

The tree is found on detached pairwise distances by Prim's algorithm, on the device with a
fixed-size loop: B - 1 iterations of an argmin over the distances from the tree to the nodes
outside it (masked), every tensor of fixed shape and no value read by the host. The gradient then
flows through the lengths of the chosen edges only (the tree is piecewise constant in Z).
Each rank regularises its own batch (no gather).

Two registered uses:
- ``tregs``: the standalone method, an invariance term plus T-REG on each branch,
      loss = inv_coeff * mean ||z_1 - z_2||^2 / d  +  T-REG(Z_1) + T-REG(Z_2);
- ``treg``: an add-on (see ``addon.py``) to any method, T-REG on each global view's rows of the
  base method's ``embedding`` module output (default its ``projector``), captured with a forward
  hook while the base step runs. ``gamma = lambda = 0`` gives the base method exactly.
The defaults of gamma, lambda and inv_coeff are starting points, not values taken from the paper.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import ConfigError
from vissl_lite.methods.addon import AddOnMethod
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS


@torch.no_grad()
def mst_edges(dist: torch.Tensor):
    """Prim's algorithm on a dense (B, B) distance matrix: the B - 1 edges (src, dst) of a minimum
    spanning tree, grown from node 0. Fixed-shape device ops only."""
    b = dist.shape[0]
    inf = torch.finfo(dist.dtype).max
    in_tree = torch.arange(b, device=dist.device) == 0
    best = dist[0].masked_fill(in_tree, inf)            # distance from the tree to each node
    parent = torch.zeros(b, dtype=torch.long, device=dist.device)
    src = torch.zeros(b - 1, dtype=torch.long, device=dist.device)
    dst = torch.zeros(b - 1, dtype=torch.long, device=dist.device)
    for i in range(b - 1):
        j = torch.argmin(best).view(1)                   # nearest node outside the tree
        dst[i] = j[0]
        src[i] = parent.index_select(0, j)[0]
        in_tree.index_fill_(0, j, True)
        row = dist.index_select(0, j)[0]
        parent = torch.where(row < best, j, parent)
        best = torch.minimum(best, row).masked_fill(in_tree, inf)
    return src, dst


def mst_length(z: torch.Tensor) -> torch.Tensor:
    """Total Euclidean length of the MST of the rows of ``z``, differentiable through its edges."""
    z = z.float()
    src, dst = mst_edges(torch.cdist(z.detach(), z.detach()))
    sq = (z[src] - z[dst]).pow(2).sum(dim=1)
    return torch.sqrt(sq.clamp_min(1e-12)).sum()


def t_reg(z: torch.Tensor, gamma: float, lam: float, reduction: str = "sum") -> torch.Tensor:
    """-gamma * MST length + lambda * sum of (||z_i|| - 1)^2; divided by B if reduction="mean"."""
    sphere = (z.float().norm(dim=1) - 1).pow(2).sum()
    total = -gamma * mst_length(z) + lam * sphere
    return total / z.shape[0] if reduction == "mean" else total


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"method.reduction={reduction!r}: choose mean or sum")


@dataclass
class TREGSConfig:
    name: str = "tregs"
    inv_coeff: float = 1.0
    gamma: float = 1.0
    lam: float = 1.0
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    proj_layers: int = 3
    reduction: str = "mean"           # T-REG terms divided by the batch size (mean) or not (sum)

    def __post_init__(self):
        _check_reduction(self.reduction)


@METHODS.register("tregs", help="T-REGS: invariance + minimum-spanning-tree length on the sphere (Mordacq et al. 2025)")
class TREGS(Method):
    """Backbone + projector; MSE between views plus T-REG on each branch."""

    Config = TREGSConfig
    views = ViewSpec("byol", 2, 0)
    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim, c.proj_output_dim,
                                        c.proj_layers)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        view_a, view_b = batch["views"][:2]
        z_a, z_b = self.projector(self.backbone(view_a)), self.projector(self.backbone(view_b))
        c = self.cfg
        invariance = F.mse_loss(z_a.float(), z_b.float())
        reg = t_reg(z_a, c.gamma, c.lam, c.reduction) + t_reg(z_b, c.gamma, c.lam, c.reduction)
        return StepOutput(c.inv_coeff * invariance + reg, {"invariance": invariance.detach()})


@dataclass
class TREGConfig:
    name: str = "treg"
    base: Any = field(default_factory=lambda: {"name": "simclr"})  # the wrapped method's config
    gamma: float = 1.0
    lam: float = 1.0
    embedding: str = "projector"      # the base method's module whose output is regularised
    reduction: str = "mean"

    def __post_init__(self):
        _check_reduction(self.reduction)


@METHODS.register("treg", help="T-REG add-on: minimum-spanning-tree regulariser on any method's embeddings (Mordacq et al. 2025)")
class TREG(AddOnMethod):
    """Any base method + T-REG on each global view's embeddings."""

    Config = TREGConfig
    tiny_config = {"base": {"name": "simclr", "proj_hidden_dim": 32, "proj_output_dim": 16}}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        module = getattr(self.base, self.cfg.embedding, None)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"method.embedding={self.cfg.embedding}: method "
                              f"'{self.cfg.base['name']}' has no such module; name its projector "
                              f"(e.g. method.embedding=projector)")
        self._captured: List[torch.Tensor] = []
        if self.active:
            module.register_forward_hook(self._capture)

    @property
    def active(self) -> bool:
        return self.cfg.gamma != 0 or self.cfg.lam != 0

    def _capture(self, module, inputs, output):
        self._captured.append(output)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        self._captured = []
        out = self.base.training_step(self.base_batch(batch))
        if not self.active:
            return out
        rows = batch["views"][0].shape[0]
        z = torch.cat(self._captured)[: self.base.views.num_global * rows]
        self._captured = []
        c = self.cfg
        reg = sum(t_reg(v, c.gamma, c.lam, c.reduction) for v in z.split(rows))
        return StepOutput(out.loss + reg, {**out.metrics, "t_reg": reg.detach()})
