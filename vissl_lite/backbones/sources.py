"""Encoders from other libraries: ``timm:<name>``, ``torchvision:<model>[:<weights>]``,
``hub:<local repo dir>:<entry point>``.

Each builder returns a ``Built``: the model without its classifier, its preprocessing card, its
token width, family and default global feature. Weights come, in this order, from a local file
(``--weights FILE``, ``.pth`` or ``.safetensors``), the library's own cache (timm reads the local
Hugging Face cache and needs no network with ``HF_HUB_OFFLINE=1``; torchvision and torch.hub read
``torch.hub.get_dir()/checkpoints``), or the library's download when online. When none has them,
one line says which file to put where. The libraries are imported when a builder is called: this
package is imported with the config schema, which must load fast.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional
from urllib.error import URLError

from torch import nn

from vissl_lite.backbones.card import (Card, card_from_timm, card_from_torchvision,
                                       imagenet_card)
from vissl_lite.backbones.encoder import token_interface
from vissl_lite.backbones.weights import load_pretrained_weights
from vissl_lite.errors import BackboneError

#: the attributes that hold a torchvision classifier, replaced by an identity
_CLASSIFIERS = ("fc", "heads", "classifier", "head")


@dataclass
class Built:
    model: nn.Module
    card: Card
    width: int
    family: str
    feature: str  # the default global feature


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or bool(
        os.environ.get("VISSL_LITE_OFFLINE"))


def _family(model: nn.Module, name: str) -> str:
    if token_interface(model):
        return "vit"
    return "resnet" if "resnet" in name else "cnn"


def build_timm(name: str, weights: Optional[str] = None) -> Built:
    """``timm.create_model(name, pretrained=True, num_classes=0)``; ``weights`` replaces the
    download (timm's ``pretrained_cfg_overlay=dict(file=...)``)."""
    import timm

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:8]}*")[:5]
        raise BackboneError(f"timm:{name}: timm has no model {arch!r} (close: "
                            f"{', '.join(close) or 'none'}; `timm.list_models('*vit*')` lists them)")
    overlay = {"file": str(Path(weights).expanduser())} if weights else None
    if weights and not Path(weights).expanduser().is_file():
        raise BackboneError(f"--weights {weights}: no such file")
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=overlay)
    except (OSError, URLError, RuntimeError) as e:
        if weights:
            raise BackboneError(f"timm:{name}: cannot load {weights} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]})") from None
        repo = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(repo, "hf_hub_id", None) or f"timm/{name}"
        cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
        raise BackboneError(f"timm:{name}: no weights here{' (offline)' if offline() else ''}; "
                            f"give --weights FILE (.safetensors/.pth), or put the Hugging Face "
                            f"repo {hub_id} into {cache} (`hf download {hub_id}` on a machine "
                            f"online, then copy models--{hub_id.replace('/', '--')})") from None
    width = int(getattr(model, "embed_dim", 0) or model.num_features)
    family = _family(model, arch)
    return Built(model, card_from_timm(model), width, family, "pool")


def _strip_classifier(model: nn.Module, name: str) -> int:
    """Replace the classifier by an identity; returns the width of what it received."""
    for attr in _CLASSIFIERS:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if linears:
                setattr(model, attr, nn.Identity())
                return linears[0].in_features
    raise BackboneError(f"torchvision:{name}: no classifier (fc, heads, classifier) to remove; "
                        f"use a classification model of torchvision.models")


def build_torchvision(name: str, enum: Optional[str] = None,
                      weights: Optional[str] = None) -> Built:
    """``torchvision.models.get_model(name, weights=enum)`` (default: ``DEFAULT``) without its
    classifier; with ``weights`` the file's tensors replace the download (the enum's card stays)."""
    import torchvision

    try:
        table = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise BackboneError(f"torchvision:{name}: no such torchvision model (e.g. resnet18, "
                            f"resnet50, vit_b_16, convnext_tiny)") from None
    try:
        chosen = table[enum or "DEFAULT"]
    except KeyError:
        raise BackboneError(f"torchvision:{name}:{enum}: no such weights; {name} has "
                            f"{', '.join(table.__members__)}") from None
    model = torchvision.models.get_model(name, weights=None)
    if not weights:
        model.load_state_dict(_torch_hub_file(chosen.url, f"torchvision:{name}"))
    width = _strip_classifier(model, name)
    if weights:
        load_pretrained_weights(model, weights)
    return Built(model, card_from_torchvision(chosen), width, _family(model, name), "pool")


def _torch_hub_file(url: str, spec: str):
    """The state dict at ``url`` from torch.hub's cache, downloaded there when online."""
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not cached.is_file() and offline():
        raise BackboneError(_missing(spec, url, cached))
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    except (URLError, OSError) as e:
        raise BackboneError(f"{_missing(spec, url, cached)} ({type(e).__name__})") from None


def _missing(spec: str, url: str, cached: Path) -> str:
    return (f"{spec}: no weights here and none can be downloaded; give --weights FILE, or put "
            f"{url} at {cached}")


def _hub_entries(hubconf: Path) -> List[str]:
    """The entry points of a hubconf.py: its public top-level functions (read, not run)."""
    tree = ast.parse(hubconf.read_text())
    return [node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]


def build_hub(repo: str, entry: str, weights: Optional[str] = None) -> Built:
    """``torch.hub.load(repo, entry, source="local")`` from a cloned torch.hub repository
    (e.g. facebookresearch/dinov2 with ``dinov2_vits14``). With ``weights`` the entry is built
    with ``pretrained=False`` and the file loaded; else the entry loads its own weights."""
    import torch.hub

    folder = Path(repo).expanduser()
    if not (folder / "hubconf.py").is_file():
        raise BackboneError(f"hub:{repo}:{entry}: {folder} has no hubconf.py; clone the "
                            f"repository (e.g. git clone https://github.com/facebookresearch/"
                            f"dinov2) and give its folder")
    entries = _hub_entries(folder / "hubconf.py")
    if entry not in entries:
        raise BackboneError(f"hub:{repo}:{entry}: no entry point {entry!r}; it has "
                            f"{', '.join(entries)}")
    try:
        model = torch.hub.load(str(folder), entry, source="local",
                               **({"pretrained": False} if weights else {}))
    except (URLError, OSError) as e:
        raise BackboneError(f"hub:{repo}:{entry}: cannot load its weights ({type(e).__name__}); "
                            f"give --weights FILE (the .pth the entry point downloads, put in "
                            f"{torch.hub.get_dir()}/checkpoints when offline)") from None
    if weights:
        load_pretrained_weights(model, weights)
    width = int(getattr(model, "embed_dim", 0) or getattr(model, "num_features", 0))
    if not width:
        raise BackboneError(f"hub:{repo}:{entry}: the model states no embed_dim or num_features")
    family = _family(model, entry)
    feature = "cls+mean" if token_interface(model) == "dinov2" else "pool"
    return Built(model, imagenet_card(source=f"ImageNet protocol (DINOv2 evaluation) for {entry}"),
                 width, family, feature)
