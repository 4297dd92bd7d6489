"""Feature extraction from a frozen encoder, and an on-disk cache of the features.

Every evaluator but the augmented linear probe works on features computed once: batched, without
gradients, in bf16 autocast on a GPU, with the encoder in eval mode. Under ``torch.distributed``
each rank encodes one contiguous shard of the data and the shards are gathered, so every rank
ends with all features in the data set's order.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm
from torch.utils.data import DataLoader, Dataset, Subset

from vissl_lite import distributed as dist
from vissl_lite.errors import EvalError
from vissl_lite.eval.transforms import normalize_uint8

Features = Tuple[torch.Tensor, torch.Tensor]


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank() if dist.is_dist() else torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError("device 'cuda' was asked for but CUDA is not available; use --device cpu or auto")
    return device


def random_subset(n: int, size: Optional[int], seed: int) -> List[int]:
    """A fixed random ``size`` of ``range(n)`` (all when ``size`` is None or >= n), sorted."""
    if not size or size >= n:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values.tolist()


def _shard(n: int) -> range:
    per_rank = math.ceil(n / dist.world_size())
    start = min(dist.rank() * per_rank, n)
    return range(start, min(start + per_rank, n))


def _gather_shards(x: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate each rank's contiguous shard (padded to equal length) back into ``n`` rows."""
    if dist.world_size() == 1:
        return x
    per_rank = math.ceil(n / dist.world_size())
    padded = x.new_zeros((per_rank, *x.shape[1:]))
    padded[: len(x)] = x
    nccl = torch.distributed.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    return dist.gather_no_grad(padded.to(device)).cpu()[:n]


def _batches(data, labels, batch_size: int, num_workers: int, shard: bool):
    """Yield (images, labels) batches of this rank's shard of a tensor, Dataset or DataLoader."""
    if isinstance(data, DataLoader):
        yield from data
        return
    if isinstance(data, torch.Tensor):
        if labels is None:
            labels = torch.full((len(data),), -1, dtype=torch.long)
        if len(labels) != len(data):
            raise EvalError(f"{len(data)} images but {len(labels)} labels; pass one label per image")
        idx = _shard(len(data)) if shard else range(len(data))
        for i in range(idx.start, idx.stop, batch_size):
            j = min(i + batch_size, idx.stop)
            yield data[i:j], labels[i:j]
        return
    if isinstance(data, Dataset):
        subset = Subset(data, list(_shard(len(data)))) if shard else data
        yield from DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                              pin_memory=torch.cuda.is_available(), drop_last=False)
        return
    raise EvalError(f"cannot extract features from a {type(data).__name__}; pass a Dataset, a "
                    f"DataLoader or a tensor of images")


