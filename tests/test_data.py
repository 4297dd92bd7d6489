"""Data sets: folder vs. archive on the real CIFAR-10 JPEGs, tar formats, the uint8 cache, errors."""
from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import pil_to_tensor

from vissl_lite.data import (DataError, ImageFolder, ImageFolderArchive, UInt8TensorDataset,
                             build_dataset, build_uint8_dataset, load_uint8, subset_indices)
from vissl_lite.data import tarscan
from vissl_lite.data import decode, memory
from vissl_lite.data.config import DataConfig
from vissl_lite.registry import DATASETS

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def write_folder(root: Path, split: str = "train", classes=("b_dog", "a_cat", "c_owl"),
                 per_class: int = 4, size=(8, 6), seed: int = 0, nested: bool = True) -> Path:
    """A small ImageFolder of random PNGs (lossless, so pixels can be checked exactly)."""
    rng = np.random.default_rng(seed)
    for c in classes:
        for k in range(per_class):
            sub = root / split / c / ("deep" if nested and k % 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(array).save(sub / f"img{k:02d}.png")
    return root


def write_tar(folder: Path, out: Path, arcname: str | None = None, fmt=tarfile.USTAR_FORMAT,
              mode: str = "w") -> Path:
    with tarfile.open(out, mode, format=fmt) as tar:
        tar.add(folder, arcname=arcname if arcname is not None else folder.name)
    return out


def cfg(root, **kw) -> DataConfig:
    return DataConfig(root=str(root), **kw)


# --- the shared CIFAR-10 archive ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar_pairs(cifar_root, cifar_archive):
    return {split: (build_dataset(cfg(cifar_root), split), build_dataset(cfg(cifar_archive), split))
            for split in ("train", "test")}


@pytest.mark.parametrize("split,count", [("train", 50_000), ("test", 10_000)])
def test_cifar_folder_and_archive_give_identical_samples(cifar_pairs, split, count):
    folder, archive = cifar_pairs[split]
    assert isinstance(folder, ImageFolder) and isinstance(archive, ImageFolderArchive)
    assert len(folder) == len(archive) == count
    assert folder.classes == archive.classes == CIFAR_CLASSES
    assert archive.targets == folder.targets
    assert np.bincount(archive.targets).tolist() == [count // 10] * 10
    names = [os.path.relpath(p, folder.root) for p, _ in folder.samples]
    assert [n.split("/", 2)[2] for n, _ in archive.samples] == names
    for i in np.linspace(0, count - 1, 300 if split == "train" else 100).astype(int):
        (a, la), (b, lb) = folder[i], archive[i]
        assert a.mode == b.mode == "RGB" and a.size == (32, 32)
        assert la == lb and np.array_equal(pixels(a), pixels(b)), f"sample {i} differs"


def test_cifar_archive_split_not_found_lists_splits(cifar_archive):
    with pytest.raises(DataError) as e:
        build_dataset(cfg(cifar_archive, test_split="val"), "test")
    assert "'val'" in str(e.value) and "cifar10-jpeg/test" in str(e.value)
    assert "cifar10-jpeg/train" in str(e.value)


def test_registry_has_the_datasets():
    assert {"cifar10", "cifar100", "stl10", "imagefolder"} <= set(DATASETS.names())


# --- archives ------------------------------------------------------------------------------------

def assert_same_samples(a, b):
    assert a.classes == b.classes and a.targets == b.targets and len(a) == len(b)
    for i in range(len(a)):
        assert np.array_equal(pixels(a[i][0]), pixels(b[i][0])), f"sample {i} differs"


def test_ustar_archive_is_parsed_by_our_reader(tmp_path):
    root = write_folder(tmp_path / "d")
    path = write_tar(root, tmp_path / "d.tar", fmt=tarfile.USTAR_FORMAT)
    assert len(tarscan.scan_ustar(path.read_bytes())) == 12 + 3 + 3 + 2  # files, dirs
    assert_same_samples(build_dataset(cfg(path), "train"), build_dataset(cfg(root), "train"))


@pytest.mark.parametrize("name,fmt,mode", [("d.tar", tarfile.GNU_FORMAT, "w"),
                                           ("d.tar.gz", tarfile.PAX_FORMAT, "w:gz"),
                                           ("d.tar.bz2", tarfile.PAX_FORMAT, "w:bz2"),
                                           ("d.tar.xz", tarfile.GNU_FORMAT, "w:xz")])
def test_long_names_fall_back_to_tarfile(tmp_path, name, fmt, mode):
    """GNU and pax long-name headers are read by tarfile; same samples as the folder."""
    root = write_folder(tmp_path / "d")
    write_folder(root, classes=("x" * 120,), per_class=2, seed=1)
    path = write_tar(root, tmp_path / name, fmt=fmt, mode=mode)
    assert tarscan.scan_ustar(tarscan.read_compressed(path) or path.read_bytes()) is None
    archive = build_dataset(cfg(path), "train")
    assert "x" * 120 in archive.classes
    assert_same_samples(archive, build_dataset(cfg(root), "train"))


def test_archive_without_top_folder_and_split_detection(tmp_path):
    root = write_folder(tmp_path / "d", split="train")
    write_folder(root, split="val", per_class=1)
    path = write_tar(root, tmp_path / "flat.tar.gz", arcname="", mode="w:gz")
    assert len(build_dataset(cfg(path), "train")) == 12
    assert len(build_dataset(cfg(path, test_split="val"), "test")) == 3
    with pytest.raises(DataError, match=r"no split folder 'test'.*found folders train, val"):
        build_dataset(cfg(path), "test")


@pytest.mark.parametrize("name,mode", [("d.tar", "w"), ("d.tar.gz", "w:gz")])
def test_archive_in_dataloader_workers(tmp_path, name, mode):
    root = write_folder(tmp_path / "d", per_class=6)
    archive = ImageFolderArchive(write_tar(root, tmp_path / name, mode=mode), "train",
                                 transform=pil_to_tensor)
    archive[0]  # opens the memory map (plain tar) in this process; must not travel to workers
    clone = pickle.loads(pickle.dumps(archive))
    assert torch.equal(clone[3][0], archive[3][0])
    folder = build_dataset(cfg(root), "train", transform=pil_to_tensor)
    loader = DataLoader(archive, batch_size=5, num_workers=2)
    images, labels = map(torch.cat, zip(*loader))
    assert torch.equal(labels, torch.tensor(folder.targets))
    assert torch.equal(images, torch.stack([folder[i][0] for i in range(len(folder))]))


# --- in-memory uint8 + cache ---------------------------------------------------------------------

@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = memory.decode_split

    def counting(dataset, data_cfg):
        calls.append(len(dataset))
        return real(dataset, data_cfg)

    monkeypatch.setattr(memory, "decode_split", counting)
    return calls


def test_load_uint8_cache_round_trip_and_invalidation(tmp_path, count_decodes):
    root = write_folder(tmp_path / "d")
    c = cfg(root, cache_dir=str(tmp_path / "cache"), num_workers=0)
    images, labels = load_uint8(c, "train")
    reference = build_dataset(c, "train")
    assert images.dtype == torch.uint8 and images.shape == (12, 3, 6, 8)
    assert labels.dtype == torch.long and labels.tolist() == reference.targets
    for i in range(len(reference)):
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), pixels(reference[i][0]))
    assert count_decodes == [12] and len(list((tmp_path / "cache").glob("*.pt"))) == 1

    again, labels_again = load_uint8(c, "train")
    assert count_decodes == [12], "second load must come from the cache"
    assert torch.equal(again, images) and torch.equal(labels_again, labels)

    changed = reference.samples[5][0]
    Image.fromarray(np.full((6, 8, 3), 7, np.uint8)).save(changed)
    fresh, _ = load_uint8(c, "train")
    assert count_decodes == [12, 12], "a changed image must invalidate the cache"
    assert (fresh[5] == 7).all() and torch.equal(fresh[:5], images[:5])
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1, "the stale cache is removed"

    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "train" / "a_cat" / "new.png")
    assert len(load_uint8(c, "train")[0]) == 13 and count_decodes == [12, 12, 13]


