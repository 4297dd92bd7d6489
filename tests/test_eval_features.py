"""Feature extraction, the feature cache, the online monitor and the online linear head."""
from __future__ import annotations

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
    from vissl_lite.eval import rankme
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
