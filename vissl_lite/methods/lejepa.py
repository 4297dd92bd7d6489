"""LeJEPA: multi-view invariance + SIGReg (Balestriero & LeCun 2025, arXiv:2511.08544).

One encoder and a projector, no teacher, no EMA, no stop-gradient, no predictor. Every image gives
``V_g = 2`` global and ``V_l`` local views (DINO's multi-crop); with ``z_v`` the projections
(N, K) of view ``v`` and ``mu = mean_{g <= V_g} z_g`` the centre of the global views:

    invariance = mean_{v, n, k} (mu[n, k] - z_v[n, k]) ** 2                      (all V views)
    SIGReg(z)  = mean over M random unit directions a of  EP(z a)                 per view, averaged
    EP(x)      = N * integral_{-t_max}^{t_max} |phi_N(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt
    phi_N(t)   = (1/N) sum_n exp(i t x_n)                  (empirical characteristic function)
    loss       = lambda * mean_v SIGReg(z_v) + (1 - lambda) * invariance,        lambda = 0.05

EP is the Epps-Pulley statistic of the 1-D sample ``x`` against N(0, 1); the integral is the
trapezoidal rule on ``knots`` points of [0, t_max] doubled (the integrand is even in t), as in the
reference code (galilai-group/lejepa) and lightly's ``SIGReg``. Directions are drawn afresh every
step on the device from the global RNG; on several ranks rank 0's draw is broadcast and the
characteristic function is summed over ranks (an autograd-aware gather), so the statistic is that
of the global batch as in the reference. SIGReg is computed in float32.

Evaluation uses the backbone's pooled features (the paper probes the encoder, not the projector).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import is_dist, world_size
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.dino import _forward_by_resolution
from vissl_lite.methods.heads import projection_mlp
from vissl_lite.registry import METHODS


def epps_pulley_grid(knots: int = 17, t_max: float = 3.0) -> Tuple[torch.Tensor, torch.Tensor,
                                                                    torch.Tensor]:
    """Frequencies ``t`` (knots,) on [0, t_max], the target N(0,1) characteristic function
    ``phi = exp(-t^2/2)`` and the integration weights: trapezoidal weights over [-t_max, t_max]
    folded onto t >= 0 (``dt, 2 dt, ..., 2 dt, dt``) times the window ``phi``."""
    t = torch.linspace(0.0, t_max, knots, dtype=torch.float32)
    dt = t_max / (knots - 1)
    weights = torch.full((knots,), 2 * dt, dtype=torch.float32)
    weights[0] = weights[-1] = dt
    phi = torch.exp(-t.square() / 2)
    return t, phi, weights * phi


def random_directions(dim: int, num: int, device=None) -> torch.Tensor:
    """``num`` random unit vectors of R^dim as the columns of a (dim, num) matrix, drawn on the
    device; on several ranks every rank gets rank 0's draw (a device collective, no host sync)."""
    a = torch.randn(dim, num, device=device)
    if is_dist() and world_size() > 1:
        from torch.distributed import _functional_collectives as funcol
        import torch.distributed as dist
        a = funcol.broadcast(a, 0, dist.group.WORLD)
    return a / a.norm(dim=0, keepdim=True)


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over ranks (identity on one process)."""
    if not (is_dist() and world_size() > 1):
        return x
    from torch.distributed import _functional_collectives as funcol
    import torch.distributed as dist
    gathered = funcol.all_gather_tensor_autograd(x.unsqueeze(0), 0, dist.group.WORLD)
    return gathered.sum(0)


def sigreg(proj: torch.Tensor, directions: torch.Tensor, t: torch.Tensor, phi: torch.Tensor,
           weights: torch.Tensor) -> torch.Tensor:
    """SIGReg of ``proj`` (..., N, K) along ``directions`` (K, M), averaged over directions and
    leading dims; the sample is the batch of every rank. ``t, phi, weights``: epps_pulley_grid."""
    x_t = (proj.float() @ directions.float()).unsqueeze(-1) * t          # (..., N, M, knots)
    cos_sum = _sum_over_ranks(x_t.cos().sum(-3))
    sin_sum = _sum_over_ranks(x_t.sin().sum(-3))
    n = proj.shape[-2] * world_size()
    err = (cos_sum / n - phi).square() + (sin_sum / n).square()          # (..., M, knots)
    return ((err @ weights) * n).mean()


def lejepa_invariance(proj: torch.Tensor, num_global: int) -> torch.Tensor:
    """Mean squared distance of every view's projection (V, N, K) to the mean of the first
    ``num_global`` (global) views."""
    centre = proj[:num_global].mean(0)
    return (centre - proj).square().mean()


def lejepa_loss(proj: torch.Tensor, num_global: int, directions: torch.Tensor, t: torch.Tensor,
                phi: torch.Tensor, weights: torch.Tensor, lam: float = 0.05
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lam * SIGReg + (1 - lam) * invariance`` on projections (V, N, K); returns the loss and
    both terms."""
    reg = sigreg(proj, directions, t, phi, weights)
    inv = lejepa_invariance(proj.float(), num_global)
    return lam * reg + (1 - lam) * inv, reg, inv


