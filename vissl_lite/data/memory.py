"""A whole split as one uint8 tensor ``(N, 3, H, W)``, decoded once and cached on disk.

Small data sets (CIFAR, STL-10, ImageNet-100 at low resolution) fit in GPU memory as uint8; the
batched GPU augmentation path then never touches a JPEG decoder or a DataLoader worker during
training (as in the "FFCV"/"airbench" style CIFAR loaders). ``load_uint8`` gives that tensor:

* torchvision CIFAR-10/100 and STL-10 already hold their pixels as a uint8 array: taken as is.
* ImageFolder folders and archives are decoded once, in parallel over DataLoader worker
  processes (``data.num_workers``), and saved as a ``.pt`` file in ``data.cache_dir`` (default
  ``$VISSL_LITE_CACHE`` or ``~/.cache/vissl_lite``). The file name holds a hash of the data
  set's path, split and size and of its contents' fingerprint (archive: size and mtime; folder:
  path, size and mtime of every image), so a changed data set is decoded again instead of being
  served stale; the stale file is removed. Written atomically (temporary file, then rename); a
  cache folder that cannot be written costs one warning line (the split is decoded again next
  time), never a partial file. Under ``torch.distributed`` the first process of each node decodes
  while the others wait. Decoding shows a progress bar (images, images/s).
* ``data.on_corrupt=skip``: unreadable images are left out of the tensor, counted and logged.

All images must have one size, unless ``data.image_size`` is set: then each image's shorter side
is resized to it (bicubic, antialiased) and the centre square is kept.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from functools import partial
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from vissl_lite import distributed as dist
from vissl_lite.data.archive import is_archive
from vissl_lite.data.config import DataConfig
from vissl_lite.data.datasets import as_data_config, split_name
from vissl_lite.data.decode import Split, decode_split
from vissl_lite.data.folders import ImageFiles, ImageFolder
from vissl_lite.data.subsets import subset_indices, targets_of
from vissl_lite.errors import DataError
from vissl_lite.registry import DATASETS

__all__ = ["load_uint8", "UInt8TensorDataset", "build_uint8_dataset", "default_cache_dir"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    if os.environ.get("VISSL_LITE_CACHE"):
        return Path(os.environ["VISSL_LITE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "vissl_lite"


def load_uint8(data_cfg: Any, split: str = "train") -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, 3, H, W), labels long (N,))`` of a split; ``data.subset`` applies.

    Same images, labels and order as ``build_dataset(data_cfg, split)``."""
    images, labels, _ = _load_split(as_data_config(data_cfg), split)
    return images, labels


def build_uint8_dataset(data_cfg: Any, split: str = "train",
                        transform: Optional[Callable] = None) -> "UInt8TensorDataset":
    """``load_uint8`` wrapped as a Dataset (for the CPU augmentation path reading from memory)."""
    return UInt8TensorDataset(*_load_split(as_data_config(data_cfg), split), transform=transform)


class UInt8TensorDataset(Dataset):
    """``dataset[i] -> (uint8 tensor (3, H, W) or transform(it), int label)`` from memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] = (),
                 transform: Optional[Callable] = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"expected uint8 images of shape (N, 3, H, W), got {images.dtype} "
                            f"{tuple(images.shape)}")
        if len(labels) != len(images):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.classes = list(classes)
        self.transform = transform

    @property
    def targets(self) -> List[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def _load_split(cfg: DataConfig, split: str) -> Split:
    name = split_name(cfg, split)
    images, labels, classes = _cached_decode(cfg, name)
    if cfg.subset is not None:
        keep = subset_indices(labels.numpy(), cfg.subset)
        if len(keep) < len(labels):
            keep_t = torch.from_numpy(keep)
            images, labels = images[keep_t], labels[keep_t]
    return images, labels, classes


def _native_arrays(dataset: Dataset, image_size: Optional[int]) -> Optional[Split]:
    """The pixel array torchvision's CIFAR / STL-10 already hold, when no resize is asked for."""
    data = getattr(dataset, "data", None)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4):
        return None
    images = torch.from_numpy(data)
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
        return None
    labels = torch.from_numpy(targets_of(dataset))
    return images.contiguous(), labels, list(getattr(dataset, "classes", []))


