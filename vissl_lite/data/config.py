"""Schema of the ``data`` config section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class DataConfig:
    name: str = "imagefolder"         # cifar10 | cifar100 | stl10 | imagefolder (folder or .tar[.gz])
    root: Optional[str] = None        # folder or archive; required
    train_split: str = "train"        # sub-folder (ImageFolder) or split name (torchvision)
    test_split: str = "test"
    download: bool = False            # torchvision data sets: fetch if missing (needs internet)
    image_size: Optional[int] = None  # null: the data set's native size (32 for CIFAR)
    in_memory: bool = False           # decode once into a uint8 tensor (cached on disk)
    cache_dir: Optional[str] = None   # uint8 cache; null: $VISSL_LITE_CACHE or ~/.cache/vissl_lite
    num_workers: Any = 4              # auto | DataLoader worker processes (auto: autoconf.py)
    subset: Optional[int] = None      # quick runs: fixed class-balanced random N samples per split
