"""torchvision ResNets (He et al. 2016) as SSL encoders: classifier removed, optional CIFAR stem.

The CIFAR stem (a 3x3 stride-1 first convolution and no max-pool, as in SimCLR's CIFAR-10
experiments, Chen et al. 2020, Appendix B.9, and solo-learn) keeps 32x32 inputs at full resolution
through the first stage instead of shrinking them to 8x8. Subclassing torchvision's ``ResNet``
keeps its parameter names, so torchvision state dicts load as they are. ``zero_init_residual``
starts each residual block as the identity (its last BN scale at 0; Goyal et al. 2017), as the
Barlow Twins, VICReg and MoCo v3 reference code builds its ResNet-50. ``width`` scales every
stage's channels (``width``, 2x, 4x, 8x; torchvision's 64 by default), as the narrow CIFAR ResNets
of Zagoruyko and Komodakis 2016 do: at 32 a CIFAR-stem ResNet-18 costs about a quarter of the FLOPs
and keeps its 32x32 first stage, which the ImageNet stem at the same cost does not.
"""
from __future__ import annotations

from typing import Sequence, Type, Union

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet as _TorchvisionResNet


class ResNet(_TorchvisionResNet):
    """``forward(x (B,3,H,W)) -> (B, num_features)`` globally average-pooled features;
    ``forward_features(x) -> (B, num_features, h, w)`` the last stage's map before the pool (what
    dense methods, VICRegL and DenseCL, train and a dense probe reads; timm's name for it)."""

    family = "resnet"

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: Sequence[int],
                 cifar_stem: bool = False, name: str = "resnet", zero_init_residual: bool = False,
                 width: int = 64):
        super().__init__(block, list(layers), zero_init_residual=zero_init_residual)
        if width != 64:
            self._rebuild_at_width(block, layers, int(width), zero_init_residual)
        self.arch_name = name
        self.num_features = self.fc.in_features
        self.fc = nn.Identity()
        self.cifar_stem = cifar_stem
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, self.conv1.out_channels, kernel_size=3, stride=1, padding=1,
                                   bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()

    def _rebuild_at_width(self, block, layers: Sequence[int], width: int,
                          zero_init_residual: bool) -> None:
        """torchvision's layers and initialisation with ``width`` channels in place of 64."""
        if width < 1:
            raise ValueError(f"backbone.width must be a positive number of channels, got {width}")
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.fc = nn.Linear(8 * width * block.expansion, self.fc.out_features)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)


def resnet18(cifar_stem: bool = False, name: str = "resnet18", zero_init_residual: bool = False,
             width: int = 64) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), cifar_stem, name, zero_init_residual, width)


def resnet34(cifar_stem: bool = False, name: str = "resnet34", zero_init_residual: bool = False,
             width: int = 64) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), cifar_stem, name, zero_init_residual, width)


def resnet50(cifar_stem: bool = False, name: str = "resnet50", zero_init_residual: bool = False,
             width: int = 64) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), cifar_stem, name, zero_init_residual, width)