# --- cache --------------------------------------------------------------------------------------

#: data sets whose builders read a .tar/.tar.gz ``data.root`` (an archive is fingerprinted from
#: its file alone, so a cache hit does not even open it)
ARCHIVE_READERS = ("imagefolder", "folder", "cifar10", "cifar100")


def _archive_root(cfg: DataConfig) -> Optional[Path]:
    if cfg.name not in ARCHIVE_READERS or not cfg.root:
        return None
    root = Path(str(cfg.root)).expanduser()
    return root.resolve() if root.is_file() and is_archive(root) else None


def _fingerprint(cfg: DataConfig, dataset: Optional[Dataset]) -> Optional[str]:
    """A string that changes whenever the data set's files change (None: not cacheable)."""
    archive = _archive_root(cfg)
    if archive is not None:
        st = archive.stat()
        return f"archive|{archive}|{st.st_size}|{st.st_mtime_ns}"
    if isinstance(dataset, (ImageFolder, ImageFiles)):
        h = hashlib.sha1("\0".join(dataset.classes).encode())
        for path, label in dataset.samples:
            st = os.stat(path)
            h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return f"folder|{Path(dataset.root).resolve()}|{h.hexdigest()}"
    return None


def _cache_paths(cfg: DataConfig, split: str, fingerprint: str) -> Tuple[Path, str]:
    """(cache file, glob of the older caches of the same data set, split and size)."""
    root = Path(str(cfg.root)).expanduser().resolve()
    size = cfg.image_size or "native"
    slot = hashlib.sha1(f"{cfg.name}|{root}|{split}|{size}".encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{root.name}-{split}-{size}")
    version = hashlib.sha1(f"{CACHE_VERSION}|{fingerprint}".encode()).hexdigest()[:12]
    folder = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return folder / f"{stem}-{slot}-{version}.pt", f"{stem}-{slot}-*.pt"


def _read_cache(path: Path, fingerprint: str) -> Optional[Split]:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: decode again
        log.warning("ignoring unreadable cache %s (%s)", path, e)
        return None
    if blob.get("version") != CACHE_VERSION or blob.get("fingerprint") != fingerprint:
        return None
    return blob["images"], blob["labels"], list(blob["classes"])


def _write_cache(path: Path, stale_glob: str, fingerprint: str, split_data: Split) -> None:
    images, labels, classes = split_data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"version": CACHE_VERSION, "fingerprint": fingerprint, "images": images,
                    "labels": labels, "classes": classes}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save raises RuntimeError for unwritable files
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = (getattr(e, "strerror", None) or str(e)).splitlines()[0]
        log.warning(f"could not write the uint8 cache {path} ({reason}); the split will be "
                    f"decoded again next time. Set data.cache_dir (or $VISSL_LITE_CACHE) to a "
                    f"writable folder")
        return
    for old in path.parent.glob(stale_glob):
        if old != path:
            old.unlink(missing_ok=True)


def _cached_decode(cfg: DataConfig, split: str) -> Split:
    """The split from the cache if it is current, else decoded (and cached when cacheable).

    An archive is fingerprinted from its file alone, so a cache hit does not even open it."""
    build = partial(DATASETS.get(cfg.name), cfg, split, None)
    dataset = None if _archive_root(cfg) is not None else build()
    native = _native_arrays(dataset, cfg.image_size) if dataset is not None else None
    if native is not None:
        return native
    fingerprint = _fingerprint(cfg, dataset)
    if fingerprint is None:
        return decode_split(dataset, cfg)
    path, stale_glob = _cache_paths(cfg, split, fingerprint)

    def load_or_decode() -> Split:
        cached = _read_cache(path, fingerprint)
        if cached is not None:
            log.info("loaded %s split '%s' from the cache %s", cfg.name, split, path)
            return cached
        decoded = decode_split(dataset if dataset is not None else build(), cfg)
        _write_cache(path, stale_glob, fingerprint, decoded)
        return decoded

    if not dist.is_dist():
        return load_or_decode()
    if dist.local_rank() == 0:
        out = load_or_decode()
        dist.barrier()
        return out
    dist.barrier()
    return load_or_decode()
