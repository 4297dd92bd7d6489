"""The backbone zoo: torchvision ResNets and timm ViTs behind one ``build_backbone`` call.

Every backbone has ``num_features``, ``family`` ("resnet" | "vit") and ``forward(x) -> (B,
num_features)`` pooled features; ViTs add the token-level calls of ``vissl_lite.backbones.vit``.
Importing this package registers the names in ``vissl_lite.registry.BACKBONES`` without importing
torchvision or timm (the modules below load them on first use).
"""
from __future__ import annotations

from vissl_lite.backbones.pos_embed import sincos_2d_pos_embed
from vissl_lite.backbones.weights import load_pretrained_weights
from vissl_lite.backbones.zoo import build_backbone, build_backbone_from_config
from vissl_lite.errors import BackboneError

__all__ = ["BackboneError", "build_backbone", "build_backbone_from_config",
           "load_pretrained_weights", "sincos_2d_pos_embed"]
