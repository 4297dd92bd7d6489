"""What the three training iterators (``CPULoader``, ``ShardLoader``, ``HybridLoader``) share:
per-sample seeded views, the sampler that resumes mid-epoch, and user errors carried out of
DataLoader worker processes.

User errors (``VisslLiteError``, e.g. a corrupt JPEG) raised in a DataLoader worker come back as
the same error with its one-line message, not as torch's "Caught DataError in DataLoader worker
process 0" with the worker's traceback pasted in: the worker returns the error as a sample
(``carry``), the collate function passes it through (``collate_or_error``), and the main process
raises it (``raise_carried``).
"""
from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers its exit handler now, so that ours runs first
import random
import signal
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler, default_collate, get_worker_info
from torch.utils.data._utils.worker import _worker_loop

from vissl_lite import errors
from vissl_lite.augment.boxes import batch_entries
from vissl_lite.errors import VisslLiteError
from vissl_lite.rng import derive_seed

__all__ = ["seeded_sample", "carry", "carried", "collate_or_error", "raise_carried",
           "ResumableSampler", "leave_stop_signals_to_the_trainer", "derive_seed"]

#: purposes of the seeds derived with ``derive_seed`` (each stream of random numbers its own)
_PERMUTATION, _AUGMENT, _GPU_AUGMENT = 1, 2, 3


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """SIGINT/SIGTERM/SIGUSR1 sent to the whole process group (Ctrl-C in a terminal, ``timeout``,
    SLURM, ``scancel``) must not kill the workers before the main process has written its
    checkpoint; it shuts them down."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def _kill_workers_left_at_exit() -> None:
    """At interpreter exit, multiprocessing stops daemonic children with SIGTERM and then joins
    them; DataLoader workers that ignore SIGTERM (above) and are still alive (an iterator kept
    until exit, persistent workers) would make that join wait forever, so they are killed first.
    Every daemonic child is killed, not only those that ignore SIGTERM already: a worker that has
    not yet run its ``worker_init_fn`` would start ignoring it between the terminate and the join
    (a race seen in the tests); daemonic children are stopped at exit anyway.
    Registered after multiprocessing's own exit handler, so it runs before it."""
    stuck = [process for process in multiprocessing.active_children()
             if process.daemon and process.pid]
    for process in stuck:
        process.kill()
    for process in stuck:
        try:
            process.join(timeout=5)
        except RuntimeError:  # torch's SIGCHLD handler reports the worker we just killed
            pass


atexit.register(_kill_workers_left_at_exit)


def seeded_sample(transform: Callable, image, seed: int, label: int, index: int) -> Dict[str, Any]:
    """``{"views", "labels", "index"}`` of one sample, ``transform`` run with the torch and python
    RNGs seeded by ``seed``; the caller's RNG state is restored afterwards."""
    # the CPU generator alone: ``torch.manual_seed`` also queues the CUDA seeds (recording a stack
    # trace) and took 107-144 us a call against 1 us (2-core machine), a third of the time of two
    # SimCLR views at 32 px; the views draw from the CPU generator only.
    generator = torch.default_generator
    torch_state, py_state = generator.get_state(), random.getstate()
    generator.manual_seed(seed)
    random.seed(seed)
    # one image's ops are too small for torch's intra-op thread pool: in the main process
    # (num_workers=0) its threads cost more than they give (measured: 0.72 s against 0.04 s per
    # SimCLR image at 224 px on a busy 2-core machine). DataLoader workers run 1 thread already.
    threads = torch.get_num_threads() if get_worker_info() is None else 1
    if threads > 1:
        torch.set_num_threads(1)
    try:
        views = transform(image)
    finally:
        if threads > 1:
            torch.set_num_threads(threads)
        generator.set_state(torch_state)
        random.setstate(py_state)
    if isinstance(views, torch.Tensor):
        views = [views]
    return {**batch_entries(views), "labels": int(label), "index": int(index)}


def carry(error: VisslLiteError) -> Dict[str, Any]:
    """A user error raised in a worker, as a sample the main process raises (``raise_carried``)."""
    return {"error": (type(error).__name__, str(error))}


def carried(items: Sequence[Any]) -> Optional[Dict[str, Any]]:
    """The first carried error among a batch's samples, else None."""
    for item in items:
        if isinstance(item, dict) and "error" in item:
            return item
    return None


def collate_or_error(items):
    """``default_collate``, except that a user error returned by a worker passes through."""
    error = carried(items)
    return error if error is not None else default_collate(items)


def raise_carried(batch: Dict[str, Any]) -> Dict[str, Any]:
    """Raise the user error a worker returned (same class, its one-line message), else the batch."""
    if "error" in batch:
        name, message = batch["error"]
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, VisslLiteError)):
            cls = errors.DataError
        raise cls(message)
    return batch


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffle, drop_last, seed + epoch) that can start mid-epoch and that
    yields ``(index, augmentation seed)`` pairs, the seed drawn per sample index for the epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator:
        indices = list(super().__iter__())[self.start:]
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, _AUGMENT))
        seeds = torch.randint(0, 2 ** 62, (len(self.dataset),), generator=g).tolist()
        return iter([(i, seeds[i]) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start
