"""Schema of the ``data`` config section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


#: data sets that need no data.root: they live in $VISSL_LITE_DATA (and download there)
DEFAULT_ROOT_DATASETS = ("cifar10", "cifar100", "stl10")


@dataclass
class DataConfig:
    name: str = "imagefolder"         # imagefolder | folder (unlabelled) | cifar10 | cifar100 | stl10
    root: Optional[str] = None        # folder or .tar[.gz]; torchvision sets: null = $VISSL_LITE_DATA
    train_split: str = "train"        # sub-folder (ImageFolder) or split name (torchvision)
    test_split: str = "test"
    download: bool = False            # torchvision data sets: fetch if missing (needs internet)
    on_corrupt: str = "error"         # error: stop at an unreadable image | skip: warn, count, go on
    image_size: Optional[int] = None  # null: the data set's native size (32 for CIFAR)
    in_memory: bool = False           # decode once into a uint8 tensor (cached on disk)
    gpu_decode: bool = False          # augment.path=gpu: workers read bytes, decode_jpeg on device
    cache_dir: Optional[str] = None   # uint8 cache; null: $VISSL_LITE_CACHE or ~/.cache/vissl_lite
    num_workers: Any = 4              # auto | DataLoader worker processes (auto: autoconf.py)
    shuffle_buffer: int = 1000        # data.name=shards: samples in each worker's shuffle buffer
    subset: Optional[int] = None      # quick runs: fixed class-balanced random N samples per split
