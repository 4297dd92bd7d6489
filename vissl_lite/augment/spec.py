"""``ViewSpec``: what a method asks of the augmentation pipeline.

A method names a recipe (the published augmentation of its paper) and how many global and local
views it needs; the sizes, scales and probabilities come from the ``augment`` section of the
config, whose unset (null) values fall back to the recipe's published defaults for the input size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2)
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)


@dataclass(frozen=True)
class Recipe:
    """One paper's augmentation defaults; ``augment.*`` config values override them.

    ``blur_p`` and ``solarize_p`` are per global view (one value: every view); blur applies to
    large inputs only (> 64 px). ``small_jitter_strength`` scales the colour jitter on small
    inputs. Sources are in ``recipes.py``'s module docstring.
    """

    global_scale: Tuple[float, float]
    jitter: Tuple[float, float, float, float] = BYOL_JITTER
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    small_jitter_strength: float = 1.0
    blur_p: Tuple[float, ...] = (0.0,)
    local_blur_p: float = 0.0
    solarize_p: Tuple[float, ...] = (0.0,)
    flip_p: float = 0.5
    interpolation: str = "bilinear"


#: the one table of recipe defaults: a method's ViewSpec names a row
RECIPE_DEFAULTS = {
    "simclr": Recipe((0.08, 1.0), SIMCLR_JITTER, jitter_p=0.8, grayscale_p=0.2,
                     small_jitter_strength=0.5, blur_p=(0.5,), local_blur_p=0.5),
    "byol": Recipe((0.08, 1.0), BYOL_JITTER, jitter_p=0.8, grayscale_p=0.2, blur_p=(1.0, 0.1),
                   local_blur_p=0.5, solarize_p=(0.0, 0.2)),
    "dino": Recipe((0.4, 1.0), BYOL_JITTER, jitter_p=0.8, grayscale_p=0.2, blur_p=(1.0, 0.1),
                   local_blur_p=0.5, solarize_p=(0.0, 0.2)),
    "mae": Recipe((0.2, 1.0), interpolation="bicubic"),
    "ijepa": Recipe((0.3, 1.0), flip_p=0.0),
}
RECIPES = tuple(RECIPE_DEFAULTS)


@dataclass(frozen=True)
class ViewSpec:
    recipe: str = "simclr"
    num_global: int = 2
    num_local: int = 0
    #: the method reads where each view was cut from: the batch then holds ``boxes``, one (B, 5)
    #: float tensor per view (top, left, height, width in source pixels, 1 where mirrored)
    crop_boxes: bool = False

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe '{self.recipe}'; known: {', '.join(RECIPES)}")
        if self.num_global < 1 or self.num_local < 0:
            raise ValueError(f"a ViewSpec needs >= 1 global view and >= 0 local views, got {self}")

    @property
    def num_views(self) -> int:
        return self.num_global + self.num_local