@METHODS.register("lejepa", help="LeJEPA: multi-view invariance + SIGReg, no teacher (Balestriero & LeCun 2025)")
class LeJEPA(Method):
    """LeJEPA (arXiv:2511.08544); see the module docstring for the algorithm."""

    @dataclass
    class Config:
        name: str = "lejepa"
        proj_hidden_dim: int = 2048       # reference MINIMAL.md: MLP 2048-2048-proj_dim with BN
        proj_output_dim: int = 64         # lightly's LeJEPAProjectionHead default
        proj_layers: int = 3
        lambda_sigreg: float = 0.05       # paper / reference default; explored 0.01-0.1
        num_slices: int = 1024            # random directions per step (lightly's default)
        knots: int = 17                   # integration points on [0, t_max] (reference)
        t_max: float = 3.0
        num_local_crops: int = 6

    min_batch_size = 2
    tiny_config = {"proj_hidden_dim": 32, "proj_output_dim": 16, "num_slices": 32,
                   "num_local_crops": 2}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        if not 0.0 <= c.lambda_sigreg <= 1.0:
            raise ConfigError(f"method.lambda_sigreg={c.lambda_sigreg} must lie in [0, 1] "
                              f"(the paper uses 0.05)")
        if c.proj_layers < 2 or c.num_slices < 1 or c.knots < 2 or c.t_max <= 0:
            raise ConfigError(f"need method.proj_layers >= 2, num_slices >= 1, knots >= 2 and "
                              f"t_max > 0, got {c.proj_layers}, {c.num_slices}, {c.knots}, {c.t_max}")
        if c.num_local_crops < 0:
            raise ConfigError(f"method.num_local_crops must be >= 0, got {c.num_local_crops}")
        self.views = ViewSpec("dino", 2, c.num_local_crops)
        self.projector = projection_mlp(backbone.num_features, c.proj_hidden_dim,
                                        c.proj_output_dim, num_layers=c.proj_layers)
        t, phi, weights = epps_pulley_grid(c.knots, c.t_max)
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("phi", phi, persistent=False)
        self.register_buffer("weights", weights, persistent=False)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        views = batch["views"]
        if len(views) < 2:
            raise ValueError(f"LeJEPA needs 2 global views (+ local views), got {len(views)}")
        _, proj = _forward_by_resolution(self.backbone, self.projector, views)
        proj = proj.reshape(len(views), views[0].shape[0], -1)
        directions = random_directions(proj.shape[-1], self.cfg.num_slices, proj.device)
        loss, reg, inv = lejepa_loss(proj, 2, directions, self.t, self.phi, self.weights,
                                     self.cfg.lambda_sigreg)
        return StepOutput(loss, {"sigreg": reg.detach(), "invariance": inv.detach()})
