"""Data that does not fit in memory: tar shards read sequentially, resumable mid-epoch.

    vissl-lite shard DATA --out DIR --shard-size N      (DATA: anything data.root takes)
    vissl-lite pretrain PRESET data.name=shards data.root=DIR

Layout (webdataset's): ``DIR/000000.tar, 000001.tar, ...``, each holding ``<key>.<ext>`` (the
original encoded image bytes, ``jpg``/``png``/...) and ``<key>.cls`` (the label as text, -1 for
unlabelled data) per sample, ``<key>`` = the sample's 6+-digit index in the source data set, plus
``DIR/index.json`` (shard files, samples per shard, class names). Any webdataset reader can read
the shards; this module reads them with its own ~150 lines because what training needs here is
exact: webdataset's and litdata's resumption is approximate or tied to their own loaders, and
neither is a dependency of vissl_lite.

Reading (``ShardLoader``, one per rank, ``len()`` = batches per epoch per rank):

* epoch ``e``: the shards are permuted with ``(seed, e)``; shard ``j`` of that order goes to
  stream ``j % (ranks * W)`` (``W = max(num_workers, 1)``), stream ``rank * W + w`` being worker
  ``w`` of that rank. Each stream reads its shards in order, one after the other (sequential
  reads: a memory map and the tar headers, no random seeks across the data set), through a
  shuffle buffer of ``data.shuffle_buffer`` samples seeded by ``(seed, e, stream)``.
* every stream yields the same number of whole batches, ``min`` over streams of
  ``samples // batch``: all ranks take the same number of steps and the DataLoader's round-robin
  over workers is a fixed order. The samples past that count in a stream are not seen that epoch
  (a different remainder each epoch); with equal shards and ``samples % (ranks * W * batch) == 0``
  every sample is seen exactly once per epoch.
* the random views of a sample are seeded by ``(seed, epoch, key)`` as in the CPU path.
* exact resume: ``set_epoch(e, start_batch=b)`` replays each stream's shuffle buffer over the
  sample *references* (no image is read or decoded) up to the position batch ``b`` reached, and
  renumbers the workers so that the DataLoader's round-robin continues with the stream that was
  next. The run then sees exactly the batches it would have seen. The same ``num_workers`` and
  number of ranks are needed to resume (they define the streams).
"""
from __future__ import annotations

import json
import mmap
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Sequence

import torch
from torch.utils.data import (DataLoader, Dataset, IterableDataset, default_collate,
                              get_worker_info)

from vissl_lite.data.image import decode_rgb
from vissl_lite.data.shard_writer import INDEX, write_shards
from vissl_lite.data.tarscan import scan_ustar
from vissl_lite.data.workers import (carry, derive_seed, leave_stop_signals_to_the_trainer,
                                     raise_carried, seeded_sample)
from vissl_lite.errors import ConfigError, DataError, VisslLiteError

__all__ = ["write_shards", "ShardLoader", "ShardIndex", "ShardDataset", "INDEX"]

_SHARD_STREAM, _SHARD_VIEWS = 11, 12


class _Ref(NamedTuple):
    shard: int
    key: int
    offset: int
    size: int
    label: int


class ShardIndex:
    """``DIR/index.json`` and lazy, per-process access to the samples of each shard."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        path = self.root / INDEX
        if not path.is_file():
            raise DataError(f"{self.root}: no {INDEX}; data.name=shards needs a folder written by "
                            f"`vissl-lite shard DATA --out {self.root}`")
        index = json.loads(path.read_text())
        self.files = [self.root / s["file"] for s in index["shards"]]
        self.counts = [int(s["count"]) for s in index["shards"]]
        self.classes: List[str] = list(index.get("classes", []))
        self._maps: Dict[int, mmap.mmap] = {}

    def __len__(self) -> int:
        return sum(self.counts)

    def _map(self, shard: int) -> mmap.mmap:
        if shard not in self._maps:
            try:
                with open(self.files[shard], "rb") as f:
                    self._maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as e:
                raise DataError(f"cannot read shard {self.files[shard]} ({e.strerror or e})"
                                ) from None
        return self._maps[shard]

    def refs(self, shard: int) -> List[_Ref]:
        """The samples of one shard in file order (reads its tar headers only)."""
        buf = self._map(shard)
        members = scan_ustar(buf)
        if members is None:
            raise DataError(f"{self.files[shard]} is not a plain ustar tar written by "
                            f"`vissl-lite shard`")
        images, labels = {}, {}
        for m in members:
            stem, _, ext = m.name.rpartition(".")
            if ext == "cls":
                labels[stem] = int(bytes(buf[m.offset:m.offset + m.size]))
            elif not m.is_dir:
                images[stem] = m
        return [_Ref(shard, int(stem), m.offset, m.size, labels.get(stem, -1))
                for stem, m in images.items()]

    def read(self, ref: _Ref) -> bytes:
        return self._map(ref.shard)[ref.offset:ref.offset + ref.size]

    def describe(self, ref: _Ref) -> str:
        return f"{self.files[ref.shard]}:{ref.key}"

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}}  # memory maps are reopened in each worker


class ShardDataset(Dataset):
    """Random access to every sample of a shard folder (``build_dataset`` with
    ``data.name=shards``: in-memory decoding, evaluation); training streams with ``ShardLoader``."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        self.index, self.transform = ShardIndex(root), transform
        self.refs = sorted((r for s in range(len(self.index.files)) for r in self.index.refs(s)),
                           key=lambda r: r.key)
        self.targets = [r.label for r in self.refs]
        self.classes = self.index.classes

    def __len__(self) -> int:
        return len(self.refs)

    def describe(self, i: int) -> str:
        return self.index.describe(self.refs[i])

    def __getitem__(self, i: int):
        image = decode_rgb(self.index.read(self.refs[i]), self.describe(i))
        return (self.transform(image) if self.transform else image), self.refs[i].label


