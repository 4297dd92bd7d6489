"""Decoding a whole split into one uint8 tensor ``(N, 3, H, W)``, in parallel over DataLoader worker
processes (``data.num_workers``), with a progress bar; ``memory.py`` caches the result."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vissl_lite.data.config import DataConfig
from vissl_lite.data.subsets import describe_sample
from vissl_lite.errors import DataError

__all__ = ["decode_split", "Split"]

log = logging.getLogger(__name__)

CHUNK = 500  # images decoded per worker task

Split = Tuple[torch.Tensor, torch.Tensor, List[str]]


def _fit(image, size: int):
    if image.size == (size, size):
        return image
    image = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(image, [size, size])


class _Chunks(Dataset):
    """Item ``c`` = images ``[c * CHUNK, (c + 1) * CHUNK)`` decoded into one HWC uint8 array.

    A DataError becomes a returned message, so the caller raises it cleanly (an exception in a
    DataLoader worker is re-raised with the worker's traceback pasted into its message)."""

    def __init__(self, dataset: Dataset, image_size: Optional[int], skip_corrupt: bool = False):
        self.dataset, self.image_size, self.skip_corrupt = dataset, image_size, skip_corrupt

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / CHUNK)

    def __getitem__(self, chunk: int):
        start = chunk * CHUNK
        arrays, labels, kept, skipped = [], [], [], []
        for i in range(start, min(start + CHUNK, len(self.dataset))):
            try:
                image, label = self.dataset[i]
            except DataError as e:
                if not self.skip_corrupt:
                    return {"error": str(e)}
                skipped.append(str(e))
                continue
            if self.image_size is not None:
                image = _fit(image, self.image_size)
            array = np.asarray(image, dtype=np.uint8)
            if arrays and array.shape != arrays[0].shape:
                return {"error": _size_error(self.dataset, start, arrays[0].shape, i, array.shape)}
            arrays.append(array)
            labels.append(label)
            kept.append(i)
        return {"images": np.stack(arrays) if arrays else None, "kept": np.asarray(kept, np.int64),
                "labels": np.asarray(labels, dtype=np.int64), "skipped": skipped}


def _size_error(dataset: Dataset, i: int, shape_i, j: int, shape_j) -> str:
    return (f"images differ in size: {describe_sample(dataset, i)} is {shape_i[1]}x{shape_i[0]} "
            f"but {describe_sample(dataset, j)} is {shape_j[1]}x{shape_j[0]}; set "
            f"data.image_size=N to resize every image to NxN for the in-memory path")


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, file=sys.stderr,
                disable=None, mininterval=1.0)  # disable=None: off when stderr is not a terminal


def decode_split(dataset: Dataset, cfg: DataConfig) -> Split:
    """The images, labels and class names of ``dataset``, decoded (``data.on_corrupt`` applied)."""
    n = len(dataset)
    chunks = _Chunks(dataset, cfg.image_size, skip_corrupt=cfg.on_corrupt == "skip")
    # num_workers=auto (not resolved outside a training run): one process per core
    asked = cfg.num_workers if isinstance(cfg.num_workers, int) else os.cpu_count() or 1
    workers = min(max(asked, 0), os.cpu_count() or 1, len(chunks) - 1)
    started = time.perf_counter()
    images: Optional[torch.Tensor] = None
    first = 0
    labels = torch.empty(n, dtype=torch.long)
    keep = torch.zeros(n, dtype=torch.bool)
    skipped: List[str] = []
    with _progress(n, f"decoding {cfg.name}") as bar:
        for c, out in enumerate(DataLoader(chunks, batch_size=None, num_workers=max(workers, 0))):
            if "error" in out:
                raise DataError(out["error"])
            for message in out["skipped"]:
                log.warning(f"skipped: {message} (data.on_corrupt=skip)")
            skipped += out["skipped"]
            bar.update(len(out["kept"]) + len(out["skipped"]))
            if out["images"] is None:
                continue
            block, at = out["images"].permute(0, 3, 1, 2), torch.as_tensor(out["kept"])
            if images is None:
                images, first = torch.empty((n, *block.shape[1:]), dtype=torch.uint8), int(at[0])
            elif block.shape[1:] != images.shape[1:]:
                raise DataError(_size_error(dataset, first, images[first].permute(1, 2, 0).shape,
                                            int(at[0]), block[0].permute(1, 2, 0).shape))
            images[at], labels[at], keep[at] = block, torch.as_tensor(out["labels"]), True
    if images is None:
        raise DataError(f"none of the {n} images of {cfg.root} could be read; is data.root the "
                        f"right data?")
    if skipped:
        images, labels = images[keep], labels[keep]
        log.warning(f"skipped {len(skipped)} unreadable image(s) of {n} (data.on_corrupt=skip)")
    seconds = time.perf_counter() - started
    log.info("decoded %d images in %.1f s (%.0f images/s) with %d worker(s)", n, seconds,
             n / max(seconds, 1e-9), max(workers, 0))
    return images, labels, list(getattr(dataset, "classes", []))