def test_load_uint8_archive_cache_follows_the_file(tmp_path, count_decodes):
    root = write_folder(tmp_path / "d")
    path = write_tar(root, tmp_path / "d.tar.gz", mode="w:gz")
    c = cfg(path, cache_dir=str(tmp_path / "cache"), num_workers=0)
    first, _ = load_uint8(c, "train")
    load_uint8(c, "train")
    assert count_decodes == [12]
    Image.fromarray(np.full((6, 8, 3), 3, np.uint8)).save(root / "train" / "a_cat" / "img00.png")
    write_tar(root, path, mode="w:gz")
    second, _ = load_uint8(c, "train")
    assert count_decodes == [12, 12] and (second[0] == 3).all() and not torch.equal(first, second)


def test_load_uint8_parallel_workers_and_subset(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "d", per_class=7)
    monkeypatch.setattr(decode, "CHUNK", 4)  # 6 chunks over 2 worker processes
    serial = load_uint8(cfg(root, cache_dir=str(tmp_path / "c0"), num_workers=0), "train")
    parallel = load_uint8(cfg(root, cache_dir=str(tmp_path / "c2"), num_workers=2), "train")
    assert torch.equal(serial[0], parallel[0]) and torch.equal(serial[1], parallel[1])

    sub_cfg = cfg(root, cache_dir=str(tmp_path / "c0"), subset=7, num_workers=0)
    subset = build_dataset(sub_cfg, "train")
    images, labels = load_uint8(sub_cfg, "train")
    assert len(subset) == len(images) == 7 and labels.tolist() == subset.targets
    assert sorted(np.bincount(subset.targets).tolist()) == [2, 2, 3]
    for i in range(7):
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), pixels(subset[i][0]))
    assert subset.classes == ["a_cat", "b_dog", "c_owl"]

    dataset = build_uint8_dataset(sub_cfg, "train")
    assert isinstance(dataset, UInt8TensorDataset) and dataset.classes == subset.classes
    image, label = dataset[3]
    assert image.dtype == torch.uint8 and torch.equal(image, images[3]) and label == labels[3]


