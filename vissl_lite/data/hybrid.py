"""The hybrid GPU path: DataLoader workers read encoded bytes only; JPEGs are decoded in batches on
the device (``torchvision.io.decode_jpeg(list, device=...)``), resized to one size there and
augmented with the batched GPU views (``augment/gpu.py``).

    augment.path=gpu data.gpu_decode=true     (data that does not fit in memory, on a GPU)

Per batch: ``B`` byte tensors from the workers -> one ``decode_jpeg`` call on the device (nvJPEG
on CUDA; libjpeg-turbo when the device is the CPU, which is how the tests run this code) -> each
image's shorter side resized to ``S = data.image_size`` (bicubic, antialiased) and the centre
``S x S`` kept, as ``load_uint8`` prepares the in-memory path -> ``build_gpu_views`` on the
``(B, 3, S, S)`` uint8 batch with a generator seeded by ``(seed, epoch, batch, rank)``, as
``DeviceLoader``. So the views follow the in-memory GPU path's statistics; the crops are drawn
from the centre square (as there), where the CPU path crops the whole image: the same for square
images, a narrower field of view for wide ones. Files that are not JPEGs (PNG, WebP, ...) are
decoded on the CPU by ``torchvision.io.decode_image`` inside the batch.

Order, sharding and exact resume come from the CPU path's ``ResumableSampler``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vissl_lite.augment.boxes import batch_entries
from vissl_lite.data.workers import (_GPU_AUGMENT, ResumableSampler, carried, carry, derive_seed,
                                     leave_stop_signals_to_the_trainer, raise_carried)
from vissl_lite.errors import ConfigError, DataError, VisslLiteError

__all__ = ["HybridLoader", "decode_batch", "EncodedBytes"]

_JPEG_MAGIC = b"\xff\xd8"


class EncodedBytes(Dataset):
    """``dataset[i] -> {"bytes": uint8 1-D tensor, "labels", "index"}``: the file's encoded bytes,
    never decoded (folders, ImageFolders, tar archives and shards)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        base, self._map = dataset, []
        while hasattr(base, "dataset") and not hasattr(base, "read_bytes"):
            self._map.append(getattr(base, "indices", None))
            base = base.dataset
        self.base = base
        if not (hasattr(base, "read_bytes") or hasattr(base, "samples")):
            raise ConfigError(f"data.gpu_decode=true needs image files (a folder, an ImageFolder, "
                              f"a tar archive), not {type(base).__name__}; use data.in_memory")

    def __len__(self) -> int:
        return len(self.dataset)

    def _base_index(self, index: int) -> int:
        for indices in self._map:
            index = int(indices[index]) if indices is not None else index
        return index

    def __getitem__(self, key) -> Dict[str, Any]:
        index = key[0] if isinstance(key, tuple) else key  # (index, seed) from ResumableSampler
        i = self._base_index(index)
        try:
            if hasattr(self.base, "read_bytes"):
                data, label = bytes(self.base.read_bytes(i)), self.base.targets[i]
            else:
                path, label = self.base.samples[i][:2]
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise DataError(f"corrupt or unreadable image: {path} ({e.strerror or e})"
                                    ) from None
        except VisslLiteError as e:
            return carry(e)
        return {"bytes": torch.frombuffer(bytearray(data), dtype=torch.uint8),
                "labels": int(label), "index": int(index)}


def _collate(items: List[Dict[str, Any]]):
    error = carried(items)  # a user error from a worker: raised in the main process
    if error is not None:
        return error
    return {"bytes": [it["bytes"] for it in items],
            "labels": torch.tensor([it["labels"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}


def _fit(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side -> ``size`` (bicubic, antialiased, as ``load_uint8``'s PIL resize up to
    rounding), centre square; uint8 (3, size, size)."""
    h, w = image.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        image = F.interpolate(image[None].float(), size=(nh, nw), mode="bicubic",
                              antialias=True, align_corners=False)[0]
        top, left = (nh - size) // 2, (nw - size) // 2
        image = image[:, top:top + size, left:left + size].round_().clamp_(0, 255).to(torch.uint8)
    return image


def decode_batch(encoded: List[torch.Tensor], size: int, device: torch.device | str = "cpu",
                 names: List[str] | None = None) -> torch.Tensor:
    """Encoded images -> uint8 ``(B, 3, size, size)`` on ``device``: JPEGs in one
    ``decode_jpeg`` call on the device, others with ``decode_image`` on the CPU."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    device = torch.device(device)
    jpeg = [i for i, b in enumerate(encoded) if bytes(b[:2].tolist()) == _JPEG_MAGIC]
    images: List[torch.Tensor | None] = [None] * len(encoded)
    try:
        if jpeg:
            decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
            for i, image in zip(jpeg, decoded):
                images[i] = image
        for i, image in enumerate(images):
            if image is None:
                images[i] = decode_image(encoded[i], mode=ImageReadMode.RGB).to(device)
    except RuntimeError as e:
        where = f" (one of {', '.join(names[:3])}...)" if names else ""
        raise DataError(f"corrupt or unreadable image in a batch{where}: {str(e).splitlines()[0]}"
                        ) from None
    return torch.stack([_fit(image, size) for image in images])


class HybridLoader:
    """Batches of views decoded and augmented on ``device`` from bytes read by workers."""

    def __init__(self, dataset: Dataset, views_fn: Callable, batch_size: int, image_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, num_workers: int = 0,
                 device: torch.device | str = "cpu"):
        self.device, self.image_size = torch.device(device), image_size
        self.views_fn, self.batch_size = views_fn, batch_size
        self.rank, self.seed = rank, seed
        self.bytes = EncodedBytes(dataset)
        self.sampler = ResumableSampler(dataset, world_size, rank, seed)
        if self.sampler.num_samples < batch_size:
            raise ConfigError(f"the data set has {len(dataset)} samples, fewer than one batch of "
                              f"{batch_size} per rank; lower train.batch_size")
        self.loader = DataLoader(self.bytes, batch_size=batch_size, sampler=self.sampler,
                                 num_workers=num_workers, drop_last=True, collate_fn=_collate,
                                 persistent_workers=num_workers > 0,
                                 worker_init_fn=leave_stop_signals_to_the_trainer,
                                 prefetch_factor=4 if num_workers > 0 else None)
        self.epoch, self.start_batch = 0, 0

    @property
    def dataset(self) -> Dataset:
        return self.bytes.dataset

    def __len__(self) -> int:
        return self.sampler.num_samples // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for b, batch in enumerate(map(raise_carried, self.loader), start=self.start_batch):
            images = decode_batch(batch["bytes"], self.image_size, self.device)
            gen = torch.Generator(device=self.device)
            gen.manual_seed(derive_seed(self.seed, self.epoch, b, self.rank, _GPU_AUGMENT))
            yield {**batch_entries(self.views_fn(images, generator=gen)),
                   "labels": batch["labels"].to(self.device, non_blocking=True),
                   "index": batch["index"].to(self.device, non_blocking=True)}
