"""Crop boxes for the batched GPU views: ``RandomResizedCrop``'s boxes drawn for a whole batch at
once, and one ``grid_sample`` that resizes (and mirrors) every box of a batch.

A method whose loss needs the views' geometry (VICRegL matches feature-map cells by their position
in the image) sets ``ViewSpec.crop_boxes``; both pipelines then return ``CroppedViews`` and the
loaders put its ``boxes`` into the batch (``batch_entries``)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["uniform", "sample_crop_boxes", "resized_crop", "CROP_TRIES", "CroppedViews",
           "view_boxes", "batch_entries"]

CROP_TRIES = 10                      # torchvision's RandomResizedCrop tries 10 boxes


def uniform(shape, generator: Optional[torch.Generator], device, dtype=torch.float32):
    """Uniform draws on the generator's device (so a seeded CPU generator gives the same views on
    any device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def sample_crop_boxes(n: int, height: int, width: int, scale: Tuple[float, float],
                      ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                      generator: Optional[torch.Generator] = None, device=None,
                      tries: int = CROP_TRIES, uniforms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``n`` boxes (top, left, h, w) as ``RandomResizedCrop.get_params`` draws them, vectorised.

    ``uniforms`` (n, 2 * tries + 2) float64 in [0, 1) replaces the draws (``GPUViews.draw``)."""
    area = height * width
    if uniforms is None:
        uniforms = uniform((n, 2 * tries + 2), generator, device, torch.float64)
    u = uniforms[:, :2 * tries].reshape(n, tries, 2)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))

    pos = uniforms[:, 2 * tries:]
    top = torch.where(found, torch.floor(pos[:, 0] * (height - h + 1)), (height - h) // 2)
    left = torch.where(found, torch.floor(pos[:, 1] * (width - w + 1)), (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1).long()


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int,
                 flip: Optional[torch.Tensor] = None, mode: str = "bilinear") -> torch.Tensor:
    """Crop box ``i`` of ``images[i]`` (top, left, h, w), resize it to ``size`` and mirror it
    where ``flip[i]``: one ``grid_sample`` for the whole batch (float images in, float out).
    Sampling points are clamped to the box's pixel centres, as torchvision resizes a crop."""
    n, _, height, width = images.shape
    boxes = boxes.to(images.device, images.dtype)
    top, left, h, w = boxes.unbind(1)
    sx = w / width
    if flip is not None:
        sx = torch.where(flip.to(images.device), -sx, sx)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    lo = torch.stack([(2 * left + 1) / width, (2 * top + 1) / height], dim=1) - 1
    hi = torch.stack([(2 * (left + w) - 1) / width, (2 * (top + h) - 1) / height], dim=1) - 1
    grid = torch.clamp(grid, lo.view(n, 1, 1, 2), hi.view(n, 1, 1, 2))
    out = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)
    return out.clamp_(0, 1) if mode == "bicubic" else out


class CroppedViews(NamedTuple):
    """A pipeline's views with where each was cut from: ``boxes[i]`` (B, 5) float32 for view ``i``
    holds top, left, height, width of the crop in source-image pixels and 1 where the view was
    mirrored (0 otherwise)."""

    views: List[torch.Tensor]
    boxes: List[torch.Tensor]


def view_boxes(boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """(n, 4) integer boxes and (n,) flips -> the (n, 5) float32 rows of ``CroppedViews.boxes``."""
    return torch.cat([boxes.float(), flip.float()[:, None].to(boxes.device)], dim=1)


def batch_entries(out: Any) -> Dict[str, list]:
    """The batch entries of a view pipeline's output: ``views``, and ``boxes`` if it gave them."""
    if isinstance(out, CroppedViews):
        return {"views": list(out.views), "boxes": list(out.boxes)}
    return {"views": list(out)}
