"""Data sets by name: CIFAR-10/100, STL-10 (torchvision), ImageFolder and unlabelled image folders.

``build_dataset(cfg.data, "train" | "test", transform)`` is the one entry point: it looks the name
up in ``vissl_lite.registry.DATASETS``, turns every failure a user can cause into a
:class:`DataError` that says what ``data.root`` should point to, and applies ``data.subset``.

Splits: ``"train"`` and ``"test"`` are roles, mapped to the folder or split names
``data.train_split`` / ``data.test_split`` (e.g. ``train+unlabeled`` for STL-10 pretraining, or
``val`` for an ImageNet-style tree); any other string is used as the split name itself.

``data.subset = N`` keeps a fixed, class-balanced random subset of N samples of the split (seed 0,
the same indices on every run and for the in-memory path), kept in data-set order. A prefix of
the data set would hold only the first classes of a class-sorted ImageFolder.

Unlabelled data (``data.name=folder``): every image under ``data.root`` in any nesting (a folder
or a .tar/.tar.gz), extensions matched case-insensitively, dot-files ignored, sorted by path;
labels are -1 and there is no test split. It is chosen by name, never guessed from the layout: a
folder that happens to have no ``train/`` is an error for ``imagefolder`` whose message points
here, so a typo in ``data.root`` never trains on the wrong images silently.

Downloads: with ``data.root`` unset, CIFAR-10/100 and STL-10 live in ``$VISSL_LITE_DATA`` (else
``~/.cache/vissl_lite/datasets``) and ``data.download=true`` fetches them there.
``data.name=cifar10`` (or ``cifar100``) with a root that is an ImageFolder tree or a tar of one (the CIFAR JPEGs) reads
it as ``imagefolder``: same classes in the same order.

Corrupt files: ``data.on_corrupt`` (``corrupt.py``). The data sets themselves: ``folders.py``
(files on disk), ``archive.py`` (a tar archive), ``shards.py`` (``vissl-lite shard`` output);
``subsets.py``: ``data.subset``.
"""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torchvision
from torch.utils.data import Dataset

from vissl_lite.data.archive import ImageFilesArchive, ImageFolderArchive, is_archive
from vissl_lite.data.config import DataConfig
from vissl_lite.data.corrupt import ON_CORRUPT, SkipCorrupt
from vissl_lite.data.folders import ImageFiles, ImageFolder
from vissl_lite.data.image import is_image_file
from vissl_lite.data.shards import ShardDataset
from vissl_lite.data.subsets import ClassSubset, subset_indices, targets_of
from vissl_lite.errors import DataError
from vissl_lite.registry import DATASETS

__all__ = ["build_dataset", "as_data_config", "split_name", "describe_dataset",
           "default_data_dir", "has_labels", "DATA_ENV"]

DATA_ENV = "VISSL_LITE_DATA"


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


def default_data_dir() -> Path:
    """Where downloadable data sets live when ``data.root`` is unset: ``$VISSL_LITE_DATA``, else
    ``$XDG_CACHE_HOME/vissl_lite/datasets`` (``~/.cache/vissl_lite/datasets``)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return cache / "vissl_lite" / "datasets"


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise DataError(f"data.root is not set; point it at the {cfg.name} data "
                        f"(e.g. data.root=/path/to/data)")
    return Path(os.path.expandvars(str(cfg.root))).expanduser()


def _existing_root(cfg: DataConfig, what: str) -> Path:
    """``data.root``, which must be a folder or a tar archive; ``what`` says what it should be."""
    root = _root(cfg)
    if not root.exists():
        raise DataError(f"data.root does not exist: {root}; point it at {what} or a .tar/.tar.gz "
                        f"archive of one")
    if root.is_file() and not is_archive(root):
        raise DataError(f"data.root is a file but not a tar archive: {root}; point it at {what} "
                        f"or a .tar/.tar.gz archive of one")
    return root


def _is_imagefolder_source(cfg: DataConfig, split: str) -> bool:
    """``data.root`` is a tar archive or a folder with the split's sub-folder."""
    if not cfg.root:
        return False
    root = _root(cfg)
    return (root.is_file() and is_archive(root)) or (root / split).is_dir()


