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

Corrupt files: ``data.on_corrupt=error`` (default) stops at the first unreadable image with its
path; ``skip`` warns once per file, trains on the next readable image instead and counts them
(``skipped_count``; the in-memory path drops them and logs the count).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np
import torchvision
from torch.utils.data import Dataset, Subset

from vissl_lite.data.archive import ImageFilesArchive, ImageFolderArchive, is_archive
from vissl_lite.data.config import DataConfig
from vissl_lite.errors import DataError
from vissl_lite.data.image import IMG_EXTENSIONS, is_image_file, load_rgb
from vissl_lite.registry import DATASETS

__all__ = ["build_dataset", "ImageFolder", "ImageFiles", "ClassSubset", "SkipCorrupt",
           "subset_indices", "as_data_config", "split_name", "targets_of", "describe_sample",
           "describe_dataset", "default_data_dir", "has_labels", "skipped_count", "DATA_ENV"]

log = logging.getLogger(__name__)

DATA_ENV = "VISSL_LITE_DATA"
ON_CORRUPT = ("error", "skip")


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


class ImageFiles(Dataset):
    """Every image file under ``root`` (any nesting, any extension case, dot-files skipped),
    sorted by path, unlabelled: ``dataset[i] -> (PIL RGB image or transform(image), -1)``."""

    def __init__(self, root, transform: Optional[Callable] = None):
        self.root, self.transform = Path(root), transform
        files: List[str] = []
        for folder, dirs, names in os.walk(self.root, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files += [os.path.join(folder, n) for n in names
                      if is_image_file(n) and not n.startswith(".")]
        if not files:
            raise DataError(f"{self.root}: no images found in it or its sub-folders (image "
                            f"extensions: {', '.join(IMG_EXTENSIONS)}, any case)")
        files.sort()
        self.samples = [(f, -1) for f in files]
        self.targets = [-1] * len(files)
        self.classes: List[str] = []

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image = load_rgb(self.samples[index][0])
        if self.transform is not None:
            image = self.transform(image)
        return image, -1


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

    if cfg.download:
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


@DATASETS.register("shards", help="tar shards written by `vissl-lite shard` (data.root: their "
                                  "folder); streamed sequentially when training")
def build_shards(cfg: DataConfig, split: str, transform=None) -> Dataset:
    from vissl_lite.data.shards import ShardDataset

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


class SkipCorrupt(Dataset):
    """``data.on_corrupt=skip``: a sample that cannot be read is replaced by the next readable one
    (in index order, so the substitute is the same on every run); each skipped file is logged once
    per process and counted across DataLoader worker processes (``skipped_count``)."""

    MAX_IN_A_ROW = 100

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.classes = list(getattr(dataset, "classes", []))
        # one flag per sample in shared memory: a file is logged and counted once, whichever
        # DataLoader worker process reads it, in whatever epoch
        self._flags = multiprocessing.RawArray("b", len(dataset))

    @property
    def targets(self) -> List[int]:
        return targets_of(self.dataset).tolist()

    def describe(self, index: int) -> str:
        return describe_sample(self.dataset, index)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        for k in range(min(self.MAX_IN_A_ROW, len(self))):
            i = (index + k) % len(self)
            try:
                return self.dataset[i]
            except DataError as e:
                if not self._flags[i]:
                    self._flags[i] = 1
                    log.warning(f"skipped: {e} (data.on_corrupt=skip)")
        raise DataError(f"{self.MAX_IN_A_ROW} unreadable images in a row from "
                        f"{describe_sample(self.dataset, index)} on; is data.root the right data?")

    @property
    def skipped(self) -> int:
        return int(np.frombuffer(self._flags, dtype=np.int8).sum())


def skipped_count(dataset: Any) -> int:
    """How many distinct unreadable files ``data.on_corrupt=skip`` skipped so far (0 otherwise)."""
    while dataset is not None:
        if isinstance(dataset, SkipCorrupt):
            return dataset.skipped
        dataset = getattr(dataset, "dataset", None)
    return 0


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
