"""Seeding and RNG state capture, for reproducible runs and exact resume.

``seed_everything`` seeds Python, NumPy and torch (CPU and CUDA); with ``deterministic=True`` it
also asks torch for deterministic kernels (bitwise-reproducible runs, somewhat slower on GPU).
RNG states are stored as tensors and primitives so that checkpoints load with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Dict, Iterator

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (numpy's SeedSequence), for RNG streams
    that must not overlap (per rank, per epoch, per sample)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]).generate_state(2)
    return ((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def rng_state() -> Dict[str, Any]:
    version, keys, gauss = random.getstate()
    np_name, np_keys, *np_rest = np.random.get_state()
    state = {
        "python": [version, torch.tensor(keys, dtype=torch.int64), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), *np_rest],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(int(k) for k in keys.tolist()), gauss))
    np_name, np_keys, *np_rest = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), *np_rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (e.g. an online evaluation) without changing the training RNG streams."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