@DATASETS.register("imagefolder")
def build_imagefolder(cfg: DataConfig, split: str, transform=None) -> Dataset:
    """ImageFolder tree <root>/<split>/<class>/<image>, from a folder or a .tar/.tar.gz archive."""
    root = _existing_root(cfg, f"an ImageFolder directory (<root>/{split}/<class>/<image>)")
    if root.is_file():
        return ImageFolderArchive(root, split, transform)
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"{root}: no split folder '{split}'; found "
                        f"{', '.join(found) if found else 'no sub-folders'}. data.root must hold "
                        f"<split>/<class>/<image>; set data.train_split / data.test_split to the "
                        f"folder names used there, or use data.name=folder for unlabelled images "
                        f"in any layout")
    return ImageFolder(split_dir, transform)


@DATASETS.register("folder", help="unlabelled images in any nesting under data.root (a folder "
                                  "or .tar/.tar.gz); labels -1, no test split")
def build_folder(cfg: DataConfig, split: str, transform=None) -> Dataset:
    root = _root(cfg)
    if split == cfg.test_split and split != cfg.train_split:
        raise DataError(f"data.name=folder has no '{split}' split: its images are unlabelled. "
                        f"Evaluate on a labelled data set instead (an ImageFolder with "
                        f"train/<class>/ and {split}/<class>/, data.name=imagefolder)")
    _existing_root(cfg, "a folder of images (any nesting)")
    if root.is_file():
        return ImageFilesArchive(root, transform)
    return ImageFiles(root, transform)


build_folder.labelled = False  # type: ignore[attr-defined]


def _torchvision(cls, title: str, folder: str, cfg: DataConfig, transform, **split_kw) -> Dataset:
    root = _root(cfg) if cfg.root else default_data_dir()
    url = getattr(cls, "url", "")

    def offline(e: BaseException) -> DataError:
        by_hand = (f"download {url} and unpack it into {root}/ (giving {root}/{folder}/)"
                   if url else f"put {folder}/ into {root}/")
        return DataError(f"could not download {title} into {root} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else e!r}). Offline? {by_hand}, or "
                         f"point data.root at a local copy")

    if cfg.root:
        _check_given_root(root, title, folder, cfg.download)
    elif cfg.download:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the data folder {root} ({e.strerror or e}); set "
                            f"data.root or ${DATA_ENV} to a writable folder") from None
    try:
        return cls(str(root), transform=transform, download=cfg.download, **split_kw)
    except RuntimeError as e:
        if cfg.download:
            raise offline(e) from None
        raise DataError(f"{title} not found under {root} (torchvision expects {root}/{folder}/). "
                        f"Pass data.download=true to fetch it, or point data.root at the folder "
                        f"that contains {folder}/") from None
    except OSError as e:  # urllib errors when downloading offline
        raise offline(e) from None


def _check_given_root(root: Path, title: str, folder: str, download: bool) -> None:
    """A ``data.root`` the user gave: it must exist (a typo creates nothing), and a download goes
    only into an empty folder (not into one of the user's own images)."""
    if not root.exists():
        raise DataError(f"data.root does not exist: {root}; fix the path (nothing was created), "
                        f"or leave data.root unset to use {default_data_dir()}")
    if (root / folder).exists() or not root.is_dir() or not any(root.iterdir()):
        return
    images = sum(is_image_file(f) for _, _, files in os.walk(root) for f in files)
    if images:
        raise DataError(f"data.root={root} holds {images:,} images, no {title} ({folder}/); add "
                        f"data.name=folder to train on them (unlabelled)")
    if download:
        raise DataError(f"data.root={root} holds no {title} ({folder}/) and is not empty, so "
                        f"nothing is downloaded into it; point data.root at {title} or an empty "
                        f"folder, or leave it unset to use {default_data_dir()}")


