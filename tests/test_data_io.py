"""Your own data in: unlabelled folders and tars, corrupt files, downloads, one-line errors
across DataLoader workers, the uint8 cache on a read-only disk, YAML positions, runs without a
test split."""
from __future__ import annotations

import logging
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from vissl_lite.cli import main
from vissl_lite.config import load_config
from vissl_lite.data import (DataError, ImageFiles, ImageFilesArchive, build_dataset,
                             describe_dataset, load_uint8, skipped_count)
from vissl_lite.data import memory
from vissl_lite.data.config import DataConfig
from vissl_lite.data.loader import CPULoader
from vissl_lite.engine.logger import setup_console_logging
from vissl_lite.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write_images(root: Path, names, size=(8, 6), seed: int = 0) -> Path:
    """Random lossless images at ``root/<name>`` (format from the extension)."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        fmt = {".jpg": "PNG", ".jpeg": "PNG"}.get(path.suffix.lower())  # PNG bytes: exact pixels
        Image.fromarray(array).save(path, format=fmt or None)
    return root


NESTED = ["a.png", "x/b.JPG", "x/y/z/c.jpeg", "w/d.WEBP", "w/e.bmp", "w/f.PnG"]


def test_folder_any_nesting_any_case_unlabelled_from_folder_and_tar(tmp_path):
    root = write_images(tmp_path / "photos", NESTED)
    (root / "notes.txt").write_text("not an image")
    (root / "x" / "._b.JPG").write_bytes(b"macOS resource fork, not an image")
    (root / ".thumbs").mkdir()
    write_images(root / ".thumbs", ["t.png"])
    folder = build_dataset(DataConfig(name="folder", root=str(root)), "train")
    assert isinstance(folder, ImageFiles) and len(folder) == len(NESTED)
    assert folder.classes == [] and folder.targets == [-1] * len(NESTED)
    assert sorted(Path(p).relative_to(root).as_posix() for p, _ in folder.samples) == sorted(NESTED)

    with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="photos")
    archive = build_dataset(DataConfig(name="folder", root=str(tmp_path / "photos.tar.gz")))
    assert isinstance(archive, ImageFilesArchive) and len(archive) == len(folder)
    for i in range(len(folder)):
        (a, la), (b, lb) = folder[i], archive[i]
        assert la == lb == -1 and np.array_equal(np.asarray(a), np.asarray(b))

    with pytest.raises(DataError, match=r"data.name=folder has no 'test' split.*unlabelled"):
        build_dataset(DataConfig(name="folder", root=str(root)), "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no images found in it or its sub-folders"):
        build_dataset(DataConfig(name="folder", root=str(tmp_path / "empty")))
    line = describe_dataset(DataConfig(name="folder", root=str(root)), folder)
    assert line == f"data: folder {root}, split 'train': 6 images, unlabelled"
    # an ImageFolder root without train/ points at data.name=folder
    with pytest.raises(DataError, match="use data.name=folder"):
        build_dataset(DataConfig(root=str(root)), "train")


@pytest.fixture
def corrupt(tmp_path):
    root = write_images(tmp_path / "photos", [f"img{k:02d}.png" for k in range(8)])
    (root / "img03.png").write_bytes(b"this is not an image")
    return root


def test_worker_errors_arrive_as_one_line(corrupt):
    """A corrupt image read in a DataLoader worker: the original DataError, one line."""
    dataset = build_dataset(DataConfig(name="folder", root=str(corrupt)))
    loader = CPULoader(dataset, lambda im: [pil_to_tensor(im)], batch_size=4, num_workers=2)
    loader.set_epoch(0)
    with pytest.raises(DataError) as e:
        list(loader)
    message = str(e.value)
    assert message.startswith(f"corrupt or unreadable image: {corrupt / 'img03.png'} (PIL: ")
    assert len(message.splitlines()) == 1 and "Traceback" not in message


def test_on_corrupt_skip_counts_across_workers_and_in_memory(corrupt, tmp_path, caplog):
    c = DataConfig(name="folder", root=str(corrupt), on_corrupt="skip", num_workers=0,
                   cache_dir=str(tmp_path / "cache"))
    dataset = build_dataset(c)
    loader = CPULoader(dataset, lambda im: [pil_to_tensor(im)], batch_size=4, num_workers=2)
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert sum(len(b["index"]) for b in batches) == 8
    assert loader.skipped() == 1 == skipped_count(dataset)  # once, though read in 2 epochs

    caplog.set_level(logging.WARNING)
    images, labels = load_uint8(c, "train")
    assert images.shape == (7, 3, 6, 8) and labels.tolist() == [-1] * 7
    assert "skipped 1 unreadable image(s) of 8" in caplog.text
    with pytest.raises(DataError, match="on_corrupt must be one of error, skip"):
        build_dataset(DataConfig(name="folder", root=str(corrupt), on_corrupt="ignore"))


def test_unwritable_cache_is_one_warning_and_leaves_no_partial_file(tmp_path, monkeypatch, caplog):
    """torch.save raises RuntimeError (not OSError) on an unwritable file: one line, no .tmp."""
    root = write_images(tmp_path / "photos", ["a.png", "b.png"])
    cache = tmp_path / "cache"
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError(f"File {path} cannot be opened.")

    monkeypatch.setattr(memory.torch, "save", failing_save)
    caplog.set_level(logging.WARNING)
    images, _ = load_uint8(DataConfig(name="folder", root=str(root), cache_dir=str(cache),
                                      num_workers=0))
    monkeypatch.setattr(memory.torch, "save", real_save)
    assert images.shape == (2, 3, 6, 8)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1
    assert str(cache) in warnings[0] and "data.cache_dir" in warnings[0]
    assert list(cache.iterdir()) == []


def test_yaml_syntax_error_keeps_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  root: /x\n  name: [a, b\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(e.value).startswith(f"{bad}:4:6: not valid YAML: did not find expected ','")
    assert "started at line 3" in str(e.value)


def test_cifar10_downloads_into_the_data_cache_and_offline_says_where_to_put_it(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("VISSL_LITE_DATA", str(tmp_path / "data"))
    calls = []

    def offline(self):
        calls.append(self.root)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    monkeypatch.delenv("CIFAR10_ROOT", raising=False)
    cfg = load_config("simclr/cifar10_resnet18", [f"output_dir={tmp_path}/run"])
    assert cfg.data.name == "cifar10" and cfg.data.root is None and cfg.data.download
    with pytest.raises(DataError) as e:
        build_dataset(cfg.data, "train")
    message = str(e.value)
    assert calls == [str(tmp_path / "data")]
    assert f"could not download CIFAR-10 into {tmp_path / 'data'} (URLError" in message
    assert "cifar-10-python.tar.gz" in message and "cifar-10-batches-py" in message
    assert len(message.splitlines()) == 1


TINY = ["train.device=cpu", "train.batch_size=4", "train.max_steps=2", "data.num_workers=0",
        "data.image_size=16", "logger.wandb.mode=disabled", "logger.progress=false",
        "logger.plot=false", "checkpoint.every_epochs=0", "monitor.every_epochs=1",
        "monitor.train_subset=4", "monitor.test_subset=4"]


@pytest.mark.parametrize("layout", ["folder", "train_without_test"])
def test_runs_without_labels_or_test_split_skip_the_monitor_with_one_line(tmp_path, layout,
                                                                         monkeypatch):
    """Unlabelled data, or an ImageFolder train/ without test/: the monitor is skipped with one
    line saying why and training goes on (it used to fail at the first monitor epoch)."""
    if layout == "folder":
        root = write_images(tmp_path / "photos", [f"d{k % 3}/i{k}.png" for k in range(8)],
                            size=(16, 16))
        data = ["data.name=folder"]
    else:
        root = write_images(tmp_path / "tree", [f"train/c{k % 2}/i{k}.png" for k in range(8)],
                            size=(16, 16))
        data = ["data.name=imagefolder"]
    setup_console_logging()  # the trainer's "[vissl_lite] ..." lines, INFO and up
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logging.getLogger("vissl_lite").addHandler(handler)
    try:
        code = main(["pretrain", "simclr/cifar10_resnet18", *TINY, *data, f"data.root={root}",
                     f"output_dir={tmp_path / 'run'}"])
    finally:
        logging.getLogger("vissl_lite").removeHandler(handler)
    assert code == 0 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    lines = [r.getMessage() for r in records]
    skipped = [line for line in lines if "online monitor" in line]
    assert len(skipped) == 1 and len(skipped[0].splitlines()) == 1
    assert ("has no labels" if layout == "folder" else "no split folder 'test'") in skipped[0]
    start = [line for line in lines if line.startswith("device cpu")]
    assert len(start) == 1 and f"{root}" in start[0] and "8 images" in start[0]
    assert str(tmp_path / "run") in start[0]
