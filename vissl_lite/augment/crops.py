"""Label-preserving crops (Hassan, Wasil & Houben 2025, arXiv:2504.19824), per-sample boxes.

Random resized crops can cut a view far from the object, so the two views of an image may not
show the same thing ("false labels"). Gaussian-centred crops keep the crop size fixed and draw
the crop *centre* around the image centre:

    h_c, w_c = round(frac * H), round(frac * W)                      fixed crop size
    (c_y, c_x) ~ N((H/2, W/2), diag(alpha * H, alpha * W)^2)        alpha: the spread
    box = (c_y - h_c/2, c_x - w_c/2, h_c, w_c)

- ``gcc``:  the box is cut to the image where it sticks out (the crop shrinks near the borders;
            the reference code pads the outside with black instead, which we do not feed);
- ``cgcc``: "corrected" GCC: the centre is clamped so that the whole box lies in the image;
- ``mgcc``: multi-object GCC: the Gaussian's mean is itself drawn per sample, uniformly in
            (H/2 +- a H, W/2 +- b W), for off-centre or several objects; boxes clamped as cgcc.

Here ``alpha`` is the standard deviation of the centre in units of the image side (the paper
writes the covariance as diag(alpha w, alpha h)). ``sample_gaussian_boxes`` draws a whole batch
of boxes with fixed shapes (top, left, h, w as ``RandomResizedCrop`` boxes), so the CPU pipeline
(one image at a time) and the GPU pipeline (the batch at once) share it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def sample_gaussian_boxes(n: int, height: int, width: int, mode: str, frac: float, alpha: float,
                          shift: Tuple[float, float] = (0.0, 0.0),
                          generator: Optional[torch.Generator] = None,
                          device=None) -> torch.Tensor:
    """``n`` boxes (top, left, h, w), long, of a Gaussian-centred crop mode (see module doc)."""
    normal, uniform = draw_gaussian_box_randoms(n, generator, device)
    return gaussian_boxes(normal, uniform, height, width, mode, frac, alpha, shift)


def draw_gaussian_box_randoms(n: int, generator: Optional[torch.Generator] = None,
                              device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The random numbers of ``n`` boxes: (n, 2) standard normal and (n, 2) uniform, float64, drawn
    on the generator's device (a seeded CPU generator gives the same boxes on any device)."""
    gen_device = generator.device if generator is not None else device
    normal = torch.randn((n, 2), generator=generator, device=gen_device, dtype=torch.float64)
    uniform = torch.rand((n, 2), generator=generator, device=gen_device, dtype=torch.float64)
    return normal.to(device), uniform.to(device)


def gaussian_boxes(normal: torch.Tensor, uniform: torch.Tensor, height: int, width: int,
                   mode: str, frac: float, alpha: float,
                   shift: Tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Boxes from given random numbers (``draw_gaussian_box_randoms``): a pure function with
    Python-number sizes, so the GPU pipeline builds no tensor from host data and syncs nothing."""
    if mode not in ("gcc", "cgcc", "mgcc"):
        raise ValueError(f"unknown Gaussian crop mode '{mode}'; known: gcc, cgcc, mgcc")
    columns = []
    for axis, size in enumerate((height, width)):
        crop = float(min(max(round(frac * size), 1), size))
        mean: torch.Tensor | float = size / 2
        if mode == "mgcc":
            mean = size / 2 + (2 * uniform[:, axis] - 1) * (shift[axis] * size)
        start = torch.round(mean + alpha * size * normal[:, axis] - crop / 2)
        if mode == "gcc":
            stop = torch.clamp(start + crop, max=float(size))
            start = torch.clamp(start, min=0.0)
            stop = torch.maximum(stop, start + 1)             # at least one pixel ...
            start = torch.clamp(start, max=size - 1.0)        # ... inside the image
            extent = torch.clamp(stop, max=float(size)) - start
        else:
            start = torch.clamp(torch.clamp(start, min=0.0), max=size - crop)
            extent = torch.full_like(start, crop)
        columns.append((start, extent))
    (top, h), (left, w) = columns
    return torch.stack([top, left, h, w], dim=1).long()
