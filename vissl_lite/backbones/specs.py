"""Encoder specs: one grammar for every place that takes an encoder.

Pretraining's ``backbone.pretrained``, every ``vissl-lite eval`` evaluator, ``vissl-lite embed``,
export and the distillation teacher all accept:

=========================================  =================================================
``runs/x`` or ``runs/x/checkpoints/a.pt``  a vissl_lite run folder or checkpoint (its eval encoder)
``random:<zoo name>``                      a randomly initialised zoo backbone (a baseline)
``timm:<model>[.<tag>]``                   any timm model, e.g. ``timm:vit_small_patch16_224.dino``
``torchvision:<model>[:<weights enum>]``   e.g. ``torchvision:resnet50:IMAGENET1K_V2``
``hub:<local repo dir>:<entry point>``     a cloned torch.hub repo, e.g. ``hub:~/dinov2:dinov2_vits14``
=========================================  =================================================

``resolve_encoder(spec)`` returns an ``Encoder`` (``encoder(images) -> (B, D)``) that carries its
preprocessing ``card``. Our checkpoints are read through ``vissl_lite.engine.checkpoint``, imported
by name at call time (as the registries import plugins) so the import graph still runs one way.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Any, Optional, Tuple

import torch

from vissl_lite.backbones.card import Card, card_for_size
from vissl_lite.backbones.config import BackboneConfig
from vissl_lite.backbones.encoder import Encoder
from vissl_lite.backbones.weights import load_state
from vissl_lite.backbones.sources import Built, build_hub, build_timm, build_torchvision
from vissl_lite.backbones.build import build_backbone_from_config
from vissl_lite.config import global_view_size
from vissl_lite.errors import BackboneError

KINDS = ("random", "timm", "torchvision", "hub")
GRAMMAR = ("a checkpoint file or run folder, random:<backbone>, timm:<model>, "
           "torchvision:<model>[:<weights>] or hub:<repo dir>:<entry point>")


def parse_spec(spec: str) -> Tuple[str, str]:
    """(kind, rest): kind is one of ``KINDS`` or "checkpoint" (a path)."""
    kind, sep, rest = str(spec).partition(":")
    if sep and kind in KINDS:
        if not rest:
            raise BackboneError(f"encoder spec {spec!r} names no model after '{kind}:'; give "
                                f"{GRAMMAR}")
        return kind, rest
    return "checkpoint", str(spec)


def is_external(spec: Optional[str]) -> bool:
    """A spec that names a model of another library (not a file, not a zoo backbone)."""
    return bool(spec) and parse_spec(spec)[0] in ("timm", "torchvision", "hub")


def _checkpoints():
    return importlib.import_module("vissl_lite.engine.checkpoint")


def find_checkpoint(spec: str) -> Path:
    """A checkpoint file, a sharded checkpoint folder (``step_*.dcp``, with DCP's ``.metadata``),
    or a run folder's ``checkpoints/last.pt`` (``last.dcp`` when the run was sharded)."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / ".metadata").is_file():
        last = _checkpoints().last_in(path / "checkpoints") or _checkpoints().last_in(path)
        if last is not None:
            return last
        raise BackboneError(f"{spec} is a folder without checkpoints/last.pt; give a checkpoint "
                            f"file or a run folder written by vissl-lite pretrain")
    if not (path.is_file() or (path / ".metadata").is_file()):
        raise BackboneError(f"checkpoint not found: {spec} (give {GRAMMAR}; e.g. "
                            f"runs/<run>/checkpoints/last.pt)")
    return path


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (the identity of weights in feature caches); of a folder (a
    sharded checkpoint), of its files' names and bytes in name order."""
    h = hashlib.sha256()
    path = Path(path)
    for file in (sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]):
        h.update(file.name.encode() if path.is_dir() else b"")
        with open(file, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def checkpoint_card(cfg: Any, source: str) -> Card:
    """The card of a vissl_lite run: its global view size and ``augment.mean/std`` (else the
    pipeline's defaults for that size: CIFAR-10 statistics at 32 px, ImageNet's above)."""
    augment = cfg.get("augment") if hasattr(cfg, "get") else None
    mean = augment.get("mean") if augment is not None else None
    std = augment.get("std") if augment is not None else None
    return card_for_size(int(global_view_size(cfg)), mean, std, source)


def checkpoint_encoder(spec: str, feature: Optional[str] = None,
                       map_location: Any = "cpu") -> Tuple[Encoder, Any]:
    """(the eval encoder of our checkpoint, its config)."""
    path = find_checkpoint(spec)
    method, cfg = _checkpoints().load_pretrained(str(path), map_location)
    backbone = method.backbone_for_eval()
    card = checkpoint_card(cfg, f"checkpoint config of {path.name}")
    encoder = Encoder(backbone, feature=feature or "pool", width=int(backbone.num_features),
                      card=card, spec=spec, model_id=f"sha256:{file_digest(path)}",
                      family=getattr(backbone, "family", "cnn"))
    return encoder, cfg


def like_checkpoint(spec: str) -> Tuple[Card, bool]:
    """(card, cifar_stem) of the run ``spec`` a baseline is compared with; its config only."""
    ckpt = _checkpoints().load_checkpoint(find_checkpoint(spec), map_location="cpu")
    cfg = ckpt["config"]
    stem = bool((cfg.get("backbone") or {}).get("cifar_stem", False))
    return checkpoint_card(cfg, f"like {spec}"), stem


def random_encoder(name: str, *, feature: Optional[str] = None, like: Optional[str] = None,
                   image_size: Optional[int] = None, cifar_stem: bool = False,
                   seed: int = 0) -> Encoder:
    """A random-init zoo backbone at the size, stem and normalisation of the run ``like`` (or at
    ``image_size``); with neither it is refused, since a baseline at another size is no baseline."""
    if like:
        card, like_stem = like_checkpoint(like)
        cifar_stem = cifar_stem or like_stem
        if image_size:
            card = card.replace(image_size=image_size)
    elif image_size:
        card = card_for_size(image_size, source="--image-size")
    else:
        raise BackboneError(f"random:{name} needs the run it is the baseline of: --like CKPT "
                            f"(its image size, stem and normalisation), or --image-size N "
                            f"[--cifar-stem]")
    torch.manual_seed(seed)
    model = build_backbone_from_config(BackboneConfig(name=name, cifar_stem=cifar_stem),
                                       image_size=card.image_size)
    if getattr(model, "family", "") != "resnet":
        cifar_stem = False
    return Encoder(model, feature=feature or "pool", width=int(model.num_features), card=card,
                   spec=f"random:{name}",
                   model_id=f"random:{name}+seed{seed}+cifar_stem={cifar_stem}+{card.image_size}",
                   family=getattr(model, "family", "cnn"))


def build_external(spec: str, weights: Optional[str] = None) -> Built:
    """The model and card of a ``timm:``, ``torchvision:`` or ``hub:`` spec."""
    kind, rest = parse_spec(spec)
    if kind == "timm":
        return build_timm(rest, weights)
    if kind == "torchvision":
        name, _, enum = rest.partition(":")
        return build_torchvision(name, enum or None, weights)
    if kind == "hub":
        repo, sep, entry = rest.rpartition(":")
        if not sep or not repo:
            raise BackboneError(f"{spec}: write hub:<local repo dir>:<entry point>, e.g. "
                                f"hub:~/dinov2:dinov2_vits14")
        return build_hub(repo, entry, weights)
    raise BackboneError(f"{spec} is not a timm:, torchvision: or hub: spec")


def build_backbone_for_run(backbone_cfg: Any, image_size: Optional[int] = None):
    """The zoo backbone of the ``backbone`` section, starting from ``backbone.pretrained`` (any
    spec but ``random:``; ``backbone.pretrained_path`` is then its weights file) when set: the
    spec's tensors are loaded as a weights file is (prefixes stripped, classifier dropped,
    position embeddings resampled, a strict fit). Continued pretraining from any encoder."""
    model = build_backbone_from_config(backbone_cfg, image_size=image_size)
    spec = _option(backbone_cfg, "pretrained")
    if not spec:
        return model
    kind, _ = parse_spec(spec)
    if kind == "random":
        raise BackboneError(f"backbone.pretrained={spec}: a random init is no starting point; "
                            f"remove backbone.pretrained")
    if kind == "checkpoint":
        source = checkpoint_encoder(spec)[0].model
    else:
        source = build_external(spec, _option(backbone_cfg, "pretrained_path")).model
    load_state(model, {k: v.detach().clone() for k, v in source.state_dict().items()}, spec)
    return model


def _option(section: Any, key: str) -> Any:
    return section.get(key) if hasattr(section, "get") else getattr(section, key, None)


def resolve_encoder(spec: str, *, weights: Optional[str] = None, feature: Optional[str] = None,
                    like: Optional[str] = None, image_size: Optional[int] = None,
                    cifar_stem: bool = False, seed: int = 0) -> Encoder:
    """The encoder (eval mode, on the CPU) and card of any spec (see the module docstring).

    ``weights``: a local file for timm/torchvision/hub specs; ``feature``: the global feature
    (default per family: ``pool``, DINOv2's ``cls+mean``); ``like``/``image_size``/``cifar_stem``/
    ``seed``: the ``random:`` baseline's size, stem and init.
    """
    kind, rest = parse_spec(spec)
    if weights and kind in ("random", "checkpoint"):
        raise BackboneError(f"--weights applies to timm:, torchvision: and hub: specs; {spec} "
                            f"carries its own weights")
    if kind == "checkpoint":
        return checkpoint_encoder(spec, feature)[0].eval()
    if kind == "random":
        return random_encoder(rest, feature=feature, like=like, image_size=image_size,
                              cifar_stem=cifar_stem, seed=seed).eval()
    built = build_external(spec, weights)
    model_id = f"{spec}+sha256:{file_digest(weights)}" if weights else spec
    return Encoder(built.model, feature=feature or built.feature, width=built.width,
                   card=built.card, spec=spec, model_id=model_id, family=built.family).eval()
