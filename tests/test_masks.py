"""Patch masks: MAE random masking ratio and restore order; I-JEPA block geometry, disjointness
and fixed shapes per configuration."""
from __future__ import annotations

import math

import pytest
import torch

from vissl_lite.augment import BlockMaskSampler, MaskError, block_masks, random_patch_mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------- MAE ----------

@pytest.mark.parametrize("num_patches, ratio", [(196, 0.75), (64, 0.75), (49, 0.6), (16, 0.0)])
def test_random_patch_mask_partitions_the_grid_at_the_ratio(num_patches, ratio):
    m = random_patch_mask(32, num_patches, ratio, generator=gen())
    keep, masked = m  # unpacks as the two index tensors of the contract
    k = int(num_patches * (1 - ratio))
    assert keep.shape == (32, k) and masked.shape == (32, num_patches - k)
    assert keep.dtype == masked.dtype == torch.long
    both = torch.cat([keep, masked], dim=1)
    assert torch.equal(both.sort(dim=1).values, torch.arange(num_patches).expand(32, -1))
    assert (keep.diff(dim=1) > 0).all() and (masked.diff(dim=1) > 0).all()
    assert torch.equal(torch.gather(both, 1, m.ids_restore), torch.arange(num_patches).expand(32, -1))
    assert torch.equal(m.mask.sum(dim=1), torch.full((32,), num_patches - k))
    assert not m.mask.gather(1, keep).any() and m.mask.gather(1, masked).all()


def test_random_patch_mask_is_uniform_over_patches_and_seeded():
    n, patches = 4000, 64
    keep, _ = random_patch_mask(n, patches, 0.75, generator=gen(3))
    freq = torch.bincount(keep.flatten(), minlength=patches).float() / n
    tol = 5 * math.sqrt(0.25 * 0.75 / n)
    assert (freq - 0.25).abs().max() < tol
    again, _ = random_patch_mask(n, patches, 0.75, generator=gen(3))
    other, _ = random_patch_mask(n, patches, 0.75, generator=gen(4))
    assert torch.equal(keep, again) and not torch.equal(keep, other)
    assert len({tuple(r) for r in keep[:100].tolist()}) == 100  # independent per sample


@pytest.mark.parametrize("ratio", [1.0, -0.1, 0.999])
def test_random_patch_mask_rejects_impossible_ratios(ratio):
    with pytest.raises(MaskError, match="mask_ratio"):
        random_patch_mask(2, 16, ratio)


# ---------------------------------------------------------------------------- I-JEPA ---------

def _span(idx, width):
    """(rows, cols) of the bounding box of the patch indices of one target."""
    rows, cols = idx // width, idx % width
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("grid", [(14, 14), (8, 8), (16, 12)])
def test_block_masks_geometry_and_disjointness(grid):
    gh, gw = grid
    n_patches = gh * gw
    shapes = set()
    for seed in range(10):
        m = block_masks(16, grid, num_targets=4, min_keep=4, generator=gen(seed))
        ctx, targets = m
        assert len(targets) == 4 and ctx.dim() == 2 and ctx.shape[0] == 16
        th, tw = (int(v) for v in m.target_size)
        for t in targets:
            # Kt patches of one th x tw block (Kt: the smallest block the config can draw)
            assert t.shape[0] == 16 and 1 <= t.shape[1] <= th * tw and t.dtype == torch.long
            assert (t.diff(dim=1) > 0).all() and t.min() >= 0 and t.max() < n_patches
            for row in t:
                h, w = _span(row, gw)
                assert h <= th and w <= tw
        area = th * tw / n_patches
        assert 0.15 - 1.5 * (th + tw) / n_patches <= area <= 0.2 + 1.5 * (th + tw) / n_patches
        assert 0.75 / 1.6 <= th / tw <= 1.5 * 1.6
        assert ctx.shape[1] >= 4
        assert (ctx.diff(dim=1) > 0).all() and ctx.min() >= 0 and ctx.max() < n_patches
        ch, cw = (int(v) for v in m.context_size)
        assert ch <= gh - 1 and cw <= gw - 1 and 0.85 * n_patches - (ch + cw) <= ch * cw
        target_union = torch.zeros(16, n_patches, dtype=torch.bool)
        for t in targets:
            target_union.scatter_(1, t, True)
        assert not target_union.gather(1, ctx).any()  # context never sees a target patch
        if int(m.num_fallback) == 0:  # then nearly every context lies inside one ch x cw block
            rows, cols = ctx // gw, ctx % gw
            inside = ((rows.amax(1) - rows.amin(1)) < ch) & ((cols.amax(1) - cols.amin(1)) < cw)
            assert inside.float().mean() >= 0.9   # a rare short context is completed outside
        shapes.add((ctx.shape, targets[0].shape))
    assert len(shapes) == 1  # fixed shapes per configuration, whatever the draws


