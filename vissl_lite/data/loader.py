"""The training iterator: data set + view pipeline + per-rank sharding, resumable mid-epoch.

Two paths yield the same batch dict (``views``, ``labels``, ``index``; see methods/base.py):

- CPU (``augment.path=cpu``): a ``Dataset`` of PIL images (or the in-memory uint8 tensors) and the
  ``build_cpu_views`` transform in DataLoader workers, sharded by a ``DistributedSampler``.
- GPU (``augment.path=gpu``): the whole data set as uint8 on the device, a seeded permutation per
  epoch sharded by rank, and ``build_gpu_views`` on each batch (no decoding or worker processes).

Exact resume: every random choice is a function of ``(seed, epoch, sample index)`` (CPU path: the
augmentation RNG is re-seeded per sample from a table drawn for the epoch) or of
``(seed, epoch, batch, rank)`` (GPU path), never of the worker that ran it or of how many batches
came before. ``set_epoch(epoch, start_batch)`` skips the batches a checkpoint already covered
without loading them, so a run resumed mid-epoch sees exactly the batches and views it would have
seen, and the result does not depend on ``num_workers``.

User errors raised in DataLoader workers come back as one line (``workers.py``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from vissl_lite.augment import build_cpu_views, build_gpu_views
from vissl_lite.augment.boxes import batch_entries
from vissl_lite.config import data_image_size
from vissl_lite.data.corrupt import skipped_count
from vissl_lite.data.datasets import build_dataset, describe_dataset
from vissl_lite.data.hybrid import HybridLoader
from vissl_lite.data.memory import UInt8TensorDataset, load_uint8
from vissl_lite.data.shards import ShardLoader
from vissl_lite.data.workers import (_GPU_AUGMENT, _PERMUTATION, ResumableSampler, carry,
                                     collate_or_error, derive_seed,
                                     leave_stop_signals_to_the_trainer, raise_carried,
                                     seeded_sample)
from vissl_lite.errors import ConfigError, VisslLiteError


class _SeededViews(Dataset):
    """Applies ``transform`` to ``dataset[index]`` with the torch/python RNG seeded per sample.

    Indexed by ``(index, seed)`` pairs from ``ResumableSampler``; the caller's RNG state is restored
    afterwards so that ``num_workers=0`` does not disturb the training process's RNG.
    """

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> Dict[str, Any]:
        index, seed = key
        try:
            image, label = self.dataset[index]
        except VisslLiteError as e:
            return carry(e)
        return seeded_sample(self.transform, image, seed, label, index)


class CPULoader:
    """DataLoader over ``_SeededViews`` with a ``ResumableSampler``; ``len()`` = batches per epoch."""

    def __init__(self, dataset: Dataset, transform: Callable, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_workers: int = 0,
                 pin_memory: bool = False):
        self.batch_size = batch_size
        self.sampler = ResumableSampler(dataset, world_size, rank, seed)
        if self.sampler.num_samples < batch_size:
            raise ConfigError(f"the data set has {len(dataset)} samples, {self.sampler.num_samples} "
                              f"per rank, fewer than one batch of {batch_size} per rank; lower "
                              f"train.batch_size or use more data (data.subset)")
        self.loader = DataLoader(
            _SeededViews(dataset, transform), batch_size=batch_size, sampler=self.sampler,
            num_workers=num_workers, pin_memory=pin_memory, drop_last=True,
            collate_fn=collate_or_error,
            persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
            worker_init_fn=leave_stop_signals_to_the_trainer,
            prefetch_factor=2 if num_workers > 0 else None)

    def __len__(self) -> int:
        return self.sampler.num_samples // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return map(raise_carried, self.loader)

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset.dataset

    def skipped(self) -> int:
        """Unreadable files skipped so far (``data.on_corrupt=skip``), across worker processes."""
        return skipped_count(self.dataset)


class DeviceLoader:
    """Batches of uint8 images held on the device, augmented on the device by ``views_fn``.

    ``views_fn(uint8 (B, 3, H, W), generator=...) -> list of float views`` (``build_gpu_views``).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, views_fn: Callable,
                 batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.views_fn, self.batch_size = views_fn, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.per_rank = len(images) // world_size
        if self.per_rank < batch_size:
            raise ConfigError(f"the data set has {len(images)} samples, {self.per_rank} per rank, "
                              f"fewer than one batch of {batch_size} per rank; lower "
                              f"train.batch_size or use more data")
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return self.per_rank // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, _PERMUTATION))
        order = torch.randperm(len(self.images), generator=g)
        order = order[:self.per_rank * self.world_size][self.rank::self.world_size]
        for b in range(self.start_batch, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            index_dev = index.to(self.device, non_blocking=True)
            gen = torch.Generator(device=self.device)
            gen.manual_seed(derive_seed(self.seed, self.epoch, b, self.rank, _GPU_AUGMENT))
            views = self.views_fn(self.images.index_select(0, index_dev), generator=gen)
            yield {**batch_entries(views), "labels": self.labels.index_select(0, index_dev),
                   "index": index_dev}


def build_train_loader(cfg, views_spec, rank: int, world_size: int, device: torch.device,
                       batch_size: Optional[int] = None, dataset: Optional[Dataset] = None,
                       transform: Optional[Callable] = None):
    """The training iterator for a full experiment config (``len()`` = batches per epoch per rank).

    ``batch_size`` is the per-rank micro-batch (default: ``train.batch_size / (world_size *
    train.accumulate)``). ``dataset`` (yielding ``(image, label)``) and ``transform`` replace the
    configured data set and view pipeline, for use from Python with one's own data.
    """
    if batch_size is None:
        batch_size = cfg.train.batch_size // (world_size * cfg.train.accumulate)
    device = torch.device(device)
    image_size = data_image_size(cfg)
    path = str(cfg.augment.path).lower()

    if path == "gpu" and cfg.data.gpu_decode and not hasattr(dataset, "images"):
        return HybridLoader(dataset if dataset is not None else build_dataset(cfg.data, "train"),
                            transform or build_gpu_views(views_spec, cfg.augment, image_size),
                            batch_size, image_size, rank, world_size, cfg.seed,
                            cfg.data.num_workers, device)
    if path == "gpu":
        if dataset is not None and hasattr(dataset, "images"):
            images, labels = dataset.images, dataset.labels
        else:
            images, labels = load_uint8(cfg.data, "train")     # data.subset applied there
        if transform is None:
            transform = build_gpu_views(views_spec, cfg.augment, image_size)
        return DeviceLoader(images, labels, transform, batch_size, rank, world_size, cfg.seed,
                            device)
    if path != "cpu":
        raise ConfigError(f"augment.path must be 'cpu' or 'gpu', got '{cfg.augment.path}'")

    if dataset is None and cfg.data.name == "shards" and not cfg.data.in_memory:
        return ShardLoader(cfg.data.root, transform or build_cpu_views(views_spec, cfg.augment,
                                                                       image_size),
                           batch_size, rank, world_size, cfg.seed, cfg.data.num_workers,
                           cfg.data.shuffle_buffer, pin_memory=device.type == "cuda")
    if dataset is None:
        if cfg.data.in_memory:
            images, labels = load_uint8(cfg.data, "train")
            dataset = UInt8TensorDataset(images, labels)
        else:
            dataset = build_dataset(cfg.data, "train")         # data.subset applied there
    if transform is None:
        transform = build_cpu_views(views_spec, cfg.augment, image_size)
    return CPULoader(dataset, transform, batch_size, rank, world_size, cfg.seed,
                     num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")


def train_data_size(loader) -> int:
    """The number of training images behind a loader (0 where unknown: streamed shards)."""
    dataset = getattr(loader, "dataset", None)  # DeviceLoader: the uint8 images
    return len(dataset) if dataset is not None else len(getattr(loader, "images", ()))


def describe_train_data(cfg, loader) -> str:
    """One line for the start of a run: the data set, where it is read from, its image count and
    the augmentation path (the trainer logs it beside device, precision and output folder)."""
    dataset = getattr(loader, "dataset", None)
    count = train_data_size(loader)
    return (f"{describe_dataset(cfg.data, dataset, count=count)}, "
            f"{str(cfg.augment.path).lower()} augmentation")


def move_batch(batch: Dict[str, Any], device: torch.device,
               memory_format: torch.memory_format = torch.contiguous_format) -> Dict[str, Any]:
    """The batch dict on ``device`` (non-blocking from pinned memory), views in ``memory_format``."""
    def move(x):
        if isinstance(x, torch.Tensor):
            x = x.to(device, non_blocking=True)
            if x.ndim == 4 and memory_format is not torch.contiguous_format:
                x = x.contiguous(memory_format=memory_format)
            return x
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        return x

    return move(batch)


__all__: Sequence[str] = ("build_train_loader", "CPULoader", "DeviceLoader", "ResumableSampler",
                          "derive_seed", "move_batch", "describe_train_data", "raise_carried",
                          "seeded_sample", "collate_or_error")
