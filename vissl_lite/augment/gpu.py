"""The GPU view pipeline: whole batches augmented on the device, random parameters per sample.

On a fast accelerator the per-image CPU pipeline becomes the bottleneck of SSL training (two or
ten views of every image per step). Here the data set is held as uint8 tensors on the device and
each batch is augmented with a handful of batched kernels: every sample gets its own crop box,
flip, colour-jitter factors and order, grayscale, blur sigma and solarisation, drawn from the same
distributions as the per-image PIL pipeline in ``cpu.py`` (it reads the same uniforms):

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
than ~2x), bicubic's outer pixel ring may read the pixels just outside the crop box, the ops
run in float instead of rounding to uint8 after each op (the CPU path's hue goes through PIL's
8-bit HSV), and the CPU path blurs with PIL's box approximation of the Gaussian where the kernel
spans +-3 sigma.

The same code runs on CPU tensors (it is tested there) and on CUDA. A call never waits for the
device: probabilities, ranges, gray weights and mean/std are Python numbers, per-sample choices
are ``torch.where`` over the batch, and shapes depend on the configuration only, so ``forward``
(without a generator) compiles as one graph; ``draw`` + ``render`` split off the random draws for
a seeded ``torch.Generator``, which dynamo cannot trace (tests/test_step_hygiene.py).

The crop boxes and the batched resize are in ``boxes.py``, the colour ops in ``color.py``; this
module draws the parameters and runs the pipeline (``GPUViews``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from vissl_lite.augment.boxes import (CROP_TRIES, CroppedViews, resized_crop, sample_crop_boxes,
                                      uniform, view_boxes)
from vissl_lite.augment.color import (adjust_hue, color_jitter, gaussian_blur, grayscale,
                                      solarize)
from vissl_lite.augment.crops import draw_gaussian_box_randoms, gaussian_boxes
from vissl_lite.augment.recipes import ViewParams, resolve_views
from vissl_lite.augment.spec import ViewSpec

__all__ = ["GPUViews", "BatchParams", "build_gpu_views", "sample_crop_boxes", "resized_crop",
           "adjust_hue", "color_jitter", "gaussian_blur", "grayscale", "solarize"]


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
    """``forward(images uint8 (B,3,H,W), generator=None) -> [view (B,3,h,w) float, ...]``, or
    ``CroppedViews`` (the views and their crop boxes) with ``crop_boxes``.

    Views that differ only in their probabilities (SimCLR's two views, DINO's local crops, BYOL's
    asymmetric pair) are processed as one batch of ``len(group) * B`` rows.
    """

    def __init__(self, views: List[ViewParams], crop_boxes: bool = False):
        super().__init__()
        self.views = views
        self.crop_boxes = crop_boxes
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
                box_u = uniform((n, 2 * CROP_TRIES + 2), generator, device, torch.float64)
            else:                                       # label-preserving crops (crops.py)
                box_u = torch.cat(draw_gaussian_box_randoms(n, generator, device), dim=1)
            out.append((box_u, uniform((n, 14), generator, device)))
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

    def boxes(self, params: List[BatchParams], batch: int) -> List[torch.Tensor]:
        """Each view's (B, 5) crop box and flip (``CroppedViews.boxes``) from its group's params."""
        out: List[Optional[torch.Tensor]] = [None] * len(self.views)
        for g, p in zip(self.groups, params):
            rows = view_boxes(p.boxes, p.flip)
            for slot, i in enumerate(g.view_ids):
                out[i] = rows[slot * batch:(slot + 1) * batch]
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def render(self, images: torch.Tensor, draws: List[Tuple[torch.Tensor, torch.Tensor]]):
        """The views of ``images`` for the random numbers ``draws`` (from ``draw``): the part to
        ``torch.compile`` when a seeded ``torch.Generator`` is used (dynamo cannot trace one)."""
        params = self.params_from(draws, images.shape[0], images.shape[2], images.shape[3])
        views = self.apply(images, params)
        if self.crop_boxes:
            return CroppedViews(views, self.boxes(params, images.shape[0]))
        return views

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"GPU views expect a batch of RGB images (B, 3, H, W), got shape "
                             f"{tuple(images.shape)}")
        return self.render(images, self.draw(images.shape[0], images.device, generator))

    def extra_repr(self) -> str:
        return f"{len(self.views)} views: " + ", ".join(str(v.size) for v in self.views)


def build_gpu_views(spec: ViewSpec, aug_cfg: Any = None, image_size: int = 224, *,
                    dataset: Optional[str] = None) -> GPUViews:
    """The batched pipeline for ``spec`` (same parameters as ``build_cpu_views``)."""
    return GPUViews(resolve_views(spec, aug_cfg, image_size, dataset), spec.crop_boxes)
