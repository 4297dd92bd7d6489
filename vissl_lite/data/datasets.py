"""Data sets by name: CIFAR-10/100, STL-10 (torchvision) and ImageFolder (a folder or a tar).

``build_dataset(cfg.data, "train" | "test", transform)`` is the one entry point: it looks the name
up in ``vissl_lite.registry.DATASETS``, turns every failure a user can cause into a
:class:`DataError` that says what ``data.root`` should point to, and applies ``data.subset``.

Splits: ``"train"`` and ``"test"`` are roles, mapped to the folder or split names
``data.train_split`` / ``data.test_split`` (e.g. ``train+unlabeled`` for STL-10 pretraining, or
``val`` for an ImageNet-style tree); any other string is used as the split name itself.

``data.subset = N`` keeps a fixed, class-balanced random subset of N samples of the split (seed 0,
the same indices on every run and for the in-memory path), kept in data-set order. A prefix of
the data set would hold only the first classes of a class-sorted ImageFolder.
"""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np
import torchvision
from torch.utils.data import Dataset, Subset

from vissl_lite.data.archive import ImageFolderArchive, is_archive
from vissl_lite.data.config import DataConfig
from vissl_lite.errors import DataError
from vissl_lite.data.image import IMG_EXTENSIONS, load_rgb
from vissl_lite.registry import DATASETS

__all__ = ["build_dataset", "ImageFolder", "ClassSubset", "subset_indices", "as_data_config",
           "split_name", "targets_of", "describe_sample"]


