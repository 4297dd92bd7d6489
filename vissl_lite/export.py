"""Your encoder out: the pretrained backbone of a checkpoint, alone, for downstream code.

    vissl-lite export CHECKPOINT --format timm|torchvision|safetensors --out FILE

* ``load_backbone(CHECKPOINT)`` -> the ready ``nn.Module`` (eval mode): images ``(B, 3, H, W)``
  -> pooled features ``(B, D)``, the encoder the evaluators use (DINO's teacher, I-JEPA's target
  encoder, ...), rebuilt from the checkpoint's own config.
* ``--format timm``: the backbone's state dict (``.pth``; ``.safetensors`` if FILE ends so) with
  timm's parameter names, loadable with
  ``timm.create_model(NAME, pretrained=True, num_classes=0, ..., pretrained_cfg_overlay=dict(
  file=FILE))``; the exact call (model name and keyword arguments) is printed and stored beside
  the weights (``FILE.json``). ResNets with the CIFAR stem have no timm equivalent (timm has no
  single 3x3 stem): use ``torchvision`` or ``safetensors`` for those.
* ``--format torchvision`` (ResNets): the state dict for ``torchvision.models.resnetXX()`` after
  ``model.fc = nn.Identity()`` (and, for the CIFAR stem, a 3x3 stride-1 ``conv1`` and
  ``maxpool = nn.Identity()``); the snippet is printed and stored beside the weights.
* ``--format safetensors``: the same tensors in a ``.safetensors`` file, with the backbone's name
  and options in its metadata.

Every format writes ``FILE.json`` beside the weights: the architecture, feature size, the input
size the encoder was trained at and the mean/std its inputs were normalised with (typed values),
and the Python that loads it. Files get the usual permissions (0644 under umask 022).

Our ResNets subclass torchvision's and our ViTs subclass timm's ``VisionTransformer``, so no key
is renamed: the exported tensors are the trained ones, bit for bit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from vissl_lite.backbones.specs import parse_spec, resolve_encoder
from vissl_lite.config import global_view_size
from vissl_lite.engine.checkpoint import load_pretrained
from vissl_lite.errors import CheckpointError
from vissl_lite.eval.transforms import resolve_mean_std

__all__ = ["load_backbone", "export_backbone", "FORMATS"]

FORMATS = ("timm", "torchvision", "safetensors")
#: our ViT sizes -> timm's architecture names (patch size and image size are passed as kwargs)
_TIMM_VIT = {192: "vit_tiny_patch16_224", 384: "vit_small_patch16_224",
             768: "vit_base_patch16_224"}


def load_backbone(checkpoint: str | os.PathLike, map_location: Any = "cpu", **spec_options
                  ) -> nn.Module:
    """The pretrained encoder of a vissl_lite checkpoint (a ``.pt`` file or a run folder), in eval
    mode on ``map_location``: ``model(images) -> (B, num_features)`` pooled features. Any other
    encoder spec (``timm:``, ``torchvision:``, ``hub:``, ``random:``) gives its ``Encoder``
    (``.card`` is its preprocessing; ``spec_options`` go to ``resolve_encoder``)."""
    if parse_spec(str(checkpoint))[0] != "checkpoint":
        return resolve_encoder(str(checkpoint), **spec_options).to(map_location).eval()
    method, _ = load_pretrained(checkpoint, map_location)
    return method.backbone_for_eval().eval()


def _state(backbone: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}


def _timm_call(backbone: nn.Module, file: str) -> Tuple[str, Dict[str, Any]]:
    """(timm model name, create_model keyword arguments) that rebuild ``backbone``."""
    family = getattr(backbone, "family", "")
    if family == "resnet":
        if getattr(backbone, "cifar_stem", False):
            raise CheckpointError("a ResNet with the CIFAR stem (3x3 stride-1 conv1, no max-pool) "
                                  "has no timm equivalent; export it with --format torchvision "
                                  "or safetensors, or use vissl_lite.load_backbone(CHECKPOINT)")
        name, kwargs = backbone.arch_name, {}
    elif family == "vit":
        name = _TIMM_VIT.get(backbone.embed_dim)
        if name is None:
            raise CheckpointError(f"no timm ViT with embed_dim {backbone.embed_dim}; export with "
                                  f"--format safetensors")
        kwargs = {"patch_size": backbone.patch_size, "img_size": backbone.img_size[0],
                  "global_pool": backbone.global_pool, "fc_norm": False,
                  "class_token": backbone.cls_token is not None,
                  "dynamic_img_size": bool(getattr(backbone, "any_img_size", False))}
    else:
        raise CheckpointError(f"cannot export a {type(backbone).__name__} backbone for timm; use "
                              f"--format safetensors")
    kwargs.update(pretrained=True, num_classes=0,
                  pretrained_cfg_overlay={"file": file, "num_classes": 0})
    return name, kwargs


def _torchvision_snippet(backbone: nn.Module, file: str) -> str:
    if getattr(backbone, "family", "") != "resnet":
        raise CheckpointError(f"--format torchvision is for ResNets; {backbone.arch_name} is a "
                              f"ViT: use --format timm (timm's VisionTransformer) or safetensors")
    lines = ["import torch, torchvision", f"model = torchvision.models.{backbone.arch_name}()",
             "model.fc = torch.nn.Identity()"]
    if getattr(backbone, "cifar_stem", False):
        lines += [f"model.conv1 = torch.nn.Conv2d(3, {backbone.conv1.out_channels}, 3, 1, 1, "
                  f"bias=False)", "model.maxpool = torch.nn.Identity()"]
    lines.append(f"model.load_state_dict(torch.load({file!r}))")
    return "\n".join(lines)


def _save(state: Dict[str, torch.Tensor], out: Path, metadata: Dict[str, str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(tmp), metadata=metadata)
    else:
        torch.save(state, tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600, like a private temporary file
    os.replace(tmp, out)


def export_backbone(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike) -> str:
    """Write the checkpoint's backbone to ``out`` in ``fmt``; returns how to load it (Python)."""
    if parse_spec(str(checkpoint))[0] != "checkpoint":
        raise CheckpointError(f"export writes the encoder of a vissl_lite run; {checkpoint} is "
                              f"already a model of its library (load it with "
                              f"vissl_lite.load_backbone({str(checkpoint)!r}))")
    if fmt not in FORMATS:
        raise CheckpointError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    out = Path(out).expanduser()
    if fmt == "safetensors" and out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    method, cfg = load_pretrained(checkpoint)
    backbone = method.backbone_for_eval().eval()
    file = str(out.resolve())
    size = global_view_size(cfg)
    augment, data = cfg.get("augment") or {}, cfg.get("data") or {}
    mean, std = resolve_mean_std(size, augment.get("mean"), augment.get("std"), data.get("name"))
    options = {"arch": str(getattr(backbone, "arch_name", type(backbone).__name__)),
               "family": str(getattr(backbone, "family", "")),
               "num_features": int(getattr(backbone, "num_features", 0)),
               "cifar_stem": bool(getattr(backbone, "cifar_stem", False)),
               "input_size": int(size), "mean": list(mean), "std": list(std)}
    if fmt == "timm":
        name, kwargs = _timm_call(backbone, file)
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        how = f"import timm\nmodel = timm.create_model({name!r}, {args})"
    elif fmt == "torchvision":
        how = _torchvision_snippet(backbone, file)
    else:
        how = ("from safetensors.torch import load_file\nstate = load_file({file!r})  "
               "# then model.load_state_dict(state)").format(file=file)
    # safetensors metadata holds strings only: JSON text of each value
    _save(_state(backbone), out, {**{k: v if isinstance(v, str) else json.dumps(v)
                                     for k, v in options.items()}, "load": how})
    card = {**options, "format": fmt, "load": how}
    Path(f"{out}.json").write_text(json.dumps(card, indent=2) + "\n")
    return how
