"""Method and backbone, checked together from their names before anything is built.

``vissl-lite pretrain mae/cifar10_vit_tiny backbone.name=resnet18`` must say first what is wrong
(MAE trains ViTs), not that the preset's ``backbone.pos_embed`` does not apply to a ResNet. So the
config loader asks the method's ``supported_backbones`` and the backbone's ``family`` (the zoo's
table, no torch) before validating anything else. And when a later source (the command line)
switches ``backbone.name``, the options that earlier sources (the preset) set for the old backbone
and the new one does not take are dropped: they belonged to the backbone that was replaced. An
option set together with or after the new name stays, and the zoo refuses it with the override
that removes it (``~backbone.pos_embed``).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from vissl_lite.backbones.config import BackboneConfig
from vissl_lite.errors import ConfigError, RegistryError
from vissl_lite.registry import BACKBONES

#: a backbone of each family that any preset can take (the suggestion in the mismatch error)
EXAMPLE_BACKBONE = {"vit": "vit_tiny_patch4", "resnet": "resnet18"}


def backbone_mismatch(method: str, supported: Sequence[str], backbone_name: str,
                      family: Optional[str]) -> Optional[str]:
    """The error text when ``method`` cannot train a ``family`` backbone, else ``None``."""
    if not supported or family is None or family in supported:
        return None
    examples = ", ".join(f"backbone.name={EXAMPLE_BACKBONE[f]}" for f in supported
                         if f in EXAMPLE_BACKBONE)
    return (f"method '{method}' needs a {' or '.join(supported)} backbone, got "
            f"backbone.name={backbone_name} ({family}); pick one, e.g. {examples} (see "
            f"`vissl-lite list backbones`)")


def check_method_backbone(sources: List[Tuple[str, DictConfig]], method: str,
                          supported: Sequence[str]) -> None:
    """Raise on a method/backbone mismatch; drop the replaced backbone's options (module doc)."""
    merged = OmegaConf.merge(*[c for _, c in sources]) if sources else OmegaConf.create()
    name = OmegaConf.select(merged, "backbone.name", default=BackboneConfig.name)
    if not isinstance(name, str):
        return  # a type error, which validation reports
    try:
        builder = BACKBONES.get(name)
    except RegistryError as e:
        raise ConfigError(f"backbone.name: {e}") from None
    message = backbone_mismatch(method, supported, name, getattr(builder, "family", None))
    if message:
        raise ConfigError(message)
    setters = [i for i, (_, c) in enumerate(sources)
               if OmegaConf.select(c, "backbone.name") is not None]
    accepted = set(inspect.signature(builder).parameters) | {"name", "pretrained_path",
                                                                 "pretrained"}
    options = {f.name for f in dataclasses.fields(BackboneConfig)}
    for _, cfg in sources[:setters[-1]] if setters else []:
        section = cfg.get("backbone")
        if isinstance(section, DictConfig):
            for key in [k for k in section if k in options and k not in accepted]:
                section.pop(key)
