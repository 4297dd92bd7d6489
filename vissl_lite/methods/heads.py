"""Projection heads shared by the joint-embedding methods.

- ``projection_mlp``: the Linear-BN-ReLU stack of SimCLR (Chen et al. 2020, 2-layer on CIFAR,
  3-layer in SimCLR v2 / ImageNet) and Barlow Twins (Zbontar et al. 2021, 8192-8192-8192).
- ``DINOHead``: DINO's head (Caron et al. 2021): an MLP with GELU down to a bottleneck, L2
  normalisation, and a weight-normalised linear layer to ``out_dim`` prototypes.

Written here rather than taken from lightly, which is not a dependency (it pins hydra-core and
pytorch-lightning); the layouts follow the papers' reference code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                   last_bn: bool = False, last_bn_affine: bool = True,
                   last_bias: bool = True) -> nn.Sequential:
    """``num_layers`` linear layers; every one but the last is followed by BatchNorm and ReLU.

    Linear layers followed by BatchNorm have no bias (the BN shift replaces it). ``last_bn`` adds
    a BatchNorm after the output layer, as SimCLR's projector does (and lightly's
    SimCLRProjectionHead); ``last_bn_affine=False`` makes it a plain standardisation, as MoCo v3's
    projector (facebookresearch/moco-v3 ``_build_mlp``). ``last_bias=False`` drops the output
    layer's bias without a BatchNorm after it too (``_build_mlp`` uses ``bias=False`` throughout).
    """
    if num_layers < 1:
        raise ValueError(f"a projection MLP needs >= 1 layer, got num_layers={num_layers}")
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == num_layers - 1
        with_bn = (not last) or last_bn
        layers.append(nn.Linear(d_in, d_out, bias=not with_bn and (last_bias or not last)))
        if with_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine or not last))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight ``g * v / ||v||`` per output unit (Salimans & Kingma 2016).

    DINO's last layer. Written out instead of ``torch.nn.utils.parametrizations.weight_norm`` so
    that the two tensors have plain names (``weight_g``, ``weight_v``) in checkpoints and
    ``freeze_g`` simply fixes every row to unit norm (``norm_last_layer=True`` in DINO).
    """

    def __init__(self, in_dim: int, out_dim: int, freeze_g: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not freeze_g)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP (GELU) -> bottleneck -> L2 normalise -> weight-normalised linear to ``out_dim`` logits.

    ``num_layers`` counts the MLP's linear layers (3 in the paper, 2 in lightly's CIFAR-10
    benchmark); ``use_bn`` adds BatchNorm after hidden layers (the paper's ResNet-50 setting).
    MLP weights use a truncated normal init (std 0.02) as the reference implementation.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, num_layers: int = 3, use_bn: bool = False,
                 norm_last_layer: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DINOHead needs num_layers >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, freeze_g=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(x)