@torch.no_grad()
def extract_features(encoder: nn.Module, data, *, labels: Optional[torch.Tensor] = None,
                     batch_size: int = 256, device: Union[str, torch.device, None] = "auto",
                     num_workers: int = 0, precision: str = "auto",
                     mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                     progress: bool = False) -> Features:
    """Encode ``data`` with the frozen ``encoder``; return (features float32 (N, D), labels (N,)) on CPU.

    ``data`` is a Dataset yielding (image tensor, label), a DataLoader (iterated as-is, not sharded),
    or a tensor of images: uint8 (N, 3, H, W) normalised on the device with ``mean``/``std``, or
    float already normalised (then ``labels`` gives their labels). ``precision``: "auto" (bf16 on
    CUDA, fp32 on CPU), "bf16" or "fp32". The encoder's train/eval mode is restored afterwards.
    """
    device = resolve_device(device)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise EvalError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    shard = not isinstance(data, DataLoader)
    n = len(data) if shard else None
    was_training = encoder.training
    encoder.eval()
    feats, labs = [], []
    batches = _batches(data, labels, batch_size, num_workers, shard)
    bar = _progress_bar(len(_shard(n)) if shard else _loader_len(data), progress)
    try:
        for images, y in batches:
            bar.update(len(images))
            images = images.to(device, non_blocking=True)
            if images.dtype == torch.uint8:
                if mean is None or std is None:
                    raise EvalError("uint8 images need mean and std to be normalised")
                images = normalize_uint8(images, mean, std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                f = encoder(images)
            if f.ndim != 2:
                raise EvalError(f"the encoder returned features of shape {tuple(f.shape)}; an "
                                f"evaluator needs pooled features (B, D)")
            feats.append(f.float().cpu())
            labs.append(torch.as_tensor(y).long().cpu())
    finally:
        bar.close()
        encoder.train(was_training)
    if not feats:
        raise EvalError("no images to extract features from (empty data set or shard)")
    f, y = torch.cat(feats), torch.cat(labs)
    if shard and dist.world_size() > 1:
        f, y = _gather_shards(f, n), _gather_shards(y, n)
    return f, y


def _loader_len(loader: DataLoader) -> Optional[int]:
    try:
        return len(loader.sampler)
    except TypeError:  # an iterable-style data set has no length
        return None


def _progress_bar(total: Optional[int], enabled: bool) -> tqdm:
    """Images encoded so far, with the rate in images/s (rank 0 only, and only on a terminal:
    ``disable=None``; elsewhere its redraws would be garbage in the log; a no-op bar otherwise)."""
    return tqdm(total=total, desc="extracting features", unit="img", leave=False,
                dynamic_ncols=True, disable=None if enabled and dist.is_main() else True)


def file_digest(path: Union[str, os.PathLike], chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (the identity of a checkpoint in the feature cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class EvalWarning(UserWarning):
    """Something an evaluation worked around (an unreadable cache file, an unwritable cache folder)."""


def data_fingerprint(path: Union[str, os.PathLike, None], dataset: Optional[Dataset] = None) -> str:
    """SHA-256 of what the images of a data path are, not of its name.

    A folder: every file under it (relative path, size, mtime). An archive or other file: its size
    and mtime and, when ``dataset`` lists its members (``.samples`` of an ImageFolder archive), the
    member names with their sizes. Replacing the data behind a path therefore changes the key.
    """
    h = hashlib.sha256()
    if path:
        p = Path(os.path.expandvars(str(path))).expanduser()
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    st = os.stat(os.path.join(root, name))
                    rel = os.path.relpath(os.path.join(root, name), p)
                    h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        elif p.exists():
            st = p.stat()
            h.update(f"file\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    samples = getattr(base, "samples", None)
    if samples is not None:
        h.update(repr([(str(s[0]), int(s[1])) for s in samples]).encode())
        sizes = getattr(base, "_sizes", None)
        if sizes is not None:
            h.update(bytes(memoryview(sizes)))
    return h.hexdigest()


def cache_key(model_id: str, data_id: str, split: str, image_size: int,
              subset: Optional[int] = None, extra: str = "") -> str:
    """A file-name-safe key for features of one encoder on one split of one data set.

    ``model_id`` identifies the weights (a checkpoint's SHA-256), ``data_id`` the images
    (``data_fingerprint``); ``extra`` the rest that changes features (transform, seed, ...).
    """
    text = "|".join(map(str, (model_id, data_id, split, image_size, subset, extra)))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> Optional[Features]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        feats, labels = blob["features"], blob["labels"]
        if not (isinstance(feats, torch.Tensor) and isinstance(labels, torch.Tensor)
                and feats.ndim == 2 and len(feats) == len(labels)):
            raise ValueError("unexpected contents")
        return feats, labels
    except Exception as e:  # truncated, corrupt or foreign file: rebuild it
        warnings.warn(f"ignoring the unreadable feature cache file {path} ({type(e).__name__}); "
                      f"computing the features again", EvalWarning, stacklevel=3)
        return None


def _write_cache(path: Path, feats: torch.Tensor, labels: torch.Tensor) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features": feats, "labels": labels}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        warnings.warn(f"cannot write the feature cache in {path.parent} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); continuing without it "
                      f"(set --cache-dir to a writable folder, or --no-cache)", EvalWarning,
                      stacklevel=3)
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def cached_features(cache_dir: Optional[Union[str, os.PathLike]], key: str,
                    compute: Callable[[], Features]) -> Tuple[Features, bool]:
    """Load features from ``cache_dir/features_<key>.pt`` or compute and store them; returns
    (features, hit).

    Only rank 0 writes, atomically (a temporary file, then a rename). An unreadable cache file is
    ignored (a warning) and rewritten; an unwritable folder gives a warning and no cache. With
    ``cache_dir=None`` nothing is cached.
    """
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"features_{key}.pt"
    if path.is_file():
        cached = _read_cache(path)
        if cached is not None:
            return cached, True
    feats, labels = compute()
    if dist.is_main():
        _write_cache(path, feats, labels)
    return (feats, labels), False