def _stream(index: ShardIndex, order: Sequence[int], buffer_size: int, seed: int) -> Iterator[_Ref]:
    """The references of the shards in ``order``, read one after the other, through a shuffle
    buffer (fill, then emit a random slot and refill it; flush shuffled)."""
    rng = random.Random(seed)
    buffer: List[_Ref] = []
    for shard in order:
        for ref in index.refs(shard):
            if len(buffer) < buffer_size:
                buffer.append(ref)
                continue
            j = rng.randrange(buffer_size)
            yield buffer[j]
            buffer[j] = ref
    rng.shuffle(buffer)
    yield from buffer


class _ShardEpoch(IterableDataset):
    """One epoch of one rank: worker ``w`` yields the batches of stream ``rank * W + (w + b) % W``
    from its ``(b + w) // W``-th batch on (``b`` = the first batch to produce)."""

    def __init__(self, loader: "ShardLoader", epoch: int, start_batch: int):
        self.index, self.transform = loader.index, loader.transform
        self.batch_size, self.batches = loader.batch_size, loader.batches_per_stream
        self.rank, self.streams, self.seed = loader.rank, loader.streams, loader.seed
        self.buffer_size, self.epoch, self.start = loader.shuffle_buffer, epoch, start_batch
        self.shard_order = loader.shard_order(epoch)

    def _views(self, ref: _Ref) -> Dict[str, Any]:
        image = decode_rgb(self.index.read(ref), self.index.describe(ref))
        seed = derive_seed(self.seed, self.epoch, ref.key, _SHARD_VIEWS)
        return seeded_sample(self.transform, image, seed, ref.label, ref.key)

    def __iter__(self):
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = self.rank * workers + (w + self.start) % workers
        skip = (self.start + w) // workers
        order = self.shard_order[stream::self.streams]
        refs = _stream(self.index, order, self.buffer_size,
                       derive_seed(self.seed, self.epoch, stream, _SHARD_STREAM))
        batch: List[_Ref] = []
        done = 0
        for ref in refs:
            batch.append(ref)
            if len(batch) < self.batch_size:
                continue
            if done >= skip:
                try:
                    yield default_collate([self._views(r) for r in batch])
                except VisslLiteError as e:  # carried to the main process as one line
                    yield carry(e)
                    return
            done, batch = done + 1, []
            if done == self.batches:
                return


class ShardLoader:
    """The training iterator over a shard folder (``data.name=shards``), one per rank."""

    def __init__(self, root: str | os.PathLike, transform: Callable, batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, num_workers: int = 0,
                 shuffle_buffer: int = 1000, pin_memory: bool = False):
        self.index = ShardIndex(root)
        self.transform, self.batch_size = transform, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.shuffle_buffer = max(1, shuffle_buffer)
        workers = max(num_workers, 1)
        self.streams = world_size * workers
        if len(self.index.files) < self.streams:
            raise ConfigError(f"{self.index.root} has {len(self.index.files)} shards for "
                              f"{world_size} rank(s) x {workers} worker(s); every worker needs a "
                              f"shard: write smaller shards (vissl-lite shard --shard-size) or "
                              f"lower data.num_workers")
        # the smallest stream over every epoch's assignment: the shards with the fewest samples
        per_stream = len(self.index.files) // self.streams
        fewest = sum(sorted(self.index.counts)[:per_stream])
        self.batches_per_stream = fewest // batch_size
        if self.batches_per_stream < 1:
            raise ConfigError(f"a worker's shards hold {fewest} samples, fewer than one batch of "
                              f"{batch_size}; lower train.batch_size or data.num_workers")
        self.epoch, self.start_batch = 0, 0

    def shard_order(self, epoch: int) -> List[int]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, _SHARD_STREAM))
        return torch.randperm(len(self.index.files), generator=g).tolist()

    def __len__(self) -> int:
        return self.batches_per_stream * max(self.num_workers, 1)

    @property
    def dataset(self) -> ShardIndex:
        return self.index

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        loader = DataLoader(_ShardEpoch(self, self.epoch, self.start_batch), batch_size=None,
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            worker_init_fn=leave_stop_signals_to_the_trainer,
                            prefetch_factor=4 if self.num_workers > 0 else None)
        return map(raise_carried, loader)

