"""The CPU view pipeline: PIL operations on uint8 images, one image at a time in DataLoader workers.

Each view is the recipe's composition (``recipes.py``): random resized crop, flip, colour jitter
in a random order, grayscale, Gaussian blur, solarisation, normalisation. The image stays a PIL
``RGB`` image through every op (uint8 C code) and becomes a float tensor once, at the end, where
it is normalised in place.

Random numbers: each view draws one float64 tensor of 36 uniforms from torch's global RNG (which
``data/workers.py`` seeds per sample, so views are a function of the seed and resumed runs stay
bitwise equal), laid out as the GPU path's ``GPUViews.draw``: 22 for the crop box (10 tries of
area and log-aspect, then the position; ``boxes.sample_crop_boxes``), then flip, jitter, gray,
blur, solarise, four jitter factors, sigma and four numbers whose argsort is the jitter order.
``view_draws`` turns them into parameters with the GPU path's formulas, in Python scalars (a test
holds the two equal), so both paths sample the same distributions.

Ops: those of torchvision's colour functions on PIL images (what lightly's transforms run, and
the tests hold them equal): brightness, contrast and saturation are ``ImageEnhance`` blends with
black, the rounded mean gray level and the gray image; hue shifts the H band of PIL's 8-bit HSV by
int(shift * 255); grayscale is PIL's ITU-R 601 ``L``; solarisation at 128. The blur is PIL's
``GaussianBlur(radius=sigma)`` (three extended box blurs of standard deviation sigma, what DINO's
and lightly's code use) where the GPU path's kernel (10% of the view) spans +-3 sigma, i.e. where
that kernel is the untruncated Gaussian; where it truncates it (small views, large sigma) the
exact truncated kernel runs (torchvision's ``gaussian_blur``), as on the GPU path.

Why (measured on the 2-core machine, one thread, 224-px views of 256-px JPEGs unless said): the
previous pipeline converted to a tensor first and ran torchvision v2 ops on it: ``ColorJitter``
took 4.2 ms a view against 1.5 ms on the PIL image (hue 3.6 against 1.1 ms), the 23-tap blur
6.1 ms against PIL's 1.1 ms, grayscale 77 against 48 us. At 32 px the Python overhead per op is
the cost: v2's ``RandomResizedCrop`` took 29 us against 10 us for the PIL resize it runs, its
``ColorJitter`` 133 us against 88 us for its four PIL functions, and ``ImageOps.solarize`` 38 us
(a Python table each call) against 4 us for ``min(x, 255 - x)``; so the ops here are plain calls
and one RNG call per view. Two views per image (loaded machine, same runs): 7.3 against lightly's
9.5-9.8 ms at 224 px and 0.28 against 0.96 ms at 32 px (old: 18 and 1.6 ms); end to end with 2
DataLoader workers 1.17-1.40x lightly's images/s at 224 px and 2.3-3.0x at 32 px
(docs/benchmarks.md).
"""
from __future__ import annotations

import math
import operator
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageChops, ImageFilter
from torchvision.transforms.v2 import functional as TF

from vissl_lite.augment.boxes import CROP_TRIES, CroppedViews
from vissl_lite.augment.crops import sample_gaussian_boxes
from vissl_lite.augment.recipes import ViewParams, resolve_views
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.errors import AugmentError

DRAWS = 2 * CROP_TRIES + 2 + 14  # uniforms per view: crop box, then GPUViews.draw's 14 columns
PIL_BLUR_SIGMAS = 3.0     # PIL's Gaussian blur where the kernel's half-width is >= 3 sigma

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


class ViewDraw(NamedTuple):
    """The random parameters of one view of one image (``GPUViews.params_from``'s, per row)."""

    box: Tuple[int, int, int, int]      # top, left, h, w
    flip: bool
    jitter: bool
    factors: Tuple[float, float, float, float]  # brightness, contrast, saturation, hue shift
    order: Tuple[int, ...]              # the four jitter ops in the order they run
    gray: bool
    blur: bool
    sigma: float                        # 0 where no blur
    solarize: bool


