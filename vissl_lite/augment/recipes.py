"""Resolve a ``ViewSpec`` and the ``augment`` config into concrete per-view parameters.

Both pipelines (``cpu.py`` with PIL ops per image, ``gpu.py`` batched on the device) read the
same ``ViewParams``, so they sample the same distributions. A null config value falls back to
the recipe's published default for the input size; "small" means inputs of at most 64 pixels
(CIFAR, Tiny-ImageNet), "large" everything else (STL-10 at 96, ImageNet at 224).

Published defaults followed (large inputs):
- simclr  SimCLR (Chen et al. 2020), App. A: crop scale (0.08, 1), flip 0.5, colour jitter
          (0.8, 0.8, 0.8, 0.2) x strength 1.0 with p 0.8, grayscale 0.2, Gaussian blur p 0.5 with
          sigma in (0.1, 2.0) and a kernel of 10% of the view size, no solarisation.
- byol    BYOL (Grill et al. 2020), Table 6: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2,
          blur p (1.0, 0.1), solarisation p (0.0, 0.2): asymmetric between the two views.
- dino    DINO (Caron et al. 2021), facebookresearch/dino ``DataAugmentationDINO``: BYOL's colour
          ops; global crops scale (0.4, 1) at the input size, blur p (1.0, 0.1), solarise
          p (0.0, 0.2); local crops 96 px at 224 input, scale (0.05, 0.4), blur p 0.5.
- mae     MAE (He et al. 2022), facebookresearch/mae ``main_pretrain.py``: crop scale (0.2, 1)
          with bicubic resampling, flip 0.5, nothing else.
- ijepa   I-JEPA (Assran et al. 2023), facebookresearch/ijepa configs: crop scale (0.3, 1) only
          (their ``use_horizontal_flip``, colour distortion and blur are off).

Small inputs (<= 64 px):
- No Gaussian blur for any recipe (SimCLR App. B.9 drops it on CIFAR; solo-learn's and
  lightly's CIFAR benchmarks set its probability to 0).
- simclr  colour-jitter strength 0.5, i.e. (0.4, 0.4, 0.4, 0.1): SimCLR App. B.9 and lightly's
          CIFAR-10 benchmark ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0)``.
          (solo-learn's cifar ``symmetric.yaml`` uses strength 1.0 and blur 0.5 instead; set
          ``augment.jitter_strength=1.0`` to follow it.)
- byol    solo-learn's cifar ``asymmetric.yaml``: jitter (0.4, 0.4, 0.2, 0.1), solarise (0, 0.2).
- dino    the same colour ops as BYOL on CIFAR; global crops at the input size with scale
          (0.4, 1), local crops at half the input size (16 px at 32) with scale (0.05, 0.4), as
          lightly's ``DINOTransform(global_crop_size=32, local_crop_size=16)``.
- mae / ijepa as for large inputs.

Resizing is bilinear but for MAE (bicubic); ``augment.interpolation=bicubic`` follows the sources
that resize bicubically (the BYOL, Barlow Twins, VICReg, DINO and DINOv2 ImageNet code).

Crops of the global views: random resized crops (``augment.crop=rrc``, the recipes above), or the
label-preserving Gaussian-centred crops of Hassan et al. 2025 (arXiv:2504.19824; ``gcc``,
``cgcc``, ``mgcc`` with ``augment.crop_frac`` and ``augment.crop_alpha``, see ``crops.py``).

Normalisation defaults to the data set's statistics: CIFAR-10 / CIFAR-100 when named (or, with no
name, CIFAR-10 for small inputs), ImageNet's otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from vissl_lite.augment.spec import RECIPE_DEFAULTS, ViewSpec
from vissl_lite.errors import AugmentConfigError

SMALL_INPUT = 64

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": IMAGENET_STATS,
}

CROP_MODES = ("rrc", "gcc", "cgcc", "mgcc")      # global views' crop (see crops.py)
INTERPOLATIONS = ("bilinear", "bicubic")          # resizing; both pipelines offer both
CROP_KEYS = ("crop", "crop_frac", "crop_alpha", "crop_shift")


@dataclass(frozen=True)
class ViewParams:
    """Everything needed to draw one view: the distributions both pipelines sample from."""

    size: int
    scale: Tuple[float, float]
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"              # bilinear | bicubic
    crop: str = "rrc"                            # rrc | gcc | cgcc | mgcc (see crops.py)
    crop_frac: float = 1.0                       # Gaussian-centred crops: fixed crop side / image side
    crop_alpha: float = 0.0                      # ... std of the crop centre / image side
    crop_shift: Tuple[float, float] = (0.0, 0.0)  # ... mgcc: range of the centre's mean
    flip_p: float = 0.5
    jitter_p: float = 0.0
    jitter: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness contrast saturation hue
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: Tuple[float, float, float] = IMAGENET_STATS[0]
    std: Tuple[float, float, float] = IMAGENET_STATS[1]

    @property
    def blur_kernel(self) -> int:
        """SimCLR's kernel of 10% of the view size, made odd (23 at 224, 9 at 96, 3 at 32)."""
        return max(3, int(0.1 * self.size) // 2 * 2 + 1)

    def group_key(self) -> tuple:
        """Views equal in all but their probabilities can be processed as one batch."""
        return replace(self, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                       solarize_p=0.0)


def default_mean_std(dataset: Optional[str], image_size: int) -> Tuple[tuple, tuple]:
    if dataset and dataset.lower() in DATASET_STATS:
        return DATASET_STATS[dataset.lower()]
    if dataset is None and image_size <= SMALL_INPUT:
        return DATASET_STATS["cifar10"]
    return IMAGENET_STATS


def _get(cfg: Any, key: str):
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        return cfg.get(key)
    return getattr(cfg, key, None)


def _fail(key: str, value, why: str):
    raise AugmentConfigError(f"augment.{key}={value!r}: {why}")


def _prob(key: str, value) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        _fail(key, value, "a probability must lie in [0, 1]")
    return value


def _pair(key: str, value, lo: float = 0.0, hi: float = math.inf) -> Tuple[float, float]:
    value = tuple(float(v) for v in value)
    if len(value) != 2 or not (lo < value[0] <= value[1] <= hi):
        _fail(key, list(value), f"expected [min, max] with {lo} < min <= max <= {hi}")
    return value  # type: ignore[return-value]


def _per_view(key: str, value, default: Sequence[float], n: int) -> List[float]:
    """A probability list given per global view; one value is broadcast to all views."""
    if value is None:
        value = default
    if isinstance(value, (int, float)):
        value = [value]
    value = [_prob(key, v) for v in value]
    if len(value) == 1:
        value = value * n
    if len(value) != n:
        _fail(key, value, f"give one probability per global view ({n}) or a single one")
    return value[:n]


def resolve_settings(spec: ViewSpec, aug_cfg: Any = None, image_size: int = 224,
                     dataset: Optional[str] = None) -> Dict[str, Any]:
    """Every ``augment`` key (but ``path``) with the value the views use: the config's where set,
    else the recipe's default for the input size. ``jitter`` is the base of the colour jitter,
    ``jitter_strength`` its factor; ``blur_p`` and ``solarize_p`` hold one value per global view;
    the Gaussian-centred crop keys are None with ``crop=rrc``."""
    if image_size is None or int(image_size) < 4:
        raise AugmentConfigError(f"image_size={image_size!r}: pass the data's image size (e.g. 32 "
                                 f"for CIFAR, 224 for ImageNet)")
    small = image_size <= SMALL_INPUT
    recipe = RECIPE_DEFAULTS[spec.recipe]
    num_local = _get(aug_cfg, "num_local")
    num_local = spec.num_local if num_local is None else int(num_local)
    if num_local < 0:
        _fail("num_local", num_local, "must be >= 0")

    global_size = int(_get(aug_cfg, "global_size") or image_size)
    local_default = 96 if global_size >= 160 else max(global_size // 2, 4)
    local_size = int(_get(aug_cfg, "local_size") or local_default)

    global_scale = _pair("global_scale", _get(aug_cfg, "global_scale") or recipe.global_scale, hi=1.0)
    local_scale = _pair("local_scale", _get(aug_cfg, "local_scale") or (0.05, 0.4), hi=1.0)

    base_jitter = recipe.jitter
    strength = recipe.small_jitter_strength if small else 1.0
    jitter = _get(aug_cfg, "jitter")
    if jitter is not None:
        jitter = tuple(float(v) for v in jitter)
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            _fail("jitter", list(jitter), "expected [brightness, contrast, saturation, hue] >= 0 "
                                          "with hue <= 0.5")
        base_jitter, strength = jitter, 1.0
    if _get(aug_cfg, "jitter_strength") is not None:
        strength = float(_get(aug_cfg, "jitter_strength"))
        if strength < 0:
            _fail("jitter_strength", strength, "must be >= 0")
    if base_jitter[3] * strength > 0.5:
        _fail("jitter_strength", strength, f"makes the hue jitter {base_jitter[3] * strength:.2f} "
                                           f"> 0.5")

    def p(key, default):
        value = _get(aug_cfg, key)
        return _prob(key, default if value is None else value)

    n_glob = spec.num_global
    blur_default = [0.0] if small else list(recipe.blur_p)
    local_blur_default = 0.0 if small else recipe.local_blur_p

    interpolation = _get(aug_cfg, "interpolation") or recipe.interpolation
    if interpolation not in INTERPOLATIONS:
        _fail("interpolation", interpolation, f"choose one of {', '.join(INTERPOLATIONS)}")

    mean, std = default_mean_std(dataset, image_size)
    mean = tuple(float(v) for v in (_get(aug_cfg, "mean") or mean))
    std = tuple(float(v) for v in (_get(aug_cfg, "std") or std))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        _fail("mean/std", (list(mean), list(std)), "give three values each, std > 0")

    crop = {"crop": "rrc", "crop_frac": None, "crop_alpha": None, "crop_shift": None}
    crop.update(_crop_options(aug_cfg))
    return dict(
        num_local=num_local, global_size=global_size, local_size=local_size,
        global_scale=global_scale, local_scale=local_scale,
        flip_p=p("flip_p", recipe.flip_p), jitter_p=p("jitter_p", recipe.jitter_p),
        jitter_strength=strength, jitter=base_jitter, grayscale_p=p("grayscale_p", recipe.grayscale_p),
        blur_p=_per_view("blur_p", _get(aug_cfg, "blur_p"), blur_default, n_glob),
        local_blur_p=p("local_blur_p", local_blur_default),
        blur_sigma=_pair("blur_sigma", _get(aug_cfg, "blur_sigma") or (0.1, 2.0)),
        solarize_p=_per_view("solarize_p", _get(aug_cfg, "solarize_p"), list(recipe.solarize_p),
                             n_glob),
        interpolation=interpolation, **crop, mean=mean, std=std)


def resolve_views(spec: ViewSpec, aug_cfg: Any = None, image_size: int = 224,
                  dataset: Optional[str] = None) -> List[ViewParams]:
    """The parameters of every view: ``spec.num_global`` globals, then the local views."""
    s = resolve_settings(spec, aug_cfg, image_size, dataset)
    common = dict(flip_p=s["flip_p"], jitter_p=s["jitter_p"],
                  jitter=tuple(v * s["jitter_strength"] for v in s["jitter"]),
                  grayscale_p=s["grayscale_p"], blur_sigma=s["blur_sigma"],
                  interpolation=s["interpolation"],
                  mean=s["mean"], std=s["std"])
    crop = {k: s[k] for k in CROP_KEYS} if s["crop"] != "rrc" else {}
    views = [ViewParams(size=s["global_size"], scale=s["global_scale"], blur_p=s["blur_p"][i],
                        solarize_p=s["solarize_p"][i], **crop, **common)
             for i in range(spec.num_global)]
    local = ViewParams(size=s["local_size"], scale=s["local_scale"], blur_p=s["local_blur_p"],
                       solarize_p=0.0, **common)
    return views + [local] * s["num_local"]


def _crop_options(aug_cfg: Any) -> dict:
    """The global views' crop: random resized (default) or Gaussian-centred (arXiv:2504.19824)."""
    mode = _get(aug_cfg, "crop") or "rrc"
    if mode not in CROP_MODES:
        _fail("crop", mode, f"choose one of {', '.join(CROP_MODES)}")
    if mode == "rrc":
        return {}
    frac, alpha = _get(aug_cfg, "crop_frac"), _get(aug_cfg, "crop_alpha")
    if frac is None or alpha is None:
        _fail("crop", mode, "Gaussian-centred crops need augment.crop_frac (crop side / image "
                            "side, e.g. 0.5) and augment.crop_alpha (centre spread, e.g. 0.2)")
    if not 0 < float(frac) <= 1 or float(alpha) < 0:
        _fail("crop_frac/crop_alpha", (frac, alpha), "need 0 < crop_frac <= 1 and crop_alpha >= 0")
    shift = _get(aug_cfg, "crop_shift")
    if mode == "mgcc" and shift is None:
        _fail("crop", mode, "mgcc needs augment.crop_shift: [a, b], the range of the centre's mean "
                            "as fractions of the image height and width")
    shift = tuple(float(v) for v in (shift or (0.0, 0.0)))
    if len(shift) != 2 or min(shift) < 0 or max(shift) > 0.5:
        _fail("crop_shift", list(shift), "expected [a, b] with 0 <= a, b <= 0.5")
    return dict(crop=mode, crop_frac=float(frac), crop_alpha=float(alpha), crop_shift=shift)
