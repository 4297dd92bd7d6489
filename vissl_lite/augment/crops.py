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
    if mode not in ("gcc", "cgcc", "mgcc"):
        raise ValueError(f"unknown Gaussian crop mode '{mode}'; known: gcc, cgcc, mgcc")
    gen_device = generator.device if generator is not None else device
    draws = torch.randn((n, 2), generator=generator, device=gen_device, dtype=torch.float64)
    uniform = torch.rand((n, 2), generator=generator, device=gen_device, dtype=torch.float64)
    draws, uniform = draws.to(device), uniform.to(device)
    size = torch.tensor([height, width], dtype=torch.float64, device=device)
    crop = torch.clamp(torch.round(frac * size), min=1.0)
    crop = torch.minimum(crop, size)
    mean = size / 2
    if mode == "mgcc":
        span = torch.tensor(shift, dtype=torch.float64, device=device) * size
        mean = mean + (2 * uniform - 1) * span
    centre = mean + alpha * size * draws
    start = torch.round(centre - crop / 2)
    if mode == "gcc":
        stop = torch.minimum(start + crop, size)
        start = torch.clamp(start, min=0.0)
        stop = torch.maximum(stop, start + 1)             # at least one pixel ...
        start = torch.minimum(start, size - 1)            # ... inside the image
        extent = torch.minimum(stop, size) - start
    else:
        start = torch.minimum(torch.clamp(start, min=0.0), size - crop)
        extent = crop.expand_as(start)
    return torch.cat([start, extent], dim=1).long()               # top, left, h, w
