"""VICRegL: the loss against lightly's VICRegLLoss (values and gradients) in the preset's
configuration, the cell positions against the official ``_location_to_NxN_grid``, the step's
wiring (views, boxes, feature maps), gathered over 2 ranks == 1 (one graph per step:
tests/test_step_hygiene.py)."""
from __future__ import annotations

import pytest
import torch

from _helpers import assert_same_value_and_grads, tiny_method, views_batch
from _je import assert_ranks_match_full, lightly_module, loss_on_ranks
from vissl_lite.config import load_config
from vissl_lite.errors import ConfigError, DataError
from vissl_lite.methods.vicregl import crop_grid, global_loss, local_loss

B, D, DL = 8, 12, 6
SHAPES = [(4, 4), (4, 4), (2, 2), (2, 2)]          # 2 global views' maps, 2 local views' maps


def _inputs(num_views: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = [torch.randn(B, D, generator=g) for _ in range(num_views)]
    maps = [torch.randn(B, h, w, DL, generator=g) for h, w in SHAPES[:num_views]]
    grids = [torch.rand(B, h, w, 2, generator=g) * 32 for h, w in SHAPES[:num_views]]
    return z, maps, grids


def _ours(z, maps, grids, l2_all_matches: bool):
    flat = [m.flatten(1, 2) for m in maps]
    return (0.75 * global_loss(z, 2)
            + 0.25 * local_loss(flat, [x.flatten(1, 2) for x in grids], 2, (20, 4),
                                l2_all_matches))


def _lightly_with_all_feature_matches(z, maps, grids):
    """lightly's VICRegLLoss with the official ``--l2_all_matches 1``: its own global loss,
    location loss (k = 20, 4) and feature loss with every cell matched (k above the cell count)."""
    loss_module = lightly_module("loss")
    full = loss_module.VICRegLLoss(num_matches=(20, 4))
    every = loss_module.VICRegLLoss(num_matches=(10 ** 6, 10 ** 6))
    feats = list(zip(z, maps))
    pairs = [(i, j) for i in range(2) for j in range(len(feats)) if j != i]
    local = sum(every._local_l2_loss(maps[i], maps[j])
                + full._local_location_loss(maps[i], maps[j], grids[i], grids[j])
                for i, j in pairs) / len(pairs)
    return 0.75 * full._global_loss(feats[:2], feats[2:] or None) + 0.25 * local


def _compare(ours_fn, theirs_fn, num_views: int):
    z, maps, grids = _inputs(num_views)
    assert_same_value_and_grads(
        lambda *t: ours_fn(list(t[:num_views]), list(t[num_views:]), grids),
        lambda *t: theirs_fn(list(t[:num_views]), list(t[num_views:]), grids), z + maps,
        value_tol=dict(rtol=1e-5, atol=1e-5), grad_tol=dict(rtol=1e-4, atol=1e-6))


@pytest.mark.parametrize("num_views", [2, 4])
def test_loss_equals_lightlys_vicregl_loss(num_views):
    """lightly matches features with the same (k1, k2) as locations: our l2_all_matches=false."""
    crit = lightly_module("loss").VICRegLLoss(alpha=0.75, num_matches=(20, 4))

    def theirs(z, maps, grids):
        feats = list(zip(z, maps))
        return crit(feats[:2], grids[:2], feats[2:] or None, grids[2:] or None)

    _compare(lambda z, m, g: _ours(z, m, g, False), theirs, num_views)


@pytest.mark.parametrize("num_views", [2, 4])
def test_loss_with_all_feature_matches_equals_lightlys_pieces(num_views):
    """The presets' configuration (alpha 0.75, 25/25/1, num_matches 20/4, all feature matches)."""
    _compare(lambda z, m, g: _ours(z, m, g, True), _lightly_with_all_feature_matches, num_views)


def _official_grid(location, n, flip):
    """facebookresearch/VICRegL transforms.py ``_location_to_NxN_grid``, as written there."""
    i, j, h, w = location
    gx, gy = torch.zeros(n, n), torch.zeros(n, n)
    gx[0][0], gy[0][0] = i + h / n / 2, j + w / n / 2
    for k in range(1, n):
        gx[k][0], gy[k][0] = gx[k - 1][0] + h / n, gy[k - 1][0]
    for l in range(1, n):
        gx[0][l], gy[0][l] = gx[0][l - 1], gy[0][l - 1] + w / n
    for k in range(1, n):
        for l in range(1, n):
            gx[k][l], gy[k][l] = gx[k - 1][l] + h / n, gy[k][l - 1] + w / n
    grid = torch.stack([gx, gy], dim=-1)
    return grid.flip(1) if flip else grid


def test_cell_positions_are_the_official_grid_mirrored_with_the_view():
    boxes = torch.tensor([[3.0, 5.0, 14.0, 21.0, 0.0], [0.0, 7.0, 30.0, 9.0, 1.0]])
    grid = crop_grid(boxes, 7, 7).view(2, 7, 7, 2)
    torch.testing.assert_close(grid[0], _official_grid((3, 5, 14, 21), 7, False))
    torch.testing.assert_close(grid[1], _official_grid((0, 7, 30, 9), 7, True))
    unflipped = crop_grid(boxes, 7, 7, flip=False).view(2, 7, 7, 2)
    torch.testing.assert_close(unflipped[1], _official_grid((0, 7, 30, 9), 7, False))


def _rank_loss(z0, z1, m0, m1, g0, g1):
    return 0.75 * global_loss([z0, z1], 2) + 0.25 * local_loss([m0, m1], [g0, g1], 2)


def test_loss_gathered_over_two_ranks_equals_full_batch(tmp_path):
    z, maps, grids = _inputs(2)
    inputs = z + [m.flatten(1, 2) for m in maps] + [g.flatten(1, 2) for g in grids]
    parts = loss_on_ranks(_rank_loss, inputs, (), tmp_path)
    assert_ranks_match_full(parts, _rank_loss, inputs, (), same_loss_on_every_rank=False)


def test_step_feeds_each_views_map_and_its_boxes_to_the_loss():
    torch.manual_seed(0)
    method = tiny_method("vicregl", num_local_crops=2).train()
    batch = views_batch(method, batch=6, global_size=64, local_size=32)
    out = method.training_step(batch)
    torch.manual_seed(0)
    ref = tiny_method("vicregl", num_local_crops=2).train()
    fmaps = [ref.backbone.forward_features(v) for v in batch["views"]]
    assert [tuple(f.shape[-2:]) for f in fmaps] == [(2, 2)] * 2 + [(1, 1)] * 2
    z = [ref.projector(f.mean(dim=(2, 3))) for f in fmaps]
    maps = [ref.maps_projector(f.flatten(2).transpose(1, 2).flatten(0, 1)).view(6, -1, 16)
            for f in fmaps]
    grids = [crop_grid(b, *f.shape[-2:]) for b, f in zip(batch["boxes"], fmaps)]
    expected = 0.75 * global_loss(z, 2) + 0.25 * local_loss(maps, grids, 2)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.embedding, fmaps[0].mean(dim=(2, 3)))
    assert set(out.metrics) == {"global_loss", "local_loss", "emb_std"}


