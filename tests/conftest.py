"""Shared fixtures: the real CIFAR-10 JPEG archive (../shared/datasets) extracted once per session."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = Path(os.environ.get("VISSL_CIFAR_ARCHIVE",
                              REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    if not ARCHIVE.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {ARCHIVE}; set VISSL_CIFAR_ARCHIVE")
    return ARCHIVE


@pytest.fixture(scope="session")
def cifar_root(cifar_archive, tmp_path_factory) -> Path:
    """The extracted ImageFolder tree: <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg."""
    out = tmp_path_factory.mktemp("cifar")
    with tarfile.open(cifar_archive) as tar:
        tar.extractall(out, filter="data")
    return out / "cifar10-jpeg"
