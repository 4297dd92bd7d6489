"""DTM (vissl_lite/methods/dtm.py): token morphing against naver-ai/dtm's bm/merge.py and
engine_for_dtm.py written out, the loss on MAE's target, presets, and 30 real CIFAR-10 steps."""
from __future__ import annotations

import math

import pytest
import torch

from _helpers import crop_flip_normalise, load_cifar_images, tiny_backbone, tiny_method
from vissl_lite.config import load_config
from vissl_lite.errors import ConfigError
from vissl_lite.methods import build_method
from vissl_lite.methods.dtm import DTM, morph, morph_source
from vissl_lite.methods.mae import patchify


def official_bipartite_soft_matching(metric, r):
    """bm/merge.py bipartite_soft_matching(metric, r, class_token=False), merge only."""
    r = min(r, metric.shape[1] // 2)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[..., r:, :], edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(x, mode="mean"):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


def official_source(target, num_merge, matching_iter):
    """engine_for_dtm.py: r from (n, k), then k rounds of matching, merge_source, merge_wavg."""
    r = math.ceil(num_merge / matching_iter)
    if r * matching_iter > num_merge:          # the engine compares with args.n1 (= n here)
        r = math.floor(num_merge / matching_iter)
    if r == 0:
        n, t, _ = target.shape
        return torch.eye(t)[None].expand(n, t, t)
    source, size, x = None, None, target.clone()
    for _ in range(matching_iter):
        merge = official_bipartite_soft_matching(x, r)
        if source is None:
            n, t, _ = x.shape
            source = torch.eye(t)[None, ...].expand(n, t, t)
        source = merge(source, mode="amax")
        size = torch.ones_like(x[..., 0, None]) if size is None else size
        x = merge(x * size, mode="sum")
        size = merge(size, mode="sum")
        x = x / size
    return source


@pytest.mark.parametrize("num_merges, iterations", [(0, 1), (24, 3), (20, 6), (40, 2)])
def test_morph_source_equals_the_official_matching(num_merges, iterations):
    target = torch.randn(3, 64, 12, generator=torch.Generator().manual_seed(num_merges))
    ours = morph_source(target, num_merges, iterations)
    want = official_source(target, num_merges, iterations)
    torch.testing.assert_close(ours, want)
    assert torch.equal(ours.sum(1), torch.ones(3, 64))       # every token in exactly one group
    x = torch.randn(3, 64, 5)
    morphed = morph(x, ours)
    want = want.transpose(1, 2) @ (want @ x / (want.sum(-1).unsqueeze(-1) + 1e-6))
    torch.testing.assert_close(morphed, want)
    group = ours[0, ours[0].sum(-1).argmax()].bool()          # the largest group shares one value
    torch.testing.assert_close(morphed[0, group], x[0, group].mean(0).expand(int(group.sum()), -1))


def test_loss_equals_the_official_morphing_loss_over_levels():
    torch.manual_seed(0)
    method = tiny_method("dtm", num_merges=[0, 24, 30], matching_iters=[1, 3, 5])
    images = torch.randn(4, 3, 32, 32)
    pred = torch.randn(4, 64, 48, requires_grad=True)
    ours = method.reconstruction_loss(pred, images, None)
    target = patchify(images, 4)
    want = 0.0
    for n, k in ((0, 1), (24, 3), (30, 5)):
        s = official_source(target, n, k)
        out = s.transpose(1, 2) @ (s @ pred / (s.sum(-1).unsqueeze(-1) + 1e-6))
        t = s.transpose(1, 2) @ (s @ target / (s.sum(-1).unsqueeze(-1) + 1e-6))
        t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        diff = torch.abs(out - t)                               # smooth_l1_loss, beta 2
        want = want + torch.where(diff < 2.0, 0.5 * diff ** 2 / 2.0, diff - 1.0).mean(-1).mean()
    want = want / 3
    torch.testing.assert_close(ours, want)
    torch.testing.assert_close(torch.autograd.grad(ours, pred)[0], torch.autograd.grad(want, pred)[0])


def test_bad_levels_raise():
    with pytest.raises(ConfigError, match="one entry per morphing level"):
        tiny_method("dtm", num_merges=[8], matching_iters=[1, 2])
    with pytest.raises(ConfigError, match="merges"):
        tiny_method("dtm", num_merges=[64], matching_iters=[2])


@pytest.mark.parametrize("preset", ["dtm/cifar10_vit_tiny", "dtm/imagenet_vit_base"])
def test_presets_validate_and_build(preset, tmp_path):
    cfg = load_config(preset, [f"data.root={tmp_path}"])
    assert len(cfg.method.num_merges) == len(cfg.method.matching_iters) == 2
    if "cifar10" in preset:
        assert isinstance(build_method(cfg), DTM)


def test_thirty_real_cifar10_steps_lower_the_loss(cifar_root):
    """The morphed loss on held-out images (fixed masks) falls by a tenth in 30 steps."""
    torch.manual_seed(0)
    method = DTM(tiny_backbone(DTM), {**DTM.tiny_config, "decoder_dim": 64, "decoder_heads": 4})
    images = load_cifar_images(cifar_root, 128)
    held_out = crop_flip_normalise(load_cifar_images(cifar_root, 32, "test"), 1.0)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)

    def held_out_loss():
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            pred, _, mask_idx = method.reconstruct(held_out, g)
            return float(method.reconstruction_loss(pred, held_out, mask_idx))

    before = held_out_loss()
    method.train()
    for _ in range(30):
        x = crop_flip_normalise(images[torch.randint(0, len(images), (32,))], 0.3)
        loss = method.training_step({"views": [x]}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.9 * before, (before, after)
