"""``data.on_corrupt``: ``error`` (default) stops at the first unreadable image with its path;
``skip`` warns once per file, trains on the next readable image instead and counts them
(``skipped_count``; the in-memory path drops them and logs the count)."""
from __future__ import annotations

import logging
import multiprocessing
from typing import Any, List

import numpy as np
from torch.utils.data import Dataset

from vissl_lite.data.subsets import describe_sample, targets_of
from vissl_lite.errors import DataError

__all__ = ["SkipCorrupt", "skipped_count", "ON_CORRUPT"]

log = logging.getLogger(__name__)

ON_CORRUPT = ("error", "skip")


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