def crop_box(u: Sequence[float], height: int, width: int, scale: Tuple[float, float],
             ratio: Tuple[float, float]) -> Tuple[int, int, int, int]:
    """``boxes.sample_crop_boxes`` for one row of 22 uniforms: the first of 10 (area, log-aspect)
    tries that fits, else the centred box of the extreme allowed aspect; ``round`` is half-even
    like ``torch.round``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(CROP_TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * t + 1])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            pos = u[2 * CROP_TRIES:]
            return (math.floor(pos[0] * (height - h + 1)), math.floor(pos[1] * (width - w + 1)),
                    h, w)
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def view_draws(view: ViewParams, u: Sequence[float], box: Tuple[int, int, int, int]) -> ViewDraw:
    """The parameters from the 14 uniforms ``u`` (columns as ``GPUViews.draw``) and a box."""
    bri, con, sat, hue = view.jitter
    ranges = ((max(0.0, 1 - bri), 1 + bri), (max(0.0, 1 - con), 1 + con),
              (max(0.0, 1 - sat), 1 + sat), (-hue, hue))
    blur = u[3] < view.blur_p
    sigma = view.blur_sigma[0] + (view.blur_sigma[1] - view.blur_sigma[0]) * u[9]
    return ViewDraw(
        box=box, flip=u[0] < view.flip_p, jitter=u[1] < view.jitter_p,
        factors=tuple(lo + (hi - lo) * u[5 + i] for i, (lo, hi) in enumerate(ranges)),
        order=tuple(sorted(range(4), key=lambda i: u[10 + i])), gray=u[2] < view.grayscale_p,
        blur=blur, sigma=sigma if blur else 0.0, solarize=u[4] < view.solarize_p)


def brightness(image: Image.Image, factor: float) -> Image.Image:
    """``ImageEnhance.Brightness``: a blend with black (factor 0)."""
    return Image.blend(Image.new("RGB", image.size), image, factor)


def contrast(image: Image.Image, factor: float) -> Image.Image:
    """``ImageEnhance.Contrast``: a blend with the image's mean gray level, rounded."""
    histogram = image.convert("L").histogram()
    mean = int(sum(map(operator.mul, histogram, range(256))) / (image.width * image.height) + 0.5)
    return Image.blend(Image.new("RGB", image.size, (mean,) * 3), image, factor)


def saturation(image: Image.Image, factor: float) -> Image.Image:
    """``ImageEnhance.Color``: a blend with the gray image (PIL's ITU-R 601 ``L``)."""
    return Image.blend(image.convert("L").convert("RGB"), image, factor)


def hue(image: Image.Image, shift: float) -> Image.Image:
    """torchvision's PIL ``adjust_hue``: the H band (256 steps a turn) moved by int(shift * 255)."""
    hsv = bytearray(image.convert("HSV").tobytes())
    band = np.frombuffer(hsv, dtype=np.uint8)[0::3]
    band += np.uint8(int(shift * 255) % 256)      # in place, wrapping around the circle
    return Image.frombytes("HSV", image.size, hsv).convert("RGB")


def solarize(image: Image.Image) -> Image.Image:
    """``ImageOps.solarize(image, 128)``: x < 128 ? x : 255 - x, i.e. min(x, 255 - x)."""
    return ImageChops.darker(image, ImageChops.invert(image))


JITTER_OPS = (brightness, contrast, saturation, hue)
_IDENTITY = (1.0, 1.0, 1.0, 0.0)


