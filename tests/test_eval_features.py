"""Feature extraction, the feature cache, the online monitor and the online linear head."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

from vissl_lite.config import default_config
from vissl_lite.eval import OnlineLinearHead, OnlineMonitor, cached_features, extract_features
from vissl_lite.eval.transforms import normalize_uint8


class MeanColour(nn.Module):
    """A fixed 'encoder': per-channel mean and a BatchNorm whose mode the extractor must set."""

    num_features = 3

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3, affine=False)

    def forward(self, x):
        return self.bn(x.mean((2, 3)))


def test_extract_features_in_order_in_eval_mode_and_mode_restored():
    encoder = MeanColour().train()
    images = torch.rand(10, 3, 4, 4)
    labels = torch.arange(10)
    feats, out_labels = extract_features(encoder, TensorDataset(images, labels), batch_size=3,
                                         device="cpu")
    assert encoder.training
    torch.testing.assert_close(feats, images.mean((2, 3)) / (1 + 1e-5) ** 0.5)
    assert torch.equal(out_labels, labels)


@pytest.mark.parametrize("wrap", ["dataset", "loader", "tensor"])
def test_progress_bar_counts_images_to_the_total(wrap, monkeypatch, capsys):
    import vissl_lite.eval.features as features

    closed = []

    class RecordingBar(features.tqdm):
        def __init__(self, *args, disable=None, **kwargs):   # as on a terminal (capsys is not one)
            super().__init__(*args, disable=False if disable is None else disable, **kwargs)

        def close(self):
            closed.append((self.n, self.total, getattr(self, "unit", None), self.disable))
            super().close()

    monkeypatch.setattr(features, "tqdm", RecordingBar)
    images, labels = torch.rand(10, 3, 4, 4), torch.arange(10)
    data = {"dataset": TensorDataset(images, labels),
            "loader": torch.utils.data.DataLoader(TensorDataset(images, labels), batch_size=4),
            "tensor": images}[wrap]
    extract_features(MeanColour(), data, batch_size=3, device="cpu", progress=True)
    assert "extracting features" in capsys.readouterr().err
    assert closed[0] == (10, 10, "img", False)
    closed.clear()
    extract_features(MeanColour(), data, batch_size=3, device="cpu")
    assert closed[0][3] is True and capsys.readouterr().err == ""


def test_uint8_tensor_path_equals_normalised_float_path():
    encoder = MeanColour()
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    a, _ = extract_features(encoder, images, mean=mean, std=std, batch_size=4, device="cpu")
    b, _ = extract_features(encoder, normalize_uint8(images, mean, std), batch_size=4, device="cpu")
    torch.testing.assert_close(a, b)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(b, expected.mean((2, 3)) / (1 + 1e-5) ** 0.5)


def test_feature_cache_hits_on_second_call(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.randn(5, 2), torch.arange(5)

    (f1, y1), hit1 = cached_features(tmp_path, "abc", compute)
    (f2, y2), hit2 = cached_features(tmp_path, "abc", compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert torch.equal(f1, f2) and torch.equal(y1, y2)


def test_online_linear_head_learns_from_detached_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 3
    head = OnlineLinearHead(16, 3, lr=0.05)
    backbone_out = nn.Parameter(torch.zeros(1))
    for _ in range(60):
        y = torch.randint(0, 3, (32,), generator=g)
        x = centers[y] + torch.randn(32, 16, generator=g) + backbone_out
        stats = head.update(x, y)
    assert backbone_out.grad is None                     # nothing flows back into the backbone
    assert stats["online_linear_top1"] > 95.0
    y = torch.tensor([0, 1, 2, -1])                      # unlabeled samples are ignored
    assert head.update(centers[y.clamp(min=0)], y)["online_linear_top1"] == 100.0


class ToyMethod(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.backbone = encoder

    def backbone_for_eval(self):
        return self.backbone


def test_online_monitor_on_given_subsets():
    cfg = default_config("simclr", ["monitor.every_epochs=1", "monitor.knn_k=5",
                                    "monitor.online_linear=true", "data.image_size=4"])
    colours = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220]], dtype=torch.uint8)

    def make(n):
        y = torch.arange(n) % 3
        return colours[y].view(n, 3, 1, 1).expand(n, 3, 4, 4).clone(), y

    method = ToyMethod(MeanColour())
    monitor = OnlineMonitor(cfg, method, "cpu", train_data=make(30), test_data=make(12))
    assert monitor.image_size == 4
    res = monitor.run(epoch=0)
    assert res["knn_top1"] == 100.0
    bank = extract_features(method.backbone, make(30)[0], mean=monitor.mean, std=monitor.std,
                            device="cpu")[0]
    from vissl_lite.eval.rankme import rankme   # vissl_lite.eval.rankme is also the module
    assert res["rankme"] == rankme(bank)
    assert {"online_linear_top1", "online_linear_top5"} <= set(res)
    assert OmegaConf.select(cfg, "monitor.every_epochs") == 1


def _extract_on_rank(rank, world, port, images, labels, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        feats, out_labels = extract_features(MeanColour(), TensorDataset(images, labels),
                                             batch_size=2, device="cpu")
        torch.save({"feats": feats, "labels": out_labels}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_each_encode_a_shard_and_end_with_all_features_in_order(tmp_path):
    import torch.multiprocessing as mp
    from _helpers import free_port

    images, labels = torch.rand(11, 3, 4, 4), torch.arange(11)      # 11: ranks get 6 and 5
    mp.spawn(_extract_on_rank, args=(2, free_port(), images, labels, str(tmp_path)), nprocs=2,
             join=True)
    single, single_labels = extract_features(MeanColour(), TensorDataset(images, labels),
                                             batch_size=2, device="cpu")
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(out["feats"], single)
        assert torch.equal(out["labels"], single_labels)


# -- the feature cache is keyed by the data's content (issue 12) -------------------------------

def _image_folder(root, seed, classes=("a", "b"), per_class=4, size=8):
    """<root>/train/<class>/<i>.png of random colours (the same names for every seed)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c in classes:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / "train" / c / f"{i}.png")
    return root


