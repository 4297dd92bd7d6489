"""Decoding one image file into a PIL RGB image, with a :class:`DataError` naming the file.

Files are decoded exactly as ``torchvision.datasets.folder.pil_loader`` does (``Image.open`` then
``convert("RGB")``, which forces the full decode), so a data set read from a folder and the same
data set read from a tar archive give identical pixels.
"""
from __future__ import annotations

import io
import os
from typing import Union

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from vissl_lite.errors import DataError

__all__ = ["IMG_EXTENSIONS", "is_image_file", "load_rgb", "decode_rgb"]


def is_image_file(name: str) -> bool:
    """The same test as torchvision's ImageFolder: the extension, case-insensitive."""
    return name.lower().endswith(IMG_EXTENSIONS)


def decode_rgb(data: Union[bytes, memoryview], source: str) -> Image.Image:
    """Decode encoded image bytes; ``source`` names the file in the error message."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataError(f"corrupt or unreadable image: {source} (PIL: {e})") from None


def load_rgb(path: Union[str, os.PathLike]) -> Image.Image:
    """Read and decode an image file (the ``loader`` of our ImageFolder)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"corrupt or unreadable image: {path} ({e.strerror or e})") from None
    return decode_rgb(data, str(path))
