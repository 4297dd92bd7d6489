"""The GPU view pipeline: whole batches augmented on the device, random parameters per sample.

On a fast accelerator the per-image CPU pipeline becomes the bottleneck of SSL training (two or
ten views of every image per step). Here the data set is held as uint8 tensors on the device and
each batch is augmented with a handful of batched kernels: every sample gets its own crop box,
flip, colour-jitter factors and order, grayscale, blur sigma and solarisation, drawn from the same
distributions as the torchvision pipeline in ``cpu.py``:

- crops: boxes sampled exactly like ``RandomResizedCrop.get_params`` (10 tries of area scale and
  log-aspect, integer boxes, centre-crop fallback), vectorised over the batch, then one
  ``affine_grid`` + ``grid_sample`` per view that resizes (and flips) all boxes at once;
- colour jitter: torchvision's ``ColorJitter`` semantics, including a random order of the four
  ops drawn per sample; brightness, contrast and saturation are blends with a per-sample reference
  (zero, mean gray level, gray image) done for all samples at once, hue through HSV computed for
  all samples at each of the four steps and kept where it is that sample's turn;
- grayscale (ITU-R 601 weights), Gaussian blur with a per-sample sigma (separable depthwise
  convolution, reflect padding, kernel of 10% of the view size), solarisation at 128/255.

Why our own: torchvision.transforms.v2 and kornia's batch mode draw one set of parameters per
call or loop over samples, and DALI is a separate runtime with its own samplers; none applies
per-sample random parameters to a whole batch in a few kernels while sampling torchvision's
distributions. Differences from the CPU path, all small: resizing is bilinear (bicubic for MAE)
without antialiasing (crops are mostly upsampled, so this only matters when a crop shrinks by more
than ~2x), bicubic's outer pixel ring may read the pixels just outside the crop box, and the ops
run in float instead of rounding to uint8 after each op.

The same code runs on CPU tensors (it is tested there) and on CUDA. A call never waits for the
device: probabilities, ranges, gray weights and mean/std are Python numbers, per-sample choices
are ``torch.where`` over the batch, and shapes depend on the configuration only, so ``forward``
(without a generator) compiles as one graph; ``draw`` + ``render`` split off the random draws for
a seeded ``torch.Generator``, which dynamo cannot trace (tests/test_step_hygiene.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.crops import draw_gaussian_box_randoms, gaussian_boxes
from vissl_lite.augment.recipes import ViewParams, resolve_views
from vissl_lite.augment.spec import ViewSpec

SOLARIZE_THRESHOLD = 128 / 255
CROP_TRIES = 10                      # torchvision's RandomResizedCrop tries 10 boxes
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _rand(shape, generator: Optional[torch.Generator], device, dtype=torch.float32):
    """Uniform draws on the generator's device (so a seeded CPU generator gives the same views on
    any device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


# ---------------------------------------------------------------------------- crop boxes ------

