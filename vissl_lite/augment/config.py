"""Schema of the ``augment`` config section. Null means: the recipe's published default."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass
class AugmentConfig:
    path: str = "cpu"                          # cpu (DataLoader workers) | gpu (batched on device)
    global_size: Optional[int] = None          # null: the data's image size
    local_size: Optional[int] = None           # multi-crop local views
    num_local: Optional[int] = None            # override the method's number of local crops
    global_scale: Optional[List[float]] = None
    local_scale: Optional[List[float]] = None
    flip_p: Optional[float] = None
    jitter_p: Optional[float] = None
    jitter_strength: Optional[float] = None
    grayscale_p: Optional[float] = None
    blur_p: Optional[List[float]] = None       # one probability per global view
    solarize_p: Optional[List[float]] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
