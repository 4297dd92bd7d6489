"""Schema of the ``augment`` config section. Null means: the recipe's published default.

The defaults for each recipe and input size are resolved in ``augment/recipes.py`` (see its
docstring for the papers and repositories each value comes from); a run's ``config.yaml`` holds
them resolved (``augment/resolved.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass
class AugmentConfig:
    path: str = "cpu"                          # auto | cpu (DataLoader workers) | gpu (on device)
    global_size: Optional[int] = None          # null: the data's image size
    local_size: Optional[int] = None           # multi-crop local views (null: 96 at 224, size/2 below)
    num_local: Optional[int] = None            # override the method's number of local crops
    global_scale: Optional[List[float]] = None
    local_scale: Optional[List[float]] = None
    flip_p: Optional[float] = None
    jitter_p: Optional[float] = None
    jitter_strength: Optional[float] = None    # multiplies the recipe's (or `jitter`'s) four values
    jitter: Optional[List[float]] = None       # brightness, contrast, saturation, hue
    grayscale_p: Optional[float] = None
    blur_p: Optional[List[float]] = None       # one probability per global view (or one for all)
    local_blur_p: Optional[float] = None       # multi-crop local views
    blur_sigma: Optional[List[float]] = None   # (min, max) of the Gaussian's sigma in pixels
    solarize_p: Optional[List[float]] = None   # one probability per global view (or one for all)
    interpolation: Optional[str] = None        # bilinear | bicubic resizing of every view (null:
    #                                            the recipe's: bicubic for MAE, bilinear otherwise)
    crop: Optional[str] = None                 # global views: rrc (random resized, default) | gcc |
    #                                            cgcc | mgcc (Gaussian-centred, augment/crops.py)
    crop_frac: Optional[float] = None          # gcc/cgcc/mgcc: crop side / image side (fixed size)
    crop_alpha: Optional[float] = None         # gcc/cgcc/mgcc: std of the crop centre / image side
    crop_shift: Optional[List[float]] = None   # mgcc: the centre's mean moves by U(+-a H, +-b W)
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