def sample_crop_boxes(n: int, height: int, width: int, scale: Tuple[float, float],
                      ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                      generator: Optional[torch.Generator] = None, device=None,
                      tries: int = 10, uniforms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``n`` boxes (top, left, h, w) as ``RandomResizedCrop.get_params`` draws them, vectorised.

    ``uniforms`` (n, 2 * tries + 2) float64 in [0, 1) replaces the draws (``GPUViews.draw``)."""
    area = height * width
    if uniforms is None:
        uniforms = _rand((n, 2 * tries + 2), generator, device, torch.float64)
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


# ---------------------------------------------------------------------------- colour ops ------

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


# ---------------------------------------------------------------------------- pipeline --------

@dataclass
class BatchParams:
    """The random parameters of ``n`` samples of a group of views (rows are view-major)."""

    boxes: torch.Tensor        # (n, 4) long: top, left, h, w
    flip: torch.Tensor         # (n,) bool
    jitter: torch.Tensor       # (n,) bool: colour jitter applied
    factors: torch.Tensor      # (n, 4): brightness, contrast, saturation factors, hue shift
    order: torch.Tensor        # (n, 4) long: per-sample order of the four jitter ops
    gray: torch.Tensor         # (n,) bool
    blur: torch.Tensor         # (n,) bool
    sigma: torch.Tensor        # (n,) blur sigma (0 where no blur)
    solarize: torch.Tensor     # (n,) bool


@dataclass
class _Group:
    view_ids: List[int]
    view: ViewParams           # the shared parameters (sizes, scales, strengths)
    probs: Dict[str, List[float]]


class GPUViews(nn.Module):
    """``forward(images uint8 (B,3,H,W), generator=None) -> [view (B,3,h,w) float, ...]``.

    Views that differ only in their probabilities (SimCLR's two views, DINO's local crops, BYOL's
    asymmetric pair) are processed as one batch of ``len(group) * B`` rows.
    """

    def __init__(self, views: List[ViewParams]):
        super().__init__()
        self.views = views
        groups: Dict[Any, _Group] = {}
        for i, v in enumerate(views):
            g = groups.setdefault(v.group_key(), _Group([], v, {k: [] for k in (
                "flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p")}))
            g.view_ids.append(i)
            for k in g.probs:
                g.probs[k].append(getattr(v, k))
        self.groups = list(groups.values())

    def draw(self, batch: int, device=None,
             generator: Optional[torch.Generator] = None) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """All the random numbers of one call, two uniform tensors per group: (n, 22) float64 for
        the crop boxes and (n, 14) float32 for the rest. Drawn in a fixed order (deterministic
        under a seed); everything after this is a pure function of them (see ``render``)."""
        out = []
        for g in self.groups:
            n = len(g.view_ids) * batch
            if g.view.crop == "rrc":
                box_u = _rand((n, 2 * CROP_TRIES + 2), generator, device, torch.float64)
            else:                                       # label-preserving crops (crops.py)
                box_u = torch.cat(draw_gaussian_box_randoms(n, generator, device), dim=1)
            out.append((box_u, _rand((n, 14), generator, device)))
        return out

    def params_from(self, draws: List[Tuple[torch.Tensor, torch.Tensor]], batch: int,
                    height: int, width: int) -> List[BatchParams]:
        """One ``BatchParams`` per group from the draws of ``draw``. Probabilities and ranges are
        Python numbers (no tensor is built from host data); a per-view probability is compared
        with the rows of that view."""
        out = []
        for g, (box_u, u) in zip(self.groups, draws):
            v = g.view

            def happens(column: int, name: str) -> torch.Tensor:
                probs = g.probs[name]
                if len(set(probs)) == 1:
                    return u[:, column] < probs[0]
                return torch.cat([u[i * batch:(i + 1) * batch, column] < p
                                  for i, p in enumerate(probs)])

            bri, con, sat, hue = v.jitter
            ranges = ((max(0.0, 1 - bri), 1 + bri), (max(0.0, 1 - con), 1 + con),
                      (max(0.0, 1 - sat), 1 + sat), (-hue, hue))
            factors = torch.stack([lo + (hi - lo) * u[:, 5 + i] for i, (lo, hi) in enumerate(ranges)],
                                  dim=1)
            blur = happens(3, "blur_p")
            sigma = v.blur_sigma[0] + (v.blur_sigma[1] - v.blur_sigma[0]) * u[:, 9]
            if v.crop == "rrc":
                boxes = sample_crop_boxes(u.shape[0], height, width, v.scale, v.ratio,
                                          tries=CROP_TRIES, uniforms=box_u)
            else:
                boxes = gaussian_boxes(box_u[:, :2], box_u[:, 2:], height, width, v.crop,
                                       v.crop_frac, v.crop_alpha, v.crop_shift)
            out.append(BatchParams(
                boxes=boxes,
                flip=happens(0, "flip_p"), jitter=happens(1, "jitter_p"), factors=factors,
                order=u[:, 10:14].argsort(dim=1), gray=happens(2, "grayscale_p"), blur=blur,
                sigma=torch.where(blur, sigma, torch.zeros_like(sigma)),
                solarize=happens(4, "solarize_p")))
        return out

    def sample_params(self, batch: int, height: int, width: int, device=None,
                      generator: Optional[torch.Generator] = None) -> List[BatchParams]:
        """One ``BatchParams`` per group, drawn in a fixed order (deterministic under a seed)."""
        return self.params_from(self.draw(batch, device, generator), batch, height, width)

    def apply(self, images: torch.Tensor, params: List[BatchParams]) -> List[torch.Tensor]:
        """Render the views of ``images`` (uint8 or float in [0, 1]) with given parameters."""
        batch = images.shape[0]
        source = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        views: List[Optional[torch.Tensor]] = [None] * len(self.views)
        for g, p in zip(self.groups, params):
            v = g.view
            x = torch.empty(len(g.view_ids) * batch, 3, v.size, v.size, device=source.device)
            for slot in range(len(g.view_ids)):
                rows = slice(slot * batch, (slot + 1) * batch)
                x[rows] = resized_crop(source, p.boxes[rows], v.size, p.flip[rows], v.interpolation)
            if any(g.probs["jitter_p"]) and any(v.jitter):
                x = color_jitter(x, p.factors, p.order, p.jitter.to(x.device), v.jitter[3] > 0)
            if any(g.probs["grayscale_p"]):
                x = grayscale(x, p.gray.to(x.device))
            if any(g.probs["blur_p"]):
                x = gaussian_blur(x, p.sigma, v.blur_kernel)
            if any(g.probs["solarize_p"]):
                x = solarize(x, p.solarize.to(x.device))
            for c in range(3):                      # normalise with Python-scalar mean and std
                x[:, c].sub_(v.mean[c]).div_(v.std[c])
            for slot, i in enumerate(g.view_ids):
                views[i] = x[slot * batch:(slot + 1) * batch]
        return views  # type: ignore[return-value]

    @torch.no_grad()
    def render(self, images: torch.Tensor,
               draws: List[Tuple[torch.Tensor, torch.Tensor]]) -> List[torch.Tensor]:
        """The views of ``images`` for the random numbers ``draws`` (from ``draw``): the part to
        ``torch.compile`` when a seeded ``torch.Generator`` is used (dynamo cannot trace one)."""
        return self.apply(images, self.params_from(draws, images.shape[0], images.shape[2],
                                                   images.shape[3]))

    @torch.no_grad()
    def forward(self, images: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"GPU views expect a batch of RGB images (B, 3, H, W), got shape "
                             f"{tuple(images.shape)}")
        return self.render(images, self.draw(images.shape[0], images.device, generator))

    def extra_repr(self) -> str:
        return f"{len(self.views)} views: " + ", ".join(str(v.size) for v in self.views)


def build_gpu_views(spec: ViewSpec, aug_cfg: Any = None, image_size: int = 224, *,
                    dataset: Optional[str] = None) -> GPUViews:
    """The batched pipeline for ``spec`` (same parameters as ``build_cpu_views``)."""
    return GPUViews(resolve_views(spec, aug_cfg, image_size, dataset))
