"""The preprocessing card of an encoder: how an image must be prepared before it enters it.

Features depend on the resize, crop, interpolation and normalisation as much as on the weights
(resizing and normalisation alone reorder benchmark rankings), so every encoder spec resolves to an
encoder and its card, read from where the model's authors wrote it down: timm's
``pretrained_cfg`` (``timm.data.resolve_model_data_config``), a torchvision weights enum's
``transforms()``, or a vissl_lite checkpoint's own config (its view size and ``augment.mean/std``).
The evaluators print the card in their header and record it in their results; every field can be
overridden (``Card.replace``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from vissl_lite.augment import default_mean_std
from vissl_lite.errors import BackboneError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
#: at and below this side, images are resized to the crop size itself (no 256 -> 224 margin)
SMALL_IMAGE = 64
#: the ImageNet protocol's crop fraction (resize 256, center-crop 224)
CROP_PCT = 0.875
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Card:
    """Resize the short side to ``resize`` with ``interpolation``, center-crop ``image_size``,
    scale to [0, 1], normalise with ``mean``/``std``. ``source`` says where the values come from."""

    image_size: int
    resize: int
    interpolation: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    source: str = "default"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise BackboneError(f"interpolation {self.interpolation!r} is not one of "
                                f"{', '.join(INTERPOLATIONS)}")
        if self.resize < self.image_size:
            raise BackboneError(f"resize {self.resize} is smaller than the crop {self.image_size}; "
                                f"give a resize >= the image size")

    def replace(self, *, image_size: Optional[int] = None, resize: Optional[int] = None,
                interpolation: Optional[str] = None, mean: Optional[Sequence[float]] = None,
                std: Optional[Sequence[float]] = None) -> "Card":
        """This card with the given fields overridden (a new size keeps the crop fraction)."""
        changes: Dict[str, Any] = {}
        if image_size and image_size != self.image_size:
            changes["image_size"] = int(image_size)
            changes["resize"] = round(image_size * self.resize / self.image_size)
        for key, value in (("resize", resize), ("interpolation", interpolation)):
            if value:
                changes[key] = value
        for key, value in (("mean", mean), ("std", std)):
            if value:
                changes[key] = tuple(float(v) for v in value)
        if not changes:
            return self
        return dataclasses.replace(self, **changes, source=f"{self.source}, overridden: "
                                                           f"{', '.join(sorted(changes))}")

    def as_dict(self) -> Dict[str, Any]:
        return {"image_size": self.image_size, "resize": self.resize,
                "interpolation": self.interpolation, "mean": [round(m, 6) for m in self.mean],
                "std": [round(s, 6) for s in self.std], "source": self.source}

    def describe(self) -> str:
        def fmt(values):
            return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

        return (f"resize {self.resize} {self.interpolation}, center crop {self.image_size}, "
                f"mean {fmt(self.mean)}, std {fmt(self.std)} [{self.source}]")


def default_resize(image_size: int, crop_pct: float = CROP_PCT) -> int:
    return image_size if image_size <= SMALL_IMAGE else round(image_size / crop_pct)


def card_for_size(image_size: int, mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None, source: str = "default") -> Card:
    """Our pipelines' card: resize (256 -> 224 above 64 px), bilinear, the given mean/std or the
    augmentation pipeline's defaults for this size (CIFAR-10 statistics at 32 px, else ImageNet)."""
    dmean, dstd = default_mean_std(None, image_size)
    return Card(int(image_size), default_resize(int(image_size)), "bilinear",
                tuple(float(m) for m in (mean or dmean)), tuple(float(s) for s in (std or dstd)),
                source)


def card_from_timm(model) -> Card:
    """From timm's ``pretrained_cfg`` (input size, crop_pct, interpolation, mean, std)."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    size = int(cfg["input_size"][-1])
    interpolation = cfg.get("interpolation") or "bilinear"
    if interpolation not in INTERPOLATIONS:
        interpolation = "bicubic"
    return Card(size, max(size, int(size / cfg.get("crop_pct", CROP_PCT))), interpolation,
                tuple(cfg["mean"]), tuple(cfg["std"]), "timm pretrained_cfg")


def card_from_torchvision(weights) -> Card:
    """From a torchvision weights enum's ``transforms()`` (ImageClassification preset)."""
    preset = weights.transforms()
    size = int(preset.crop_size[0])
    return Card(size, int(preset.resize_size[0]), preset.interpolation.value,
                tuple(preset.mean), tuple(preset.std), f"torchvision {weights}")


def imagenet_card(image_size: int = 224, interpolation: str = "bicubic",
                  source: str = "ImageNet protocol") -> Card:
    """Resize 256 (for 224), center-crop, ImageNet statistics: DINOv2's evaluation transform."""
    return Card(image_size, default_resize(image_size), interpolation, IMAGENET_MEAN,
                IMAGENET_STD, source)
