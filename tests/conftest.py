"""Shared fixtures: the real CIFAR-10 JPEG archive (../shared/datasets) extracted once per session."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Optional

import pytest
import torch
from filelock import FileLock
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = Path("shared") / "datasets" / "cifar10-jpeg.tar.gz"
#: test-only oracles (lightly, installed with --no-deps: its hydra-core pin would hold omegaconf
#: below 2.4) live in their own folder, outside the package's environment (see .ci/run)
ORACLES = Path(os.environ.get("VISSL_LITE_ORACLES", REPO / ".oracles"))
if ORACLES.is_dir() and str(ORACLES) not in sys.path:
    sys.path.append(str(ORACLES))


def _origin_checkout() -> Optional[Path]:
    """The local checkout this one was cloned from (``git clone . /tmp/x``), if any."""
    try:
        url = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(url[len("file://"):] if url.startswith("file://") else url)
    return path.resolve() if url and path.is_dir() else None


def find_archive() -> Path:
    """$VISSL_CIFAR_ARCHIVE, else ../shared/datasets/ beside this checkout, else beside the
    checkout it was cloned from."""
    if os.environ.get("VISSL_CIFAR_ARCHIVE"):
        return Path(os.environ["VISSL_CIFAR_ARCHIVE"])
    beside = REPO.parent / SHARED_ARCHIVE
    origin = _origin_checkout()
    if not beside.is_file() and origin is not None and (origin.parent / SHARED_ARCHIVE).is_file():
        return origin.parent / SHARED_ARCHIVE
    return beside


if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` (README): two test processes share the cores, one intra-op thread each (and in
    # the processes a test starts), rather than four threads fighting over two cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

ARCHIVE = find_archive()
# The CIFAR-10 presets download CIFAR-10 unless $CIFAR10_ROOT names local data: tests (and the
# `vissl-lite` subprocesses they start) read the shared archive instead, never the internet.
os.environ.setdefault("CIFAR10_ROOT", str(ARCHIVE))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_vissl_lite_logger():
    """A test that builds a Trainer configures the package logger; the next test starts clean."""
    logger = logging.getLogger("vissl_lite")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    if not ARCHIVE.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {ARCHIVE}; set VISSL_CIFAR_ARCHIVE")
    return ARCHIVE


@pytest.fixture(scope="session")
def cifar_root(cifar_archive, tmp_path_factory) -> Path:
    """The extracted ImageFolder tree: <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg.

    Extracted once per test run: under pytest-xdist the workers share one copy in the run's
    common temporary folder (the first one to arrive extracts it, under a file lock)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out, done = shared / "cifar", shared / "cifar.done"
    with FileLock(str(shared / "cifar.lock")):
        if not done.exists():
            out.mkdir(exist_ok=True)
            with tarfile.open(cifar_archive) as tar:
                tar.extractall(out, filter="data")
            done.touch()
    return out / "cifar10-jpeg"


@pytest.fixture(scope="session")
def cifar_images(cifar_archive):
    """32 real CIFAR-10 training images of all classes (PIL), streamed from the archive."""
    images, seen = [], 0
    with tarfile.open(cifar_archive, "r|gz") as tar:
        for member in tar:
            if member.isfile() and "/train/" in member.name and member.name.endswith(".jpg"):
                if seen % 1500 == 0:
                    data = io.BytesIO(tar.extractfile(member).read())
                    images.append(Image.open(data).convert("RGB"))
                seen += 1
                if len(images) == 32:
                    break
    return images
