"""The CPU view pipeline: torchvision.transforms.v2, one image at a time in DataLoader workers.

This is the reference path: each view is the torchvision composition of the recipe (random
resized crop, flip, colour jitter in torchvision's random order, grayscale, Gaussian blur,
solarisation, normalisation), with the parameters resolved in ``recipes.py``. The batched GPU path
(``gpu.py``) samples the same distributions.
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch
from torchvision.transforms import v2

from vissl_lite.augment.crops import sample_gaussian_boxes
from vissl_lite.augment.recipes import ViewParams, resolve_views
from vissl_lite.augment.spec import ViewSpec

SOLARIZE_THRESHOLD = 128  # on uint8 pixels, as PIL's ImageOps.solarize in BYOL and DINO


class GaussianCenteredCrop(torch.nn.Module):
    """A label-preserving crop (``augment.crop`` gcc | cgcc | mgcc, see crops.py) resized to the
    view size: the same box sampler as the GPU path, one image at a time."""

    def __init__(self, view: ViewParams):
        super().__init__()
        self.view = view

    def forward(self, image):
        v = self.view
        height, width = v2.functional.get_size(image)
        top, left, h, w = sample_gaussian_boxes(1, height, width, v.crop, v.crop_frac, v.crop_alpha,
                                                v.crop_shift)[0].tolist()
        return v2.functional.resized_crop(image, top, left, h, w, [v.size, v.size],
                                          interpolation=v2.InterpolationMode(v.interpolation),
                                          antialias=True)


def view_transform(view: ViewParams) -> v2.Compose:
    """The torchvision pipeline of one view: PIL image or uint8 CHW tensor -> normalised float."""
    crop = (v2.RandomResizedCrop(view.size, scale=view.scale, ratio=view.ratio,
                                 interpolation=v2.InterpolationMode(view.interpolation),
                                 antialias=True)
            if view.crop == "rrc" else GaussianCenteredCrop(view))
    ops: List[Any] = [v2.ToImage(), crop]
    if view.flip_p > 0:
        ops.append(v2.RandomHorizontalFlip(view.flip_p))
    if view.jitter_p > 0 and any(view.jitter):
        ops.append(v2.RandomApply([v2.ColorJitter(*view.jitter)], p=view.jitter_p))
    if view.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(view.grayscale_p))
    if view.blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(view.blur_kernel, view.blur_sigma)],
                                  p=view.blur_p))
    if view.solarize_p > 0:
        ops.append(v2.RandomSolarize(SOLARIZE_THRESHOLD, p=view.solarize_p))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(view.mean, view.std),
            v2.ToPureTensor()]
    return v2.Compose(ops)


class CPUViews:
    """Callable ``image -> [view, ...]`` (globals first, then locals); picklable for workers."""

    def __init__(self, views: List[ViewParams]):
        self.views = views
        self.transforms = [view_transform(v) for v in views]

    def __call__(self, image) -> List[torch.Tensor]:
        return [t(image) for t in self.transforms]

    def __repr__(self) -> str:
        sizes = ", ".join(str(v.size) for v in self.views)
        return f"CPUViews({len(self.views)} views: {sizes})"


def build_cpu_views(spec: ViewSpec, aug_cfg: Any = None, image_size: int = 224, *,
                    dataset: Optional[str] = None) -> CPUViews:
    """The CPU pipeline for ``spec``; ``aug_cfg`` is the ``augment`` section (null = defaults).

    ``dataset`` (e.g. "cifar10") picks the normalisation statistics when ``augment.mean/std`` are
    null; without it small inputs get CIFAR-10's and larger ones ImageNet's.
    """
    return CPUViews(resolve_views(spec, aug_cfg, image_size, dataset))