def test_load_uint8_sizes(tmp_path):
    root = write_folder(tmp_path / "d", classes=("a",), per_class=2, size=(8, 6))
    write_folder(root, classes=("b",), per_class=2, size=(12, 10), seed=1)
    with pytest.raises(DataError) as e:
        load_uint8(cfg(root, cache_dir=str(tmp_path / "c"), num_workers=0), "train")
    assert "data.image_size" in str(e.value) and "img00.png is 8x6" in str(e.value)
    assert "is 12x10" in str(e.value)

    images, _ = load_uint8(cfg(root, cache_dir=str(tmp_path / "c"), image_size=4,
                               num_workers=0), "train")
    assert images.shape == (4, 3, 4, 4)
    flat = tmp_path / "flat"
    for k, v in enumerate((10, 200)):
        (flat / "train" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 8, 3), v, np.uint8)).save(flat / "train" / "a" / f"{k}.png")
    images, _ = load_uint8(cfg(flat, cache_dir=str(tmp_path / "c"), image_size=4,
                               num_workers=0), "train")
    assert images[0].unique().tolist() == [10] and images[1].unique().tolist() == [200]


def test_uint8_dataset_rejects_float_images():
    with pytest.raises(DataError, match="uint8"):
        UInt8TensorDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2))


# --- subsets and config --------------------------------------------------------------------------

def test_subset_indices_are_class_balanced_fixed_and_sorted():
    labels = np.repeat(np.arange(4), [2, 50, 60, 70])
    keep = subset_indices(labels, 42)
    assert len(keep) == 42 and len(set(keep.tolist())) == 42
    assert np.all(np.diff(keep) > 0)
    counts = np.bincount(labels[keep]).tolist()
    assert counts[0] == 2 and sorted(counts[1:]) == [13, 13, 14]
    assert np.array_equal(keep, subset_indices(labels, 42))
    assert not np.array_equal(keep, subset_indices(labels, 42, seed=1))
    assert len(subset_indices(labels, 10_000)) == len(labels)
    with pytest.raises(DataError, match="positive"):
        subset_indices(labels, 0)