def test_fixed_counts_follow_the_config():
    """Kt is the smallest block area the target ranges allow; Kc the smallest context of a
    simulated batch, at least min_keep; a sampler is built once per configuration."""
    sampler = BlockMaskSampler(14, num_targets=4, min_keep=10)
    areas = set()
    for seed in range(200):
        th, tw = (int(v) for v in block_masks(1, 14, generator=gen(seed)).target_size)
        areas.add(th * tw)
    assert sampler.num_target <= min(areas) and sampler.num_target >= 0.1 * 196
    assert 10 <= sampler.num_context < 196
    m = sampler(32, generator=gen(0))
    assert m.context_idx.shape == (32, sampler.num_context)
    assert all(t.shape == (32, sampler.num_target) for t in m.target_idx)
    # almost every context holds more patches than Kc: I-JEPA's trim to the batch minimum
    ctx_full = sampler._sample(256, torch.device("cpu"), gen(1))[0].sum(dim=1)
    assert (ctx_full >= sampler.num_context).float().mean() > 0.99


def test_block_sizes_cover_the_scale_and_aspect_ranges():
    areas, aspects = [], []
    for seed in range(300):
        m = block_masks(1, 32, generator=gen(seed))
        th, tw = (int(v) for v in m.target_size)
        areas.append(th * tw / 1024)
        aspects.append(th / tw)
    areas, aspects = torch.tensor(areas), torch.tensor(aspects)
    assert areas.min() > 0.13 and areas.max() < 0.22 and abs(areas.mean() - 0.175) < 0.01
    assert aspects.min() < 0.85 and aspects.max() > 1.35
    assert aspects.min() > 0.7 and aspects.max() < 1.6


def test_block_masks_are_seeded_and_differ_per_sample():
    a = block_masks(8, 14, generator=gen(1))
    b = block_masks(8, 14, generator=gen(1))
    assert torch.equal(a.context_idx, b.context_idx)
    assert all(torch.equal(x, y) for x, y in zip(a.target_idx, b.target_idx))
    assert len({tuple(r) for r in a.target_idx[0].tolist()}) > 1


def test_block_masks_fall_back_to_the_target_complement_and_fail_clearly():
    # big targets on a small grid: context blocks often keep too little, the fallback keeps the
    # whole complement of the targets, still disjoint from them
    m = block_masks(64, 6, num_targets=4, target_scale=(0.2, 0.2), context_scale=(0.3, 0.3),
                    min_keep=6, max_tries=2, generator=gen(0))
    assert int(m.num_fallback) > 0
    union = torch.zeros(64, 36, dtype=torch.bool)
    for t in m.target_idx:
        union.scatter_(1, t, True)
    assert not union.gather(1, m.context_idx).any()
    assert m.context_idx.shape[1] >= 6

    with pytest.raises(MaskError, match="min_keep"):
        block_masks(4, 4, num_targets=4, target_scale=(0.5, 0.5), min_keep=15, generator=gen(0))
    with pytest.raises(MaskError, match="grid"):
        block_masks(4, 1)
    with pytest.raises(MaskError, match="target_scale"):
        block_masks(4, 14, target_scale=(0.3, 0.1))
