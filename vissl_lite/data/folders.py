"""Image files on disk: an ImageFolder split (``<split>/<class>/<image>``) and every image under a
folder in any nesting, unlabelled (``data.name=folder``). Their tar-archive twins are in
``archive.py``; ``datasets.py`` picks one by name."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional

import torchvision
from torch.utils.data import Dataset

from vissl_lite.data.image import IMG_EXTENSIONS, is_image_file, load_rgb
from vissl_lite.errors import DataError

__all__ = ["ImageFolder", "ImageFiles"]


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
