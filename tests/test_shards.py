"""Tar shards (vissl_lite/data/shards.py): write/read round trip, every image once per epoch over
2 ranks x 2 workers, exact mid-epoch resume, and training on shards from the command line."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from vissl_lite.cli import main
from vissl_lite.data import build_dataset
from vissl_lite.data.config import DataConfig
from vissl_lite.data.shards import ShardLoader, write_shards
from vissl_lite.errors import ConfigError


def noisy_views(image):
    """A view that depends on the RNG (so the per-sample seeding is checked, too)."""
    x = pil_to_tensor(image).float()
    return [x + torch.rand(x.shape), x - torch.rand(x.shape)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for k in range(24):
        folder = root / "train" / f"class{k % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    out = tmp_path_factory.mktemp("shards")
    source = build_dataset(DataConfig(root=str(root)), "train")
    write_shards(source, out, shard_size=3, progress=False)
    return source, out


def test_written_shards_hold_every_sample_in_webdataset_layout(shards):
    source, out = shards
    index = json.loads((out / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [3] * 8 and index["total"] == 24
    assert index["classes"] == ["class0", "class1", "class2"]
    with tarfile.open(out / "000000.tar") as tar:
        assert tar.getnames() == ["000000.png", "000000.cls", "000001.png", "000001.cls",
                                  "000002.png", "000002.cls"]
    read = build_dataset(DataConfig(name="shards", root=str(out)), "train")
    assert len(read) == 24 and read.targets == source.targets and read.classes == source.classes
    for i in range(24):
        assert np.array_equal(np.asarray(read[i][0]), np.asarray(source[i][0]))


def epoch_batches(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return list(loader)


def test_two_ranks_two_workers_see_every_image_once_and_resume_exactly(shards):
    source, out = shards
    loaders = [ShardLoader(out, noisy_views, batch_size=2, rank=r, world_size=2, seed=3,
                           num_workers=2, shuffle_buffer=4) for r in range(2)]
    assert [len(loader) for loader in loaders] == [6, 6]
    epoch = [epoch_batches(loader, 0) for loader in loaders]
    seen = torch.cat([b["index"] for rank in epoch for b in rank]).tolist()
    assert sorted(seen) == list(range(24))                      # all, no duplicates
    for batch in epoch[0] + epoch[1]:
        assert batch["labels"].tolist() == [source.targets[i] for i in batch["index"]]

    for start in (1, 4):                                # a run stopped after `start` batches
        tail = epoch_batches(loaders[1], 0, start)
        assert len(tail) == 6 - start
        for a, b in zip(epoch[1][start:], tail):
            assert torch.equal(a["index"], b["index"])
            assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))

    other = torch.cat([b["index"] for b in epoch_batches(loaders[0], 1)])
    assert other.tolist() != torch.cat([b["index"] for b in epoch[0]]).tolist()


def test_too_few_shards_for_the_workers(shards):
    _, out = shards
    with pytest.raises(ConfigError, match=r"8 shards for 4 rank\(s\) x 4 worker\(s\)"):
        ShardLoader(out, noisy_views, batch_size=2, rank=0, world_size=4, num_workers=4)


def test_shard_command_and_training_on_shards(tmp_path, capsys):
    rng = np.random.default_rng(1)
    photos = tmp_path / "photos"
    for k in range(16):
        (photos / f"d{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            photos / f"d{k % 2}" / f"{k}.jpg")
    assert main(["shard", str(photos), "--name", "folder", "--out", str(tmp_path / "sh"),
                 "--shard-size", "4"]) == 0
    assert "wrote 16 images" in capsys.readouterr().out
    code = main(["pretrain", "simclr/cifar10_resnet18", "data.name=shards",
                 f"data.root={tmp_path / 'sh'}", "data.num_workers=0", "data.image_size=16",
                 "train.device=cpu", "train.batch_size=4", "train.max_steps=2",
                 "monitor.every_epochs=0", "logger.wandb.mode=disabled", "logger.progress=false",
                 "logger.plot=false", f"output_dir={tmp_path / 'run'}"])
    assert code == 0 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


# --- the hybrid path: bytes in workers, decode_jpeg + GPU views on the device (CPU here) ---------

def test_hybrid_decode_matches_pil_and_views_match_the_in_memory_gpu_path(tmp_path, cifar_archive):
    from vissl_lite.augment import ViewSpec, build_gpu_views
    from vissl_lite.data import load_uint8
    from vissl_lite.data.hybrid import HybridLoader, decode_batch

    jpeg = build_dataset(DataConfig(root=str(cifar_archive), subset=64), "test")
    encoded = [torch.frombuffer(bytearray(jpeg.dataset.read_bytes(i)), dtype=torch.uint8)
               for i in jpeg.indices]
    decoded = decode_batch(encoded, 32).int()
    pil = torch.stack([pil_to_tensor(jpeg[i][0]) for i in range(64)]).int()
    assert decoded.shape == (64, 3, 32, 32)
    assert (decoded - pil).abs().float().mean() < 1.0            # libjpeg-turbo both ways

    rng = np.random.default_rng(2)            # lossless PNGs at the view size: exact pixels
    root = tmp_path / "tree"
    for k in range(24):
        (root / "train" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            root / "train" / f"c{k % 2}" / f"{k}.png")
    cfg = DataConfig(root=str(root), image_size=16, cache_dir=str(tmp_path / "c"), num_workers=0)
    views = build_gpu_views(ViewSpec("simclr", 2, 0), None, 16)
    loader = HybridLoader(build_dataset(cfg), views, batch_size=8, image_size=16, seed=4,
                          num_workers=2)
    loader.set_epoch(1)
    batches = list(loader)
    assert len(batches) == 3 and sorted(torch.cat([b["index"] for b in batches]).tolist()) == \
        list(range(24))
    images, labels = load_uint8(cfg)                             # the in-memory path's uint8
    from vissl_lite.data.loader import _GPU_AUGMENT, derive_seed
    for b, batch in enumerate(batches):
        gen = torch.Generator().manual_seed(derive_seed(4, 1, b, 0, _GPU_AUGMENT))
        expected = views(images[batch["index"]], generator=gen)
        assert all(torch.equal(x, y) for x, y in zip(batch["views"], expected))
        assert torch.equal(batch["labels"], labels[batch["index"]])
    loader.set_epoch(1, start_batch=2)
    tail = list(loader)
    assert len(tail) == 1 and torch.equal(tail[0]["views"][0], batches[2]["views"][0])
