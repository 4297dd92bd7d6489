"""A frozen-able encoder behind one call, ``encoder(images) -> (B, D)``, whatever its family.

Which global feature an evaluator reads is a choice that changes results, so it is named:

* ``pool``: the model's own pooled output (a ResNet's global average pool, a timm model with
  ``num_classes=0``, our backbones' ``global_pool``);
* ``cls``: the CLS token after the final norm;
* ``mean``: the mean of the patch tokens after the final norm (prefix and register tokens left out);
* ``cls+mean``: both concatenated, as DINOv2's linear evaluation does (Oquab et al. 2024, ``eval/
  linear.py``: ``create_linear_input`` with ``use_avgpool``).

Tokens are read through the interface the model has: our ViTs' ``forward_all_tokens``, timm's
``forward_features`` (tokens with ``num_prefix_tokens`` in front), or DINOv2's ``forward_features``
dict (``x_norm_clstoken``, ``x_norm_patchtokens``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from vissl_lite.backbones.card import Card
from vissl_lite.errors import BackboneError

FEATURES = ("pool", "cls", "mean", "cls+mean")


def token_interface(model: nn.Module) -> Optional[str]:
    """How to read tokens from ``model``: "ours", "timm", "dinov2", or None (pooled only)."""
    if hasattr(model, "forward_all_tokens"):
        return "ours"
    if hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_features"):
        return "timm"
    if hasattr(model, "forward_features") and hasattr(model, "num_register_tokens"):
        return "dinov2"
    return None


class Encoder(nn.Module):
    """``model`` with a named global ``feature``; ``num_features`` is the output width.

    ``card`` is its preprocessing, ``spec`` the encoder spec it was built from, ``model_id`` what
    identifies its weights (feature caches are keyed by it), ``family`` "resnet", "vit" or "cnn".
    """

    def __init__(self, model: nn.Module, *, feature: str, width: int, card: Card, spec: str,
                 model_id: str, family: str):
        super().__init__()
        self.model = model
        self.interface = token_interface(model)
        if feature not in FEATURES:
            raise BackboneError(f"feature {feature!r} is not one of {', '.join(FEATURES)}")
        if feature != "pool" and self.interface is None:
            raise BackboneError(f"{spec}: feature {feature!r} needs tokens, but this {family} "
                                f"model gives pooled features only; use --feature pool")
        if "cls" in feature and self.interface == "ours" and model.cls_token is None:
            raise BackboneError(f"{spec}: feature {feature!r} needs a CLS token, which this ViT "
                                f"has not (class_token=false); use --feature mean")
        self.feature, self.card, self.spec, self.model_id, self.family = (
            feature, card, spec, model_id, family)
        self.width = width
        self.num_features = 2 * width if feature == "cls+mean" else width

    def tokens(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(CLS (B, D), patch tokens (B, N, D)), both after the final norm."""
        if self.interface == "dinov2":
            out = self.model.forward_features(images)
            return out["x_norm_clstoken"], out["x_norm_patchtokens"]
        if self.interface == "ours":
            tokens = self.model.forward_all_tokens(images)
        elif self.interface == "timm":
            tokens = self.model.forward_features(images)
        else:
            raise BackboneError(f"{self.spec}: this {self.family} model has no tokens")
        return tokens[:, 0], tokens[:, self.model.num_prefix_tokens:]

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w), the dense features of a linear segmentation probe: a ViT's patch tokens
        after the final norm on their grid, or a CNN's last feature map (before its pooling)."""
        if self.interface is not None:
            patches = self.tokens(images)[1]
            n, (height, width) = patches.shape[1], images.shape[-2:]
            h = round((n * height / width) ** 0.5)
            if h == 0 or n % h:
                raise BackboneError(f"{self.spec}: {n} patch tokens do not fill a grid of a "
                                    f"{height}x{width} image")
            return patches.transpose(1, 2).reshape(len(images), -1, h, n // h)
        if all(hasattr(self.model, a) for a in ("conv1", "bn1", "relu", "maxpool", "layer4")):
            m = self.model   # a torchvision-style ResNet (ours, torchvision's)
            x = m.maxpool(m.relu(m.bn1(m.conv1(images))))
            return m.layer4(m.layer3(m.layer2(m.layer1(x))))
        out = self.model.forward_features(images) if hasattr(self.model, "forward_features") else None
        if out is None or out.ndim != 4:
            raise BackboneError(f"{self.spec}: this {self.family} model gives no feature map "
                                f"(a ViT's tokens, a ResNet's layer4 or a (B, C, h, w) "
                                f"forward_features)")
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.feature == "pool":
            out = self.model(images)
            return out.flatten(1) if out.ndim > 2 else out
        return self._global(*self.tokens(images))

    def _global(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """The named token feature (cls, mean or cls+mean) from the final-normed tokens."""
        if self.feature == "cls":
            return cls
        if self.feature == "mean":
            return patches.mean(dim=1)
        return torch.cat([cls, patches.mean(dim=1)], dim=1)

    @property
    def patch_size(self) -> Optional[int]:
        """The side of a patch in pixels for a model with patch tokens, else None."""
        if self.interface is None:
            return None
        size = getattr(self.model, "patch_size", None)
        if size is None:
            size = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        return int(size[0] if isinstance(size, (tuple, list)) else size) if size else None

    def forward_with_patches(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the global feature (B, num_features), the patch tokens (B, N, width)), one pass."""
        if self.interface == "timm" and self.feature == "pool":
            tokens = self.model.forward_features(images)
            return (self.model.forward_head(tokens, pre_logits=True),
                    tokens[:, self.model.num_prefix_tokens:])
        cls, patches = self.tokens(images)
        if self.feature != "pool":
            return self._global(cls, patches), patches
        if getattr(self.model, "global_pool", None) == "avg":   # ours, pooled as its forward
            return patches.mean(dim=1), patches
        head = getattr(self.model, "head", None)      # DINOv2's forward: head(CLS), an identity
        return (head(cls) if head is not None else cls), patches

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, feature={self.feature!r}, num_features={self.num_features}"
