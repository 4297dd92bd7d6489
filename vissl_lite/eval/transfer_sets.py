"""The data sets of the transfer suite, each with its own train/test protocol, and where they live.

The protocols are those of Kornblith, Shlens and Le, "Do Better ImageNet Models Transfer Better?"
(CVPR 2019, Table 1 and Appendix A), which SimCLR (Chen et al. 2020, Appendix B.8) and BYOL
(Grill et al. 2020, Appendix D) follow for linear evaluation on other data sets; EuroSAT, which
has no official split, takes the 80/20 split of its paper (Helber et al. 2019), drawn per class:

==============  ==========================================================  ===============
name            train / test                                                torchvision
==============  ==========================================================  ===============
cifar100        official train (50,000) / test (10,000)                     CIFAR100
stl10           official labelled train (5,000) / test (8,000)              STL10
flowers102      train+val (2,040) / test (6,149)                            Flowers102
pets            trainval (3,680) / test (3,669)                             OxfordIIITPet
dtd             train+val of split 1 (3,760) / test of split 1 (1,880)      DTD
food101         official train (75,750) / test (25,250)                    Food101
caltech101      30 images per class, seeded (3,030) / the rest              Caltech101
eurosat         80% of each class, seeded (21,600) / the other 20%          EuroSAT
folder:PATH     PATH/train / PATH/test (an ImageFolder or its .tar); a      (ImageFolder)
                folder of <class>/<image> alone: 80% per class, seeded
==============  ==========================================================  ===============

Named data sets are read from ``ROOT/<torchvision's folder>`` (ROOT: ``--data-root``, else
``$VISSL_LITE_DATA`` or ``~/.cache/vissl_lite/datasets``) and fetched only with ``--download``.
A missing one is not an error: ``load_benchmark`` returns the one line that says where to put it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torchvision
from torch.utils.data import Dataset

from vissl_lite.data import build_dataset, default_data_dir
from vissl_lite.data.config import DataConfig
from vissl_lite.errors import DataError, EvalError
from vissl_lite.eval.features import data_fingerprint

SOURCE = "Kornblith et al. 2019 (as in SimCLR App. B.8, BYOL App. D)"


@dataclass(frozen=True)
class Benchmark:
    """A torchvision data set, the folder it expects under the root, and its protocol: the
    constructor arguments of the parts concatenated into train and test, or, with ``per_class``
    (images per class, or a fraction of each class), a seeded split of all its images."""

    name: str
    cls: str
    folder: str
    protocol: str
    source: str
    train: Tuple[Dict[str, Any], ...] = ({},)
    test: Tuple[Dict[str, Any], ...] = ()
    per_class: Union[int, float, None] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)


BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("cifar100", "CIFAR100", "cifar-100-python", "official train / test", SOURCE,
              ({"train": True},), ({"train": False},)),
    Benchmark("stl10", "STL10", "stl10_binary", "official labelled train / test", SOURCE,
              ({"split": "train"},), ({"split": "test"},)),
    Benchmark("flowers102", "Flowers102", "flowers-102", "train+val / test", SOURCE,
              ({"split": "train"}, {"split": "val"}), ({"split": "test"},)),
    Benchmark("pets", "OxfordIIITPet", "oxford-iiit-pet", "trainval / test", SOURCE,
              ({"split": "trainval"},), ({"split": "test"},), kwargs={"target_types": "category"}),
    Benchmark("dtd", "DTD", "dtd", "train+val / test of split 1", SOURCE,
              ({"split": "train"}, {"split": "val"}), ({"split": "test"},),
              kwargs={"partition": 1}),
    Benchmark("food101", "Food101", "food-101", "official train / test", SOURCE,
              ({"split": "train"},), ({"split": "test"},)),
    Benchmark("caltech101", "Caltech101", "caltech101", "30 per class (seeded) / the rest",
              SOURCE, per_class=30, kwargs={"target_type": "category"}),
    Benchmark("eurosat", "EuroSAT", "eurosat", "80% per class (seeded) / 20%",
              "Helber et al. 2019 (80/20 split)", per_class=0.8),
)}
FOLDER_SPLIT = 0.8


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every label of a torchvision or ImageFolder data set, without decoding an image."""
    for attr in ("targets", "labels", "_labels", "y"):
        if getattr(dataset, attr, None) is not None:
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    raise EvalError(f"{type(dataset).__name__} exposes no labels (.targets, .labels, ._labels)")


def classes_of(dataset: Dataset) -> List[str]:
    for attr in ("classes", "categories"):
        if getattr(dataset, attr, None):
            return list(getattr(dataset, attr))
    return [str(c) for c in range(int(labels_of(dataset).max()) + 1)]