def as_data_config(data_cfg: Any) -> DataConfig:
    """A ``DataConfig`` from the validated ``data`` section, a dict, or a ``DataConfig``."""
    if isinstance(data_cfg, DataConfig):
        return data_cfg
    known = {f.name for f in fields(DataConfig)}
    if isinstance(data_cfg, Mapping) or hasattr(data_cfg, "items"):
        items = dict(data_cfg.items())
    else:
        raise DataError(f"expected the 'data' config section, got {type(data_cfg).__name__}")
    unknown = sorted(set(items) - known)
    if unknown:
        raise DataError(f"unknown data option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    return DataConfig(**items)


def split_name(cfg: DataConfig, split: str) -> str:
    return {"train": cfg.train_split, "test": cfg.test_split}.get(split, split)


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise DataError(f"data.root is not set; point it at the {cfg.name} data "
                        f"(e.g. data.root=/path/to/data)")
    return Path(os.path.expandvars(str(cfg.root))).expanduser()


class ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder over one split folder, whose reads fail with a :class:`DataError`
    naming the file, and whose layout errors say what the folder should contain."""

    def __init__(self, root, transform: Optional[Callable] = None):
        root = Path(root)
        try:
            super().__init__(str(root), transform=transform, loader=load_rgb)
        except FileNotFoundError as e:
            if "class folder" in str(e):
                raise DataError(f"{root}: no class folders; an ImageFolder split must look like "
                                f"{root}/<class>/<image>") from None
            raise DataError(f"{root}: {e} (image extensions: "
                            f"{', '.join(IMG_EXTENSIONS)})") from None

    def describe(self, index: int) -> str:
        return self.samples[index][0]


@DATASETS.register("imagefolder")
def build_imagefolder(cfg: DataConfig, split: str, transform=None) -> Dataset:
    """ImageFolder tree <root>/<split>/<class>/<image>, from a folder or a .tar/.tar.gz archive."""
    root = _root(cfg)
    if not root.exists():
        raise DataError(f"data.root does not exist: {root}; point it at an ImageFolder directory "
                        f"(<root>/{split}/<class>/<image>) or a .tar/.tar.gz archive of one")
    if root.is_file():
        if not is_archive(root):
            raise DataError(f"data.root is a file but not a tar archive: {root}; point it at an "
                            f"ImageFolder directory or a .tar/.tar.gz archive of one")
        return ImageFolderArchive(root, split, transform)
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"{root}: no split folder '{split}'; found "
                        f"{', '.join(found) if found else 'no sub-folders'}. data.root must hold "
                        f"<split>/<class>/<image>; set data.train_split / data.test_split to the "
                        f"folder names used there")
    return ImageFolder(split_dir, transform)


def _torchvision(cls, title: str, folder: str, cfg: DataConfig, transform, **split_kw) -> Dataset:
    root = _root(cfg)
    try:
        return cls(str(root), transform=transform, download=cfg.download, **split_kw)
    except RuntimeError as e:
        if cfg.download:
            raise DataError(f"could not download {title} into {root}: {e}. Check the internet "
                            f"connection, or download it by hand and point data.root at the "
                            f"folder that contains {folder}/") from None
        hint = (" (for a folder of images or a .tar/.tar.gz of one, use data.name=imagefolder)"
                if root.is_file() or (root.is_dir() and (root / "train").is_dir()) else "")
        raise DataError(f"{title} not found under {root} (torchvision expects {root}/{folder}/). "
                        f"Pass data.download=true to fetch it, or point data.root at the folder "
                        f"that contains {folder}/{hint}") from None
    except OSError as e:  # urllib errors when downloading offline
        raise DataError(f"could not download {title} into {root}: {e}. Check the internet "
                        f"connection, or download it by hand and point data.root at the folder "
                        f"that contains {folder}/") from None


def _train_or_test(split: str, title: str) -> bool:
    if split not in ("train", "test"):
        raise DataError(f"{title} has the splits 'train' and 'test', not '{split}'; fix "
                        f"data.train_split / data.test_split")
    return split == "train"


@DATASETS.register("cifar10")
def build_cifar10(cfg: DataConfig, split: str, transform=None) -> Dataset:
    """CIFAR-10 (torchvision; data.download=true to fetch)."""
    train = _train_or_test(split, "CIFAR-10")
    return _torchvision(torchvision.datasets.CIFAR10, "CIFAR-10", "cifar-10-batches-py", cfg,
                        transform, train=train)


@DATASETS.register("cifar100")
def build_cifar100(cfg: DataConfig, split: str, transform=None) -> Dataset:
    """CIFAR-100 (torchvision; data.download=true to fetch)."""
    train = _train_or_test(split, "CIFAR-100")
    return _torchvision(torchvision.datasets.CIFAR100, "CIFAR-100", "cifar-100-python", cfg,
                        transform, train=train)


STL10_SPLITS = ("train", "test", "unlabeled", "train+unlabeled")


@DATASETS.register("stl10")
def build_stl10(cfg: DataConfig, split: str, transform=None) -> Dataset:
    """STL-10 (torchvision; splits train, test, unlabeled, train+unlabeled; unlabeled = -1)."""
    if split not in STL10_SPLITS:
        raise DataError(f"STL-10 has the splits {', '.join(STL10_SPLITS)}, not '{split}'; fix "
                        f"data.train_split / data.test_split")
    return _torchvision(torchvision.datasets.STL10, "STL-10", "stl10_binary", cfg, transform,
                        split=split)


def targets_of(dataset: Dataset) -> np.ndarray:
    """The integer label of every sample, without decoding any image."""
    for attr in ("targets", "labels"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    raise DataError(f"{type(dataset).__name__} exposes no labels (.targets)")


def describe_sample(dataset: Dataset, index: int) -> str:
    """A human-readable name of sample ``index`` (its file path where it has one)."""
    if isinstance(dataset, Subset):
        return describe_sample(dataset.dataset, int(dataset.indices[index]))
    if hasattr(dataset, "describe"):
        return dataset.describe(index)
    return f"{type(dataset).__name__} sample {index}"


def subset_indices(labels: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices, class-balanced (class counts differ by at most one while every class has
    samples left), drawn at random with ``seed``, returned in increasing order."""
    labels = np.asarray(labels)
    if n <= 0:
        raise DataError(f"data.subset must be a positive number of samples, got {n}")
    if n >= len(labels):
        return np.arange(len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[order]
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(shuffled):
        at = np.flatnonzero(shuffled == c)
        rank_in_class[at] = np.arange(len(at))
    keep = np.lexsort((np.arange(len(labels)), rank_in_class))[:n]
    return np.sort(order[keep])


class ClassSubset(Subset):
    """A ``Subset`` that keeps ``.classes`` and ``.targets`` of the data set it selects from."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        super().__init__(dataset, [int(i) for i in indices])
        self.classes: List[str] = list(getattr(dataset, "classes", []))
        self.targets = targets_of(dataset)[self.indices].tolist()

    def describe(self, index: int) -> str:
        return describe_sample(self.dataset, self.indices[index])


def build_dataset(data_cfg: Any, split: str = "train", transform: Optional[Callable] = None
                  ) -> Dataset:
    """The data set named by ``data_cfg.name`` for ``split`` ("train" | "test" | a split name).

    Items are ``(PIL RGB image, or transform(image), int label)``; the data set has ``.classes``.
    """
    cfg = as_data_config(data_cfg)
    dataset = DATASETS.build(cfg.name, cfg, split_name(cfg, split), transform)
    if cfg.subset is not None:
        keep = subset_indices(targets_of(dataset), cfg.subset)
        if len(keep) < len(dataset):
            dataset = ClassSubset(dataset, keep)
    return dataset
