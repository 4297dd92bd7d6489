"""Build a backbone module from its registered name and the ``backbone`` config section.

The names, families and options are the zoo's table (``zoo.py``, which imports no torch); this
module builds the network and loads ``pretrained_path`` (``weights.py``).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Optional

from vissl_lite.backbones.config import BackboneConfig
from vissl_lite.backbones.weights import load_pretrained_weights
from vissl_lite.backbones.zoo import get_builder, options_for
from vissl_lite.errors import BackboneError, ConfigError

if TYPE_CHECKING:
    from torch import nn


def build_backbone(name: str, pretrained_path: Optional[str] = None, **kw) -> nn.Module:
    """Build the backbone registered as ``name`` (see ``vissl-lite list``) with options ``kw``
    (``cifar_stem``; ViTs: ``img_size``, ``drop_path_rate``, ``global_pool``, ``pos_embed``,
    ``class_token``, ``dynamic_img_size``, ``reg_tokens``) and load ``pretrained_path`` if given."""
    builder = get_builder(name)
    model = builder(**options_for(name, builder, kw, BackboneError, ""))
    if pretrained_path:
        load_pretrained_weights(model, pretrained_path)
    return model


def build_backbone_from_config(backbone_cfg, image_size: Optional[int] = None) -> nn.Module:
    """Build from the ``backbone`` config section; a ViT's ``img_size`` defaults to
    ``image_size`` (the size of the images the method feeds it)."""

    if dataclasses.is_dataclass(backbone_cfg):
        values = dataclasses.asdict(backbone_cfg)
    else:
        values = {str(k): backbone_cfg[k] for k in backbone_cfg}
    name = values.pop("name", None) or BackboneConfig.name
    pretrained_path = values.pop("pretrained_path", None)
    if values.pop("pretrained", None):
        pretrained_path = None  # specs.build_backbone_for_run loads an encoder spec's weights
    builder = get_builder(name, "backbone.name: ")
    if "img_size" in inspect.signature(builder).parameters and values.get("img_size") is None:
        values["img_size"] = image_size
    model = builder(**options_for(name, builder, values, ConfigError, "backbone."))
    if pretrained_path:
        load_pretrained_weights(model, pretrained_path)
    return model
