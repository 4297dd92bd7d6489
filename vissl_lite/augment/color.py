"""Colour ops for the batched GPU views, one random parameter per sample and no host sync:
torchvision's ``ColorJitter`` (random op order per sample), grayscale, Gaussian blur with a
per-sample sigma, solarisation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["adjust_hue", "color_jitter", "grayscale", "gaussian_blur", "solarize",
           "GRAY_WEIGHTS", "SOLARIZE_THRESHOLD"]

SOLARIZE_THRESHOLD = 128 / 255
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.split(1, dim=1)          # Python-scalar weights: no tensor built from host data
    return GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by ``shift`` (fraction of a turn, per sample), as torchvision
    does through HSV: the hue moves, each pixel's max and min channel stay."""
    maxc = x.amax(dim=1, keepdim=True)
    minc = x.amin(dim=1, keepdim=True)
    delta = maxc - minc
    safe = delta.clamp_min(1e-12)
    r, g, b = x.split(1, dim=1)
    hue = torch.where(maxc == r, (g - b) / safe,
                      torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.remainder(hue + 6.0 * shift.view(-1, 1, 1, 1), 6.0)   # in sextants
    k = torch.remainder(torch.cat([hue + 5.0, hue + 3.0, hue + 1.0], dim=1), 6.0)
    return maxc - delta * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                 active: torch.Tensor, with_hue: bool = True) -> torch.Tensor:
    """torchvision's ColorJitter per sample: ``factors`` (n, 4) = brightness, contrast and
    saturation factors and hue shift; ``order`` (n, 4) a permutation of the ops (0..3) per
    sample; samples with ``active`` False are returned unchanged. ``with_hue=False`` skips the
    hue op (a zero hue range).

    Brightness, contrast and saturation are each ``lerp(reference, x, factor)`` with reference
    zero, the mean gray level or the gray image, so one step serves all samples whatever op
    their order puts there; hue is computed for every sample at every step and kept
    (``torch.where``) where it is that sample's turn, so that shapes never depend on the data.
    """
    n = x.shape[0]
    order = order.to(x.device)
    factors = factors.to(x.device, x.dtype)
    active = active.to(x.device)
    blend = torch.where(active[:, None], factors[:, :3], torch.ones_like(factors[:, :3]))
    step_factor = torch.where(order == 3, torch.ones_like(factors),
                              blend.gather(1, order.clamp(max=2)))       # (n, 4 steps)
    use_mean = (order == 1).to(x.dtype)
    use_gray = (order == 2).to(x.dtype)
    hue_now = (order == 3) & active[:, None]                             # (n, 4 steps)
    for step in range(4):
        gray = _gray(x)
        reference = (use_gray[:, step].view(n, 1, 1, 1) * gray
                     + use_mean[:, step].view(n, 1, 1, 1) * gray.mean(dim=(2, 3), keepdim=True))
        x = torch.lerp(reference, x, step_factor[:, step].view(n, 1, 1, 1)).clamp_(0, 1)
        if with_hue:
            x = torch.where(hue_now[:, step].view(n, 1, 1, 1), adjust_hue(x, factors[:, 3]), x)
    return x


def grayscale(x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    return torch.where(active.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (reflect padding, as torchvision).
    A sigma of 0 gives a delta kernel, i.e. the image unchanged."""
    n, c, height, width = x.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    sigma = sigma.to(x.device, x.dtype).clamp(min=1e-6).view(-1, 1)
    weights = torch.exp(-0.5 * (t / sigma) ** 2)
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    padded = F.pad(x, (half, half, half, half), mode="reflect").reshape(1, n * c, height + 2 * half,
                                                                       width + 2 * half)
    out = F.conv2d(padded, weights.view(n * c, 1, 1, kernel_size), groups=n * c)
    out = F.conv2d(out, weights.view(n * c, 1, kernel_size, 1), groups=n * c)
    return out.view(n, c, height, width)


def solarize(x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    return torch.where(active.view(-1, 1, 1, 1) & (x >= SOLARIZE_THRESHOLD), 1 - x, x)
