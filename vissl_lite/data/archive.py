"""An ImageFolder read straight from a ``.tar`` / ``.tar.gz`` archive, without extracting it.

Layout: ``[<top>/]<split>/<class>/**/<image>`` (one optional top-level folder, as in
``cifar10-jpeg.tar.gz``). Classes and samples are ordered exactly as torchvision's ``ImageFolder``
orders them on the extracted tree (sorted class names -> index; within a class, files sorted by
sub-folder then name), so the archive and the extracted folder give the same ``(image, label)``
at every index.

Storage, chosen for random access from DataLoader workers:

* uncompressed ``.tar``: an index of ``(offset, size)`` per member over a memory map of the file,
  opened lazily in each process (nothing is read until an image is asked for), so archives larger
  than memory work;
* compressed (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``): a compressed stream cannot be
  seeked, so the archive is decompressed once and the encoded bytes of the requested split are
  kept in one contiguous ``bytes`` buffer (about 46 MB for the CIFAR-10 training split). One
  object, not 50,000, so forked workers share it without copy-on-write churn. For archives
  larger than memory use an uncompressed ``.tar`` or the extracted folder.

The tar headers are read by ``tarscan.py``.
"""
from __future__ import annotations

import mmap
import os
from itertools import accumulate
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from vissl_lite.data.image import IMG_EXTENSIONS, decode_rgb, is_image_file
from vissl_lite.data.tarscan import Member, list_members, read_compressed
from vissl_lite.errors import DataError

__all__ = ["ImageFolderArchive", "ImageFilesArchive", "is_archive", "ARCHIVE_SUFFIXES"]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(path: Union[str, os.PathLike]) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _hidden(name: str) -> bool:
    """Dot-files such as macOS ``._photo.jpg`` resource forks, which are not images."""
    return any(p.startswith(".") and p not in (".", "..") for p in name.split("/"))


def _parts(name: str) -> Tuple[str, ...]:
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _locate_split(entries: Sequence[Tuple[Tuple[str, ...], Member]], split: str,
                  path: Path) -> int:
    """How many leading path components come before ``split`` (0 or 1), or a DataError."""
    tops = sorted({parts[0] for parts, _ in entries})
    found = sorted({parts[0] for parts, m in entries if len(parts) > 1 or m.is_dir})
    if split in found:
        return 0
    if len(tops) == 1:
        below = sorted({parts[1] for parts, m in entries if len(parts) > 2 or
                        (len(parts) == 2 and m.is_dir)})
        if split in below:
            return 1
        found += [f"{tops[0]}/{b}" for b in below]
    raise DataError(f"{path}: no split folder '{split}' in the archive; found folders "
                    f"{', '.join(found) or '(none)'}. Expected "
                    f"[<top>/]{split}/<class>/<image>; set data.train_split / data.test_split to "
                    f"the folder names used in the archive")