def test_build_dataset_accepts_dict_and_omegaconf(tmp_path):
    root = write_folder(tmp_path / "d")
    section = OmegaConf.structured(DataConfig(root=str(root)))
    assert len(build_dataset(section, "train")) == len(build_dataset({"root": str(root)})) == 12
    with pytest.raises(DataError, match="unknown data option.*rooot"):
        build_dataset({"rooot": str(root)}, "train")


# --- errors --------------------------------------------------------------------------------------

def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"data.root does not exist: {missing}.*ImageFolder"):
        build_dataset(cfg(missing), "train")
    with pytest.raises(DataError, match="data.root is not set"):
        build_dataset(DataConfig(), "train")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="not a tar archive"):
        build_dataset(cfg(text), "train")


def test_folder_layout_errors(tmp_path):
    root = write_folder(tmp_path / "d")
    with pytest.raises(DataError, match=r"no split folder 'test'; found train"):
        build_dataset(cfg(root), "test")
    (root / "val").mkdir()
    with pytest.raises(DataError, match=r"no class folders"):
        build_dataset(cfg(root, test_split="val"), "test")
    (root / "val" / "empty_class").mkdir()
    (root / "val" / "empty_class" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=r"empty_class"):
        build_dataset(cfg(root, test_split="val"), "test")


def test_archive_without_images(tmp_path):
    folder = tmp_path / "d" / "train" / "cat"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no images in class folder\(s\) cat"):
        build_dataset(cfg(write_tar(tmp_path / "d", tmp_path / "a.tar", arcname="")), "train")
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    with pytest.raises(DataError, match="archive is empty"):
        build_dataset(cfg(empty), "train")
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(DataError, match="cannot decompress"):
        build_dataset(cfg(bogus), "train")


@pytest.fixture
def corrupt_folder(tmp_path):
    root = write_folder(tmp_path / "d", per_class=3)
    bad = root / "train" / "a_cat" / "img00.png"
    bad.write_bytes(b"this is not an image")
    truncated = root / "train" / "b_dog" / "img02.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    return root, bad, truncated


def test_corrupt_image_named_at_read_time(corrupt_folder, tmp_path):
    root, bad, truncated = corrupt_folder
    dataset = build_dataset(cfg(root), "train")
    index = [p for p, _ in dataset.samples].index(str(bad))
    with pytest.raises(DataError, match=f"corrupt or unreadable image: {bad} \\(PIL: "):
        dataset[index]
    with pytest.raises(DataError, match=f"corrupt or unreadable image: {truncated}"):
        dataset[[p for p, _ in dataset.samples].index(str(truncated))]
    dataset[index + 1]  # the others still read

    archive = build_dataset(cfg(write_tar(root, tmp_path / "d.tar")), "train")
    with pytest.raises(DataError, match=r"corrupt or unreadable image: .*d\.tar:d/train/a_cat/img00"):
        archive[index]


def test_corrupt_image_named_at_decode_time(corrupt_folder, tmp_path, monkeypatch):
    root, bad, _ = corrupt_folder
    monkeypatch.setattr(decode, "CHUNK", 2)
    with pytest.raises(DataError) as e:
        load_uint8(cfg(root, cache_dir=str(tmp_path / "c"), num_workers=2), "train")
    assert str(e.value).startswith(f"corrupt or unreadable image: {bad} (PIL: ")
    assert "Traceback" not in str(e.value)
    assert not list((tmp_path / "c").glob("*.pt"))


def test_torchvision_dataset_missing_says_how_to_fix(tmp_path, cifar_root):
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                         ("stl10", "stl10_binary")):
        with pytest.raises(DataError) as e:
            build_dataset(cfg(tmp_path, name=name, download=False), "train")
        message = str(e.value)
        assert "data.download=true" in message and str(tmp_path) in message and folder in message
    # the CIFAR-10 JPEGs as an ImageFolder tree are read as such: same classes in the same order
    as_cifar = build_dataset(cfg(cifar_root, name="cifar10", subset=20), "test")
    as_folder = build_dataset(cfg(cifar_root, subset=20), "test")
    assert as_cifar.classes == as_folder.classes == CIFAR_CLASSES
    assert as_cifar.targets == as_folder.targets
    with pytest.raises(DataError, match="splits 'train' and 'test', not 'val'"):
        build_dataset(cfg(tmp_path, name="cifar10", test_split="val"), "test")