def per_class_split(labels: Sequence[int], per_class: Union[int, float], seed: int
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: ``per_class`` images of every class (an int), or that fraction of
    each class rounded down (a float), drawn with ``seed``; the rest is test. Both sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: List[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = per_class if isinstance(per_class, int) else int(per_class * len(members))
        if not 0 < take < len(members):
            raise EvalError(f"class {c} has {len(members)} images: too few for {per_class} "
                            f"training images per class and a test part")
        train.append(rng.permutation(members)[:take])
    chosen = np.sort(np.concatenate(train))
    return chosen, np.setdiff1d(np.arange(len(labels)), chosen)


class Part(Dataset):
    """Images ``indices`` of the concatenated ``sources``: (RGB PIL image, label), with
    ``.classes`` and ``.targets`` (Caltech-101 has grey images; encoders take RGB)."""

    def __init__(self, sources: Sequence[Dataset], indices: Optional[np.ndarray] = None,
                 classes: Optional[List[str]] = None):
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        labels = np.concatenate([labels_of(s) for s in self.sources])
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
        self.targets = labels[self.indices].tolist()
        self.classes = classes or classes_of(self.sources[0])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        i = int(self.indices[index])
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        image, label = self.sources[k][i - int(self.offsets[k])]
        return image.convert("RGB"), int(label)


@dataclass
class Loaded:
    """A benchmark ready to encode: its splits, what identifies their images, its protocol."""

    name: str
    splits: Dict[str, Dataset]
    data_ids: Dict[str, str]
    protocol: str
    source: str


def _digest(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _folder_benchmark(path: str, seed: int) -> Loaded:
    """``folder:PATH``: PATH/train and PATH/test, or one <class>/<image> tree split per class."""
    name = f"folder:{path}"
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{name}: {root} does not exist; give an ImageFolder (train/ and test/ "
                        f"with <class>/<image>, or its .tar) or a <class>/<image> folder")
    cfg = DataConfig(name="imagefolder", root=str(root))
    if root.is_file() or (root / "train").is_dir():
        splits = {s: build_dataset(cfg, s) for s in ("train", "test")}
        ids = {s: _digest(data_fingerprint(root, d), s) for s, d in splits.items()}
        return Loaded(name, splits, ids, "train / test folders", "the folder's own split")
    whole = torchvision.datasets.ImageFolder(str(root))
    train, test = per_class_split(labels_of(whole), FOLDER_SPLIT, seed)
    protocol = f"{FOLDER_SPLIT:.0%} per class (seed {seed}) / the rest"
    fingerprint = data_fingerprint(root, whole)
    return Loaded(name, {"train": Part([whole], train), "test": Part([whole], test)},
                  {s: _digest(fingerprint, protocol, s) for s in ("train", "test")}, protocol,
                  "a seeded split (no test/ folder)")


def _torchvision_benchmark(bench: Benchmark, root: Path, download: bool, seed: int) -> Loaded:
    cls = getattr(torchvision.datasets, bench.cls)
    if not download and not (root / bench.folder).exists():
        raise DataError(f"not found: put {bench.cls} into {root / bench.folder}/ (torchvision's "
                        f"layout) or pass --download")
    try:
        if bench.per_class is None:
            train = Part([cls(str(root), download=download, **bench.kwargs, **kw)
                          for kw in bench.train])
            test = Part([cls(str(root), **bench.kwargs, **kw) for kw in bench.test],
                        classes=train.classes)
            protocol = bench.protocol
        else:
            whole = cls(str(root), download=download, **bench.kwargs)
            idx_train, idx_test = per_class_split(labels_of(whole), bench.per_class, seed)
            train, test = Part([whole], idx_train), Part([whole], idx_test)
            protocol = f"{bench.protocol.replace('seeded', f'seed {seed}')}"
    except (RuntimeError, OSError) as e:   # torchvision's "not found or corrupted"; no download
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = "" if download else " or pass --download"
        raise DataError(f"cannot read {root / bench.folder}/ ({first}); put {bench.cls} there in "
                        f"torchvision's layout{hint}") from None
    fingerprint = data_fingerprint(root / bench.folder)
    ids = {s: _digest(fingerprint, bench.name, protocol, s) for s in ("train", "test")}
    return Loaded(bench.name, {"train": train, "test": test}, ids, protocol, bench.source)


def add_root_arguments(group, what: str) -> None:
    """``--data-root`` and ``--download`` of the evaluators that read torchvision's data sets."""
    group.add_argument("--data-root", default=None,
                       help=f"where {what} is, in torchvision's folders (default: "
                            f"$VISSL_LITE_DATA or ~/.cache/vissl_lite/datasets)")
    group.add_argument("--download", action="store_true",
                       help=f"fetch {what} into --data-root when missing (needs internet)")


def data_root(args) -> Path:
    """``--data-root``, else where downloadable data sets live (``data.default_data_dir``)."""
    return Path(args.data_root).expanduser() if args.data_root else default_data_dir()


def load_benchmark(name: str, root: Path, download: bool, seed: int) -> Loaded:
    """The data set ``name`` (a key of ``BENCHMARKS`` or ``folder:PATH``) with its protocol; a
    DataError (one line saying where the data should be) when it is missing."""
    if name.startswith("folder:"):
        return _folder_benchmark(name[len("folder:"):], seed)
    if name not in BENCHMARKS:
        raise EvalError(f"unknown transfer data set {name!r}; give a list of "
                        f"{', '.join(BENCHMARKS)} or folder:PATH")
    return _torchvision_benchmark(BENCHMARKS[name], root, download, seed)