class _ArchiveImages(Dataset):
    """Random access to the image members of a tar archive that ``_select`` picks.

    Subclasses implement ``_select(members) -> (samples, located members)`` where ``samples`` is a
    list of ``(member name, label)`` and set ``classes``."""

    classes: List[str]

    def __init__(self, path: Union[str, os.PathLike], transform: Optional[Callable] = None):
        self.path = Path(path).expanduser().resolve()
        self.transform = transform
        if not self.path.is_file():
            raise DataError(f"archive not found: {self.path}; data.root must point to an "
                            f"image folder or a .tar/.tar.gz archive of one")
        decompressed = read_compressed(self.path)
        buf = decompressed if decompressed is not None else self._map()
        members = list_members(buf, self.path)
        self.samples, located = self._select(members)
        self.targets = [label for _, label in self.samples]
        self._sizes = np.array([m.size for m in located], dtype=np.int64)
        if decompressed is not None:
            self._data = b"".join(decompressed[m.offset:m.offset + m.size] for m in located)
            self._starts = np.array([0, *accumulate(self._sizes[:-1].tolist())], dtype=np.int64)
        else:
            buf.close()
            self._data = None
            self._starts = np.array([m.offset for m in located], dtype=np.int64)
        self._compressed = decompressed is not None
        self._mmap: Optional[mmap.mmap] = None

    def _select(self, members: List[Member]):
        raise NotImplementedError

    def _map(self) -> mmap.mmap:
        with open(self.path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def read_bytes(self, index: int) -> bytes:
        """The encoded bytes of sample ``index``."""
        start, size = int(self._starts[index]), int(self._sizes[index])
        if self._compressed:
            return self._data[start:start + size]
        if self._mmap is None:
            self._mmap = self._map()
        return self._mmap[start:start + size]

    def describe(self, index: int) -> str:
        return f"{self.path}:{self.samples[index][0]}"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image = decode_rgb(self.read_bytes(index), self.describe(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.samples[index][1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_mmap"] = None  # reopened lazily in each worker process
        return state


class ImageFilesArchive(_ArchiveImages):
    """Every image in a tar archive, in any nesting, unlabelled (label -1), sorted by name."""

    def __init__(self, path: Union[str, os.PathLike], transform: Optional[Callable] = None):
        self.classes = []
        super().__init__(path, transform)

    def _select(self, members: List[Member]):
        files = sorted((m.name, m) for m in members
                       if not m.is_dir and is_image_file(m.name) and not _hidden(m.name))
        if not files:
            raise DataError(f"{self.path}: no images in the archive (image extensions: "
                            f"{', '.join(IMG_EXTENSIONS)}, any case)")
        return [(name, -1) for name, _ in files], [m for _, m in files]

    def __repr__(self) -> str:
        return f"ImageFilesArchive({self.path}, {len(self)} images, unlabelled)"


class ImageFolderArchive(_ArchiveImages):
    """``torchvision.datasets.ImageFolder`` semantics over one split of a tar archive.

    ``dataset[i] -> (PIL RGB image or transform(image), class index)``; ``.classes``,
    ``.class_to_idx``, ``.samples`` (member name, class index) and ``.targets`` as in torchvision.
    """

    def __init__(self, path: Union[str, os.PathLike], split: str = "train",
                 transform: Optional[Callable] = None):
        self.split = split
        super().__init__(path, transform)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def _select(self, members: List[Member]):
        self.classes, samples, located = self._index(members)
        return samples, located

    def _index(self, members: List[Member]):
        entries = [(p, m) for m in members if (p := _parts(m.name))]
        if not entries:
            raise DataError(f"{self.path}: the archive is empty; data.root must point to an "
                            f"ImageFolder archive ([<top>/]{self.split}/<class>/<image>)")
        depth = _locate_split(entries, self.split, self.path)
        head = entries[0][0][:depth] + (self.split,)
        classes, files = set(), []
        for parts, m in entries:
            if parts[:depth + 1] != head or len(parts) < depth + 2:
                continue
            rest = parts[depth + 1:]
            if m.is_dir or len(rest) > 1:
                classes.add(rest[0])
            if not m.is_dir and len(rest) > 1 and is_image_file(rest[-1]):
                files.append((rest[0], "/".join(rest[1:-1]), rest[-1], m))
        where = f"{self.path}:{'/'.join(head)}"
        if not classes:
            raise DataError(f"{where}: no class folders; expected {'/'.join(head)}/<class>/<image>")
        empty = classes - {f[0] for f in files}
        if empty:
            raise DataError(f"{where}: no images in class folder(s) {', '.join(sorted(empty))} "
                            f"(image extensions: {', '.join(IMG_EXTENSIONS)})")
        files.sort(key=lambda f: f[:3])
        classes = sorted(classes)
        class_to_idx = {c: i for i, c in enumerate(classes)}
        samples = [(f[3].name, class_to_idx[f[0]]) for f in files]
        return classes, samples, [f[3] for f in files]

    def __repr__(self) -> str:
        return (f"ImageFolderArchive({self.path}, split={self.split!r}, "
                f"{len(self)} images, {len(self.classes)} classes)")

