"""DCL / DCLW: Decoupled Contrastive Learning (Yeh et al. 2022, arXiv:2110.06848).

SimCLR's NT-Xent with the positive pair removed from the denominator (eq. 6), which removes the
"negative-positive coupling" that makes InfoNCE need large batches. With z normalised, t the
temperature, i an anchor of view a and N the global batch:

    l_i = - w_i <z_i^a, z_i^b> / t + log sum_{k in negatives(i)} exp(<z_i^a, z_k> / t)
    negatives(i) = the other 2N - 2 views: z_j^a and z_j^b for every j != i
    loss = 1/2 (mean_i l_i^{a->b} + mean_i l_i^{b->a})

DCL sets w_i = 1. DCLW weights the positives by the negative von Mises-Fisher weight
    w_i = 2 - N exp(<z_i^a, z_i^b> / sigma) / sum_j exp(<z_j^a, z_j^b> / sigma)     (no gradient)
so that hard positives (far apart) count more; the weights average to 1 over the batch.

Each view goes through the networks in its own pass (per-view batch norm), as lightly's DCL and
DCLW benchmark models (SimCLR's one pass over both views, whose batch norm mixes them, lost
rank on real CIFAR-10: RankMe 74.6 -> 56.8 over 30 steps against 74.6 -> 115.7 per view).
As in SimCLR (``simclr.py``), each rank computes the rows of its own anchors against candidates
gathered from every rank with gradient, so DDP's gradient average is the one-process gradient.
The DCLW weights are a softmax over the *global* batch here (lightly's ``DCLWLoss`` takes it over
each rank's batch: equal on one process, and 2 ranks equal 1 rank only this way).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from vissl_lite.distributed import gather_with_grad
from vissl_lite.errors import ConfigError
from vissl_lite.methods.simclr import SimCLR, local_rows
from vissl_lite.registry import METHODS


@dataclass
class DCLConfig:
    name: str = "dcl"
    temperature: float = 0.1          # paper and lightly's DCLLoss default
    proj_hidden_dim: int = 2048       # SimCLR's projector (lightly's DCL benchmarks)
    proj_output_dim: int = 128
    proj_layers: int = 2
    proj_last_bn: bool = True
    one_pass: bool = False            # a backbone pass per view (lightly's DCL/DCLW models)


@dataclass
class DCLWConfig(DCLConfig):
    name: str = "dclw"
    sigma: float = 0.5                # the vMF weighting's temperature (paper, lightly)

    def __post_init__(self):
        if self.sigma <= 0:
            raise ConfigError(f"method.sigma={self.sigma}: DCLW's weighting needs sigma > 0")


def vmf_weights(z_a: torch.Tensor, z_b: torch.Tensor, sigma: float) -> torch.Tensor:
    """2 - N softmax_i(<z_i^a, z_i^b> / sigma) over the rows (no gradient)."""
    sim = (z_a.detach() * z_b.detach()).sum(dim=1) / sigma
    return 2.0 - sim.shape[0] * F.softmax(sim, dim=0)


def _one_direction(anchors, positives, same_all, other_all, own, temperature, weight):
    own_col = torch.arange(same_all.shape[0], device=anchors.device)[None, :] == own[:, None]
    negatives = torch.cat([(anchors @ same_all.T / temperature).masked_fill(own_col, float("-inf")),
                           (anchors @ other_all.T / temperature).masked_fill(own_col, float("-inf"))],
                          dim=1)
    positive = (anchors * positives).sum(dim=1) / temperature
    if weight is not None:
        positive = positive * weight
    return (torch.logsumexp(negatives, dim=1) - positive).mean()


def dcl_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.1,
             sigma: Optional[float] = None) -> torch.Tensor:
    """DCL (``sigma=None``) or DCLW over the global batch; the mean over this rank's anchors."""
    z_a = F.normalize(z_a.float(), dim=1)
    z_b = F.normalize(z_b.float(), dim=1)
    all_a, all_b = gather_with_grad(z_a), gather_with_grad(z_b)
    own = local_rows(z_a.shape[0], all_a.shape[0], z_a.device)
    weight = None if sigma is None else vmf_weights(all_a, all_b, sigma)[own]
    return 0.5 * (_one_direction(z_a, z_b, all_a, all_b, own, temperature, weight)
                  + _one_direction(z_b, z_a, all_b, all_a, own, temperature, weight))


@METHODS.register("dcl", help="DCL: NT-Xent without the positive in the denominator (Yeh et al. 2022)")
class DCL(SimCLR):
    """SimCLR's backbone, projector and views (one_pass=false: a pass per view), DCL's loss."""

    Config = DCLConfig

    def loss(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return dcl_loss(z_a, z_b, self.cfg.temperature)


@METHODS.register("dclw", help="DCLW: DCL with von Mises-Fisher weighted positives (Yeh et al. 2022)")
class DCLW(DCL):
    """DCL with the positives weighted by the negative von Mises-Fisher weights."""

    Config = DCLWConfig

    def loss(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return dcl_loss(z_a, z_b, self.cfg.temperature, self.cfg.sigma)
