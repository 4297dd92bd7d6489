"""Method plugins, one file each; importing this package registers them in ``METHODS``."""
from __future__ import annotations

from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.barlow_twins import BarlowTwins
from vissl_lite.methods.dino import DINO
from vissl_lite.methods.ijepa import IJEPA
from vissl_lite.methods.mae import MAE
from vissl_lite.methods.simclr import SimCLR
from vissl_lite.registry import METHODS

__all__ = ["Method", "StepOutput", "SimCLR", "BarlowTwins", "DINO", "MAE", "IJEPA", "build_method"]


def build_method(cfg) -> Method:
    """Build backbone + method from a full experiment config (``vissl_lite.config.load_config``)."""
    from vissl_lite.backbones import build_backbone_from_config

    cls = METHODS.get(cfg.method.name)
    image_size = cfg.augment.global_size or cfg.data.image_size or 32
    backbone = build_backbone_from_config(cfg.backbone, image_size=image_size)
    family = getattr(backbone, "family", "")
    if cls.supported_backbones and family not in cls.supported_backbones:
        from vissl_lite.config import ConfigError
        raise ConfigError(f"method '{cfg.method.name}' needs a {' or '.join(cls.supported_backbones)} "
                          f"backbone, got backbone.name={cfg.backbone.name} ({family}); "
                          f"pick e.g. backbone.name=vit_tiny_patch4")
    method = cls(backbone, cfg.method)
    same_size = cfg.augment.local_size is not None and cfg.augment.local_size == image_size
    if method.views.num_local and not same_size and getattr(backbone, "any_img_size", True) is False:
        from vissl_lite.config import ConfigError
        raise ConfigError(f"method '{cfg.method.name}' feeds {method.views.num_local} local crops of "
                          f"another size than the global ones, but backbone {cfg.backbone.name} "
                          f"takes one input size; set backbone.dynamic_img_size=true (or "
                          f"method.num_local_crops=0)")
    return method
