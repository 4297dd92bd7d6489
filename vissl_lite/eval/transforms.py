"""Deterministic evaluation transforms: resize, center-crop to the training size, normalise.

Features must be computed on images normalised exactly as in pretraining. The per-channel
constants are taken from the run's ``augment.mean/std`` when a checkpoint sets them, else from
``vissl_lite.augment.default_mean_std`` (the pipeline's own defaults). Like the training loader
(``data/loader.py`` builds its views without a data set name), evaluation passes no name unless
asked, so both normalise alike.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torchvision.transforms import v2

from vissl_lite.augment import default_mean_std as augment_default
from vissl_lite.backbones.card import Card

INTERPOLATION = {"nearest": v2.InterpolationMode.NEAREST, "bilinear": v2.InterpolationMode.BILINEAR,
                 "bicubic": v2.InterpolationMode.BICUBIC}

#: Above this side length, evaluation resizes to ``size / CROP_PCT`` before the center crop
#: (the ImageNet protocol: 256 -> 224); small images are only resized to the size itself.
CROP_PCT = 0.875
SMALL_IMAGE = 64


def default_mean_std(image_size: int, dataset: Optional[str] = None
                     ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The augmentation pipeline's normalisation for this data set (name, or None) and size."""
    mean, std = augment_default(_known_name(dataset), image_size)
    return tuple(mean), tuple(std)


def _known_name(dataset: Optional[str]) -> Optional[str]:
    return None if dataset in (None, "", "imagefolder") else dataset


def resolve_mean_std(image_size: int, mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None, dataset: Optional[str] = None):
    """``mean``/``std`` when given (a run's ``augment.mean/std``), else ``default_mean_std``."""
    dmean, dstd = default_mean_std(image_size, dataset)
    return (tuple(float(m) for m in mean) if mean else dmean,
            tuple(float(s) for s in std) if std else dstd)


def _resize_crop(image_size: int):
    resize = image_size if image_size <= SMALL_IMAGE else round(image_size / CROP_PCT)
    return [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]


def eval_transform(image_size: int, mean=None, std=None) -> v2.Compose:
    """PIL image -> normalised float tensor (3, image_size, image_size)."""
    mean, std = resolve_mean_std(image_size, mean, std)
    return v2.Compose([v2.ToImage(), *_resize_crop(image_size),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def card_transform(card: Card) -> v2.Compose:
    """PIL image -> normalised float tensor as an encoder's preprocessing card says."""
    return v2.Compose([v2.ToImage(), v2.Resize(card.resize, interpolation=INTERPOLATION[
        card.interpolation], antialias=True), v2.CenterCrop(card.image_size),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(card.mean, card.std)])


def uint8_transform(image_size: int) -> v2.Compose:
    """PIL image -> uint8 tensor (3, image_size, image_size), normalised later on the device."""
    return v2.Compose([v2.ToImage(), *_resize_crop(image_size)])


def train_probe_transform(image_size: int, mean=None, std=None) -> v2.Compose:
    """Linear-probe training augmentation of the papers: random resized crop + horizontal flip."""
    mean, std = resolve_mean_std(image_size, mean, std)
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True),
                       v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean, std)])


def normalize_uint8(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> float normalised, on the same device."""
    m = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - m) / s
