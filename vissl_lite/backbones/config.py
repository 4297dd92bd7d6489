"""Schema of the ``backbone`` config section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class BackboneConfig:
    name: str = "resnet18"            # a name from ``vissl-lite list`` (backbones)
    cifar_stem: bool = False          # ResNets: 3x3 stride-1 first conv and no max-pool (32x32 input)
    zero_init_residual: bool = False  # ResNets: each block's last BN scale starts at 0 (Goyal et al.
    #                                   2017; Barlow Twins, VICReg and MoCo v3 train so)
    width: Optional[int] = None       # ResNets: channels of the first stage (then 2x, 4x, 8x); null =
    #                                   the standard 64; 16 costs 1/16 of the FLOPs (the quick start)
    img_size: Optional[int] = None    # ViTs: input resolution; null = the data's image size
    drop_path_rate: float = 0.0
    global_pool: str = "avg"          # ViTs: "avg" of patch tokens or "token" (CLS)
    pos_embed: str = "learn"          # ViTs: "learn" or fixed 2-D "sincos" (MAE, I-JEPA)
    class_token: bool = True          # ViTs: prepend a CLS token (needed by global_pool=token)
    dynamic_img_size: bool = False    # ViTs: accept other input sizes (DINO local crops)
    reg_tokens: int = 0               # ViTs: register tokens (Darcet et al. 2024; DINOv2 uses 4)
    pretrained_path: Optional[str] = None  # a local weights file (with `pretrained`: its weights)
    pretrained: Optional[str] = None  # an encoder spec to start from (timm:, torchvision:, hub:, a run)
