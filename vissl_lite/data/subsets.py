"""Selecting samples without decoding them: labels, a sample's name, the class-balanced
``data.subset``."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
from torch.utils.data import Dataset, Subset

from vissl_lite.errors import DataError

__all__ = ["targets_of", "describe_sample", "subset_indices", "ClassSubset"]


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
