"""The training iterator: sharding, per-sample augmentation seeds, mid-epoch restart."""
from __future__ import annotations

import torch

import _toy
from vissl_lite.data.loader import CPULoader, DeviceLoader


def _batches(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return list(loader)


def test_ranks_split_the_global_batch_and_views_do_not_depend_on_world_or_workers():
    data = _toy.ToyImages(32)
    single = CPULoader(data, _toy.toy_views, batch_size=8, seed=5)
    ranks = [CPULoader(data, _toy.toy_views, batch_size=4, rank=r, world_size=2, seed=5,
                       num_workers=1 if r else 0) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 4
    one = _batches(single, epoch=1)
    two = [_batches(loader, epoch=1) for loader in ranks]
    for step in range(4):
        union = torch.cat([two[0][step]["index"], two[1][step]["index"]])
        assert sorted(union.tolist()) == sorted(one[step]["index"].tolist())
        views_by_index = {int(i): v for i, v in zip(one[step]["index"], one[step]["views"][0])}
        for part in (two[0][step], two[1][step]):
            for i, v in zip(part["index"], part["views"][0]):
                assert torch.equal(v, views_by_index[int(i)])
            assert torch.equal(part["labels"], data.labels[part["index"]])


def test_mid_epoch_start_replays_the_rest_of_the_epoch_exactly():
    loader = CPULoader(_toy.ToyImages(40), _toy.toy_views, batch_size=8, seed=0)
    full = _batches(loader, epoch=3)
    tail = _batches(loader, epoch=3, start=2)
    assert len(full) == 5 and len(tail) == 3 and len(loader) == 5
    for a, b in zip(full[2:], tail):
        assert torch.equal(a["index"], b["index"])
        assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))
    other = _batches(loader, epoch=4)
    assert not torch.equal(torch.cat([b["index"] for b in full]),
                           torch.cat([b["index"] for b in other]))
    # the same image gets different random views in another epoch
    i = int(full[0]["index"][0])
    pos = [int(j) for j in torch.cat([b["index"] for b in other])].index(i)
    assert not torch.equal(full[0]["views"][0][0], torch.cat([b["views"][0] for b in other])[pos])


def test_loader_does_not_touch_the_training_rng():
    loader = CPULoader(_toy.ToyImages(16), _toy.toy_views, batch_size=4, seed=0)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    _batches(loader, epoch=0)
    assert torch.equal(torch.rand(3), expected)


def test_device_loader_shards_and_resumes():
    images = (torch.arange(24 * 3 * 2 * 2) % 251).to(torch.uint8).view(24, 3, 2, 2)
    labels = torch.arange(24)
    calls = []

    def views(x, generator=None):
        calls.append(generator)
        noise = torch.rand(x.shape, generator=generator, device=x.device)
        return [x.float() / 255 + noise, x.float() / 255 - noise]

    shards = [DeviceLoader(images, labels, views, 4, rank=r, world_size=2, seed=1)
              for r in range(2)]
    epoch = [_batches(s, epoch=0) for s in shards]
    seen = torch.cat([b["index"] for rank in epoch for b in rank])
    assert sorted(seen.tolist()) == list(range(24))             # 2 ranks x 3 x 4: all, no overlap
    assert all(isinstance(g, torch.Generator) for g in calls)
    tail = _batches(shards[1], epoch=0, start=1)
    assert len(shards[1]) == 3 and len(tail) == 2
    assert torch.equal(tail[0]["index"], epoch[1][1]["index"])
    assert torch.equal(tail[1]["views"][0], epoch[1][2]["views"][0])
    assert torch.equal(tail[0]["labels"], labels[tail[0]["index"]])