def _context(data, cache_dir):
    import argparse

    from vissl_lite.eval.evaluator import EvalContext

    args = argparse.Namespace(data=str(data), dataset="imagefolder", image_size=8, subset_train=None,
                              subset_test=None, batch_size=4, num_workers=0, seed=0, device="cpu",
                              precision="fp32", cache_dir=str(cache_dir), no_cache=False)
    torch.manual_seed(0)
    encoder = MeanColour()
    info = {"model_id": "sha256:toy", "image_size": 8, "mean": None, "std": None, "augment": None}
    return EvalContext(args, lambda spec: (encoder, info), checkpoint="toy.pt")


def test_replacing_the_data_folder_misses_the_cache(tmp_path):
    import os
    import shutil

    data, cache = _image_folder(tmp_path / "data", seed=0), tmp_path / "cache"
    first = _context(data, cache)
    feats = first.features("train")[0]
    again = _context(data, cache)
    assert torch.equal(again.features("train")[0], feats) and again.cache_hits == {"train": True}
    shutil.rmtree(data)
    _image_folder(data, seed=1)                                   # same paths, other images
    for f in data.rglob("*.png"):
        os.utime(f, ns=(1, 1))                                    # even with a stale mtime ...
    replaced = _context(data, cache)
    new = replaced.features("train")[0]
    assert replaced.cache_hits == {"train": False}               # ... sizes differ: a new key
    assert not torch.equal(new, feats)
    torch.testing.assert_close(new, extract_features(MeanColour(), replaced.dataset("train"),
                                                     device="cpu")[0])


def test_a_truncated_cache_file_is_rebuilt_with_a_warning(tmp_path):
    from vissl_lite.eval.features import EvalWarning

    good = (torch.randn(5, 2), torch.arange(5))
    cached_features(tmp_path, "k", lambda: good)
    path = tmp_path / "features_k.pt"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.warns(EvalWarning, match="unreadable feature cache file"):
        (f, y), hit = cached_features(tmp_path, "k", lambda: good)
    assert not hit and torch.equal(f, good[0])
    assert cached_features(tmp_path, "k", lambda: None)[1]         # rewritten whole


def test_an_unwritable_cache_folder_warns_and_leaves_no_files(tmp_path):
    from vissl_lite.eval.features import EvalWarning

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(EvalWarning, match="cannot write the feature cache"):
        (f, _), hit = cached_features(blocker / "cache", "k", lambda: (torch.ones(2, 2), torch.zeros(2)))
    assert not hit and torch.equal(f, torch.ones(2, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["not_a_folder"]   # no partial files
