"""The backbone zoo: every name ``backbone.name`` may take, and how each is built.

One table (``vissl_lite.registry.BACKBONES``) maps a name to a builder, as timm's
``create_model`` does; the options of the ``backbone`` config section are its keyword arguments.
ResNets come from torchvision, ViTs from timm; patch-4 and patch-8 ViTs are meant for 32x32 images
(64 and 16 tokens), patch-16 ViTs for 224x224. Builders import torchvision and timm only when
called, and nothing here imports torch: the config loader reads families and options from this
table (``vissl-lite config`` must answer fast). ``build.py`` builds the modules.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional

from vissl_lite.backbones.config import BackboneConfig
from vissl_lite.errors import RegistryError
from vissl_lite.registry import BACKBONES

if TYPE_CHECKING:
    from torch import nn

RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
#: embed_dim, depth, num_heads (Touvron et al. 2021 for tiny and small; Dosovitskiy et al. 2021)
VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}
VIT_PATCHES = {4: 32, 8: 32, 16: 224}  # patch size -> the input size it is meant for


def _resnet_builder(name: str) -> Callable[..., nn.Module]:
    def build(*, cifar_stem: bool = False, zero_init_residual: bool = False,
              width: Optional[int] = None) -> nn.Module:
        from vissl_lite.backbones import resnet

        return getattr(resnet, name)(cifar_stem=cifar_stem, name=name,
                                     zero_init_residual=zero_init_residual, width=width or 64)

    build.family = "resnet"
    return build


def _vit_builder(name: str, size: str, patch_size: int) -> Callable[..., nn.Module]:
    embed_dim, depth, num_heads = VIT_SIZES[size]

    def build(*, img_size: Optional[int] = None, drop_path_rate: float = 0.0,
              global_pool: str = "avg", pos_embed: str = "learn", class_token: bool = True,
              dynamic_img_size: bool = False, reg_tokens: int = 0) -> nn.Module:
        from vissl_lite.backbones.vit import ViT

        return ViT(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                   img_size=img_size or VIT_PATCHES[patch_size], drop_path_rate=drop_path_rate,
                   global_pool=global_pool, pos_embed=pos_embed, class_token=class_token,
                   dynamic_img_size=dynamic_img_size, reg_tokens=reg_tokens, name=name)

    build.family = "vit"
    return build


for _name, _dim in RESNETS.items():
    BACKBONES.register(_name, help=f"torchvision {_name}, {_dim}-d features; cifar_stem for "
                                   f"32x32 input")(_resnet_builder(_name))

for _size, (_dim, _, _) in VIT_SIZES.items():
    for _patch, _img in VIT_PATCHES.items():
        if _size == "base" and _patch != 16:  # ViT-B is not a 32x32 model: 86M parameters
            continue
        _builder = _vit_builder(f"vit_{_size}_patch{_patch}", _size, _patch)
        BACKBONES.register(f"vit_{_size}_patch{_patch}",
                           help=f"timm ViT-{_size.capitalize()}/{_patch}, {_dim}-d, "
                                f"img_size {_img} by default")(_builder)
        if _patch == 16:
            BACKBONES.register(f"vit_{_size}", help=f"alias of vit_{_size}_patch16")(_builder)


def _schema_defaults() -> Dict[str, Any]:
    fields = dataclasses.fields(BackboneConfig)
    return {f.name: f.default for f in fields
            if f.name not in ("name", "pretrained_path", "pretrained")}


def options_for(name: str, builder: Callable, options: Mapping[str, Any], error: type,
                 key_prefix: str) -> Dict[str, Any]:
    """Keep the options ``builder`` takes; any other option must be left at its default."""
    accepted = inspect.signature(builder).parameters
    defaults = _schema_defaults()
    family = getattr(builder, "family", "?")
    kwargs = {}
    for key, value in options.items():
        if key in accepted:
            if value is None and defaults.get(key, 0) is None:
                continue   # left unset: the builder's own default
            kwargs[key] = value
        elif key not in defaults:
            raise error(f"unknown backbone option {key_prefix}{key}; the options are: "
                        f"{', '.join(sorted(defaults))}, pretrained_path")
        elif value != defaults[key]:
            fix = f" (on the command line: ~{key_prefix}{key})" if key_prefix else ""
            raise error(f"{key_prefix}{key}={value!r} does not apply to {name} (a {family} "
                        f"backbone, whose options are: {', '.join(accepted)}); remove it{fix}")
    return kwargs


def get_builder(name: str, key_prefix: str = "") -> Callable[..., nn.Module]:
    try:
        return BACKBONES.get(name)
    except RegistryError as e:
        raise RegistryError(f"{key_prefix}{e}") from None