@DATASETS.register("shards", help="tar shards written by `vissl-lite shard` (data.root: their "
                                  "folder); streamed sequentially when training")
def build_shards(cfg: DataConfig, split: str, transform=None) -> Dataset:
    if split != cfg.train_split:
        raise DataError(f"data.name=shards has one split (the shards), not '{split}'; evaluate "
                        f"on the data set the shards were written from")
    return ShardDataset(_root(cfg), transform)


def _train_or_test(split: str, title: str) -> bool:
    if split not in ("train", "test"):
        raise DataError(f"{title} has the splits 'train' and 'test', not '{split}'; fix "
                        f"data.train_split / data.test_split")
    return split == "train"


@DATASETS.register("cifar10")
def build_cifar10(cfg: DataConfig, split: str, transform=None) -> Dataset:
    """CIFAR-10: torchvision's (data.download=true fetches it) or an ImageFolder/tar of JPEGs."""
    if _is_imagefolder_source(cfg, split):
        return build_imagefolder(cfg, split, transform)
    train = _train_or_test(split, "CIFAR-10")
    return _torchvision(torchvision.datasets.CIFAR10, "CIFAR-10", "cifar-10-batches-py", cfg,
                        transform, train=train)


@DATASETS.register("cifar100")
def build_cifar100(cfg: DataConfig, split: str, transform=None) -> Dataset:
    """CIFAR-100: torchvision's (data.download=true fetches it) or an ImageFolder/tar of JPEGs."""
    if _is_imagefolder_source(cfg, split):
        return build_imagefolder(cfg, split, transform)
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


def has_labels(data_cfg: Any) -> bool:
    """Whether the named data set has class labels (``folder`` has none)."""
    return getattr(DATASETS.get(as_data_config(data_cfg).name), "labelled", True)


def describe_dataset(data_cfg: Any, dataset: Optional[Dataset] = None, split: str = "train",
                     count: Optional[int] = None) -> str:
    """One line for the start of a run: name, where it is read from, image count, labels."""
    cfg = as_data_config(data_cfg)
    where = str(_root(cfg)) if cfg.root else f"{default_data_dir()} (default)"
    text = f"data: {cfg.name} {where}, split '{split_name(cfg, split)}'"
    count = len(dataset) if count is None and dataset is not None else count
    if count is not None:
        classes = len(getattr(dataset, "classes", []) or []) if dataset is not None else 0
        kind = (f", {classes} classes" if classes else
                ", unlabelled" if not has_labels(cfg) else "")
        text += f": {count:,} images{kind}"
        if cfg.subset is not None:
            text += f" (data.subset={cfg.subset})"
    if cfg.on_corrupt == "skip":
        text += ", corrupt files skipped"
    return text


def build_dataset(data_cfg: Any, split: str = "train", transform: Optional[Callable] = None
                  ) -> Dataset:
    """The data set named by ``data_cfg.name`` for ``split`` ("train" | "test" | a split name).

    Items are ``(PIL RGB image, or transform(image), int label)``; the data set has ``.classes``.
    """
    cfg = as_data_config(data_cfg)
    if cfg.on_corrupt not in ON_CORRUPT:
        raise DataError(f"data.on_corrupt must be one of {', '.join(ON_CORRUPT)}, "
                        f"got '{cfg.on_corrupt}'")
    dataset = DATASETS.build(cfg.name, cfg, split_name(cfg, split), transform)
    if cfg.subset is not None:
        keep = subset_indices(targets_of(dataset), cfg.subset)
        if len(keep) < len(dataset):
            dataset = ClassSubset(dataset, keep)
    if cfg.on_corrupt == "skip":
        dataset = SkipCorrupt(dataset)
    return dataset