def as_rgb(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image, a uint8 (C, H, W) tensor or an (H, W[, C]) uint8 array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3:
        return TF.to_pil_image(image).convert("RGB")
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return Image.fromarray(image).convert("RGB")
    kind = f"{type(image).__name__} {getattr(image, 'dtype', '')}".strip()
    raise AugmentError(f"CPU views take PIL images or uint8 (C, H, W) tensors, got {kind}; "
                       f"convert the data set's images to uint8")


class ViewPipeline:
    """``PIL RGB image -> normalised float (3, size, size)`` for one ``ViewParams``."""

    def __init__(self, view: ViewParams):
        self.view = view
        self.resample = _RESAMPLE[view.interpolation]
        std = torch.tensor(view.std, dtype=torch.float32).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(view.mean, dtype=torch.float32).view(3, 1, 1) / std
        self.jitter_ops = [i for i in range(4) if view.jitter[i] > 0]

    def draw(self, height: int, width: int) -> ViewDraw:
        v = self.view
        u = torch.rand(DRAWS, dtype=torch.float64).tolist()
        if v.crop == "rrc":
            box = crop_box(u[:DRAWS - 14], height, width, v.scale, v.ratio)
        else:
            box = tuple(sample_gaussian_boxes(1, height, width, v.crop, v.crop_frac, v.crop_alpha,
                                              v.crop_shift)[0].tolist())
        return view_draws(v, u[DRAWS - 14:], box)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.render(image, self.draw(image.height, image.width))

    def render(self, image: Image.Image, d: ViewDraw) -> torch.Tensor:
        v = self.view
        top, left, h, w = d.box
        image = image.resize((v.size, v.size), self.resample, box=(left, top, left + w, top + h))
        if d.flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if d.jitter and self.jitter_ops:
            for op in d.order:
                if op in self.jitter_ops and d.factors[op] != _IDENTITY[op]:
                    image = JITTER_OPS[op](image, d.factors[op])
        if d.gray:
            image = image.convert("L").convert("RGB")
        if d.blur and d.sigma > 0:
            if v.blur_kernel // 2 >= PIL_BLUR_SIGMAS * d.sigma:
                image = image.filter(ImageFilter.GaussianBlur(d.sigma))
            else:
                image = TF.gaussian_blur(image, [v.blur_kernel] * 2, [d.sigma] * 2)
        if d.solarize:
            image = solarize(image)
        return to_normalized_tensor(image, self.scale, self.shift)


def to_normalized_tensor(image: Image.Image, scale: torch.Tensor,
                         shift: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` as ``x * scale + shift``, float32 (3, H, W), contiguous."""
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    out = torch.empty(3, image.height, image.width)
    out.copy_(pixels.view(image.height, image.width, 3).permute(2, 0, 1))
    return out.mul_(scale).add_(shift)


class CPUViews:
    """Callable ``image -> [view, ...]`` (globals first, then locals), or ``CroppedViews`` (each
    view's crop box a (5,) tensor) with ``crop_boxes``; picklable for workers."""

    def __init__(self, views: List[ViewParams], crop_boxes: bool = False):
        self.views = views
        self.pipelines = [ViewPipeline(v) for v in views]
        self.crop_boxes = crop_boxes

    def __call__(self, image):
        image = as_rgb(image)
        if not self.crop_boxes:
            return [p(image) for p in self.pipelines]
        views, boxes = [], []
        for p in self.pipelines:
            d = p.draw(image.height, image.width)
            views.append(p.render(image, d))
            boxes.append(torch.tensor([*d.box, float(d.flip)], dtype=torch.float32))
        return CroppedViews(views, boxes)

    def __repr__(self) -> str:
        sizes = ", ".join(str(v.size) for v in self.views)
        return f"CPUViews({len(self.views)} views: {sizes})"


def build_cpu_views(spec: ViewSpec, aug_cfg: Any = None, image_size: int = 224, *,
                    dataset: Optional[str] = None) -> CPUViews:
    """The CPU pipeline for ``spec``; ``aug_cfg`` is the ``augment`` section (null = defaults).

    ``dataset`` (e.g. "cifar10") picks the normalisation statistics when ``augment.mean/std`` are
    null; without it small inputs get CIFAR-10's and larger ones ImageNet's.
    """
    return CPUViews(resolve_views(spec, aug_cfg, image_size, dataset), spec.crop_boxes)