def test_views_ask_for_boxes_and_a_batch_without_them_is_a_clear_error():
    method = tiny_method("vicregl")
    assert method.views.crop_boxes and method.views.num_global == 2
    batch = views_batch(method)
    del batch["boxes"]
    with pytest.raises(DataError, match="crop box"):
        method.training_step(batch)


def test_config_errors_and_the_presets_official_values(tmp_path):
    with pytest.raises(ConfigError, match="alpha"):
        tiny_method("vicregl", alpha=1.5)
    with pytest.raises(ConfigError, match="num_matches"):
        tiny_method("vicregl", num_matches=[20])
    for preset in ("vicregl/cifar10_resnet18", "vicregl/imagenet_resnet50"):
        m = load_config(preset, [f"data.root={tmp_path}"]).method
        assert (m.alpha, m.inv_coeff, m.var_coeff, m.cov_coeff) == (0.75, 25.0, 25.0, 1.0)
        assert list(m.num_matches) == [20, 4] and m.l2_all_matches


def test_alpha_one_is_vicreg_on_pooled_features_without_a_local_head():
    method = tiny_method("vicregl", alpha=1.0).train()
    assert method.maps_projector is None
    out = method.training_step(views_batch(method))
    assert "local_loss" not in out.metrics
    torch.testing.assert_close(out.loss, out.metrics["global_loss"])


def test_resnet_feature_map_pools_to_its_output():
    backbone = tiny_method("vicregl").backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    fmap = backbone.forward_features(x)
    assert fmap.shape == (2, backbone.num_features, 2, 2)
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), backbone(x))
