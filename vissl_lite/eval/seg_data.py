"""Image/mask pairs for the dense linear probe: Pascal VOC 2012 (torchvision) or a folder.

``voc2012``: ``torchvision.datasets.VOCSegmentation``, train (1,464 images) / val (1,449), 21
classes (background and 20 objects), object boundaries labelled 255 and ignored: the protocol of
DINOv2's linear segmentation on VOC (Oquab et al. 2024, Table 10). It is read from
``ROOT/VOCdevkit/VOC2012/`` and fetched only with ``--download``.

``folder:PATH``, any pairs::

    PATH/images/<name>.<jpg|png|...>   the image
    PATH/masks/<name>.png              its mask: one class index per pixel (a grey or palette
                                       PNG), 255 = ignore
    PATH/classes.txt                   optional: one class name per line (else 0..max label)

with ``train/`` and ``test/`` (or ``val/``) each holding ``images/`` and ``masks/``, or one
``images/`` + ``masks/`` split 80/20 by image with the seed.

Both views of a pair get the same deterministic geometry, the encoder card's (resize the short
side, center crop; the mask with nearest-neighbour), so features are computed once per image.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from vissl_lite.backbones.card import Card
from vissl_lite.data.image import is_image_file
from vissl_lite.errors import DataError, EvalError
from vissl_lite.eval.features import data_fingerprint
from vissl_lite.eval.transforms import INTERPOLATION

IGNORE = 255
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
FOLDER_SPLIT = 0.8


class Pairs(Dataset):
    """(RGB PIL image, mask as a PIL image) of matching files."""

    def __init__(self, pairs: List[Tuple[Path, Path]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image, mask = self.pairs[index]
        return Image.open(image).convert("RGB"), Image.open(mask)


class PairTransform:
    """The card's resize and center crop on both (the mask with nearest-neighbour), then the
    image is scaled to [0, 1] and normalised: (float (3, S, S), long mask (S, S))."""

    def __init__(self, card: Card):
        self.geometry = v2.Compose([v2.Resize(card.resize, antialias=True, interpolation=
                                              INTERPOLATION[card.interpolation]),
                                    v2.CenterCrop(card.image_size)])
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(card.mean, card.std)])

    def __call__(self, image: Image.Image, mask: Image.Image):
        labels = np.array(mask)
        if labels.ndim != 2:
            raise DataError(f"a mask must have one class index per pixel (a grey or palette "
                            f"PNG), not shape {labels.shape}")
        image, labels = self.geometry(v2.functional.to_image(image),
                                      tv_tensors.Mask(torch.from_numpy(labels.astype(np.int64))))
        return self.normalize(image), labels.as_subclass(torch.Tensor)


class TransformedPairs(Dataset):
    def __init__(self, dataset: Dataset, transform: PairTransform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.transform(*self.dataset[index])


def _pairs(folder: Path) -> List[Tuple[Path, Path]]:
    images = sorted(p for p in (folder / "images").iterdir() if is_image_file(p.name))
    masks = {p.stem: p for p in (folder / "masks").iterdir() if p.suffix.lower() == ".png"}
    missing = [p.name for p in images if p.stem not in masks]
    if not images or missing:
        what = f"no mask in masks/ for {missing[0]}" if images else "no images in images/"
        raise DataError(f"{folder}: {what}; each images/<name>.<ext> needs masks/<name>.png")
    return [(p, masks[p.stem]) for p in images]


def _digest(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def folder_pairs(path: str, seed: int
                 ) -> Tuple[Dict[str, Dataset], Dict[str, str], str, Optional[List[str]]]:
    """(splits, data ids, protocol, class names or None) of ``folder:PATH`` (module docstring)."""
    root = Path(path).expanduser()
    test = next((root / s for s in ("test", "val") if (root / s / "images").is_dir()), None)
    if (root / "train" / "images").is_dir() and test is not None:
        parts = {"train": _pairs(root / "train"), "test": _pairs(test)}
        protocol = f"train / {test.name}"
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        pairs = _pairs(root)
        order = np.random.default_rng(seed).permutation(len(pairs))
        cut = int(FOLDER_SPLIT * len(pairs))
        if not 0 < cut < len(pairs):
            raise DataError(f"{root}: {len(pairs)} image/mask pairs cannot be split 80/20")
        parts = {"train": [pairs[i] for i in sorted(order[:cut])],
                 "test": [pairs[i] for i in sorted(order[cut:])]}
        protocol = f"{FOLDER_SPLIT:.0%} of the pairs (seed {seed}) / the rest"
    else:
        raise DataError(f"{root}: no images/ and masks/ (nor train/ and test/ holding them); see "
                        f"`vissl-lite eval segment -h` for the layout")
    names = root / "classes.txt"
    classes = ([n.strip() for n in names.read_text().splitlines() if n.strip()]
               if names.is_file() else None)
    fingerprint = data_fingerprint(root)
    ids = {s: _digest(fingerprint, protocol, s) for s in parts}
    return {s: Pairs(p) for s, p in parts.items()}, ids, protocol, classes


def voc_pairs(root: Path, download: bool
              ) -> Tuple[Dict[str, Dataset], Dict[str, str], str, List[str]]:
    """(splits, data ids, protocol, classes) of Pascal VOC 2012 train / val."""
    folder = root / "VOCdevkit" / "VOC2012"
    if not download and not folder.is_dir():
        raise DataError(f"Pascal VOC 2012 not found: put it into {folder}/ (torchvision's "
                        f"VOCSegmentation layout) or pass --download")
    try:
        splits = {"train": torchvision.datasets.VOCSegmentation(str(root), "2012", "train",
                                                               download=download),
                  "test": torchvision.datasets.VOCSegmentation(str(root), "2012", "val")}
    except (RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = "" if download else " or pass --download"
        raise DataError(f"cannot read Pascal VOC 2012 in {folder}/ ({first}); put it there in "
                        f"torchvision's layout{hint}") from None
    fingerprint = data_fingerprint(folder / "SegmentationClass")
    ids = {s: _digest(fingerprint, "voc2012", s) for s in splits}
    return splits, ids, "train (1,464) / val (1,449)", list(VOC_CLASSES)


def load_pairs(name: str, root: Path, download: bool, seed: int):
    """``voc2012`` or ``folder:PATH``: (splits, data ids, protocol, class names or None)."""
    if name.startswith("folder:"):
        return folder_pairs(name[len("folder:"):], seed)
    if name != "voc2012":
        raise EvalError(f"--seg-data {name!r}: give voc2012 or folder:PATH")
    return voc_pairs(root, download)
