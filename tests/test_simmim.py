"""SimMIM (vissl_lite/methods/simmim.py): coarse random masks, the masked-pixel L1 loss against the
official formula and lightly's example, mask tokens in the full sequence, presets, the
reconstruction PNG, and 30 real CIFAR-10 steps with a tiny ViT."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.models.utils import get_at_index, patchify as lightly_patchify
from torchvision.transforms import v2

from _helpers import CIFAR_MEAN, CIFAR_STD, crop_flip_normalise, load_cifar_images
from vissl_lite.backbones.vit import ViT
from vissl_lite.config import ConfigError, load_config
from vissl_lite.eval.rankme import rankme
from vissl_lite.methods import build_method
from vissl_lite.methods.mae import unpatchify
from vissl_lite.methods.simmim import SimMIM, coarse_patch_mask

REPO = Path(__file__).resolve().parents[1]


def tiny_vit(depth: int = 1, dim: int = 48) -> ViT:
    return ViT(patch_size=4, embed_dim=dim, depth=depth, num_heads=3, img_size=32, name="vit_test")


@pytest.mark.parametrize("grid, scale, ratio", [((8, 8), 2, 0.6), ((14, 14), 2, 0.6),
                                                ((8, 8), 1, 0.75)])
def test_masks_are_whole_mask_patches_in_the_official_count(grid, scale, ratio):
    """data_simmim.py MaskGenerator: ceil(R * ratio) of the R mask patches, each covering
    scale x scale ViT patches (mask.repeat(scale, 0).repeat(scale, 1))."""
    mask = coarse_patch_mask(64, grid, scale, ratio, generator=torch.Generator().manual_seed(0))
    rows, cols = grid[0] // scale, grid[1] // scale
    coarse = mask.view(64, rows, scale, cols, scale)
    assert torch.equal(coarse, coarse[:, :, :1, :, :1].expand_as(coarse))    # whole mask patches
    count = math.ceil(rows * cols * ratio)
    assert torch.equal(coarse[:, :, 0, :, 0].sum(dim=(1, 2)), torch.full((64,), count))
    assert mask.float().mean(0).min() > 0 and mask.float().mean(0).max() < 1   # any may be masked


def official_loss(x, x_rec, mask, patch):
    """models/simmim.py SimMIM.forward, written out: mask (B, gh, gw) upsampled to pixels."""
    mask = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1).contiguous()
    loss_recon = F.l1_loss(x, x_rec, reduction="none")
    return (loss_recon * mask).sum() / (mask.sum() + 1e-5) / x.shape[1]


def test_loss_equals_the_official_formula_and_lightlys_example_in_values_and_gradients():
    method = SimMIM(tiny_vit(), {"mask_patch_size": 8})
    images = torch.randn(3, 3, 32, 32)
    mask = method.sample_mask(3)
    pred = torch.randn(3, 64, 48, requires_grad=True)
    ours = method.reconstruction_loss(pred, images, mask)
    (g_ours,) = torch.autograd.grad(ours, pred)

    x_rec = unpatchify(pred, 4, (8, 8))
    theirs = official_loss(images, x_rec, mask.view(3, 8, 8).float(), 4)
    (g_theirs,) = torch.autograd.grad(theirs, pred)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-9)

    # lightly's examples/pytorch/simmim.py: L1Loss on the masked patches' predictions
    idx_mask = mask.nonzero()[:, 1].view(3, -1)
    lightly_loss = torch.nn.L1Loss()(get_at_index(pred, idx_mask),
                                     get_at_index(lightly_patchify(images, 4), idx_mask))
    torch.testing.assert_close(ours, lightly_loss, rtol=1e-5, atol=1e-7)


def test_norm_pix_targets_are_standardised_patches():
    method = SimMIM(tiny_vit(), {"mask_patch_size": 8, "norm_pix_loss": True})
    images = torch.randn(2, 3, 32, 32)
    target = method.patch_targets(images)
    raw = lightly_patchify(images, 4)
    want = (raw - raw.mean(-1, keepdim=True)) / (raw.var(-1, unbiased=True, keepdim=True)
                                                 + 1e-6).sqrt()
    torch.testing.assert_close(target, want)


def test_masked_pixels_never_reach_the_encoder_and_only_masked_patches_get_a_gradient():
    torch.manual_seed(0)
    method = SimMIM(tiny_vit(depth=2), {"mask_patch_size": 8}).eval()
    images = torch.randn(2, 3, 32, 32)
    mask = method.sample_mask(2)
    pixel_mask = mask.view(2, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3)
    scribbled = torch.where(pixel_mask, torch.randn_like(images) * 5, images)
    torch.testing.assert_close(method.encode(images, mask), method.encode(scribbled, mask))
    assert not torch.allclose(method.encode(images, mask), method.encode(scribbled, mask & False))

    pred = method.reconstruct(images, mask).detach().requires_grad_(True)
    method.reconstruction_loss(pred, images, mask).backward()
    assert torch.all(pred.grad[~mask] == 0) and torch.all(pred.grad[mask].abs().sum(-1) > 0)

    out = method.train().training_step({"views": [images]})
    out.loss.backward()
    assert method.mask_token.grad.abs().sum() > 0 and method.decoder.weight.grad.abs().sum() > 0
    assert method.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert "mask_token" in method.no_weight_decay()
    assert method.backbone_for_eval() is method.backbone


def test_bad_config_values_raise_clear_errors():
    with pytest.raises(ConfigError, match="mask_ratio"):
        SimMIM(tiny_vit(), {"mask_patch_size": 8, "mask_ratio": 1.0})
    with pytest.raises(ConfigError, match="mask_patch_size"):
        SimMIM(tiny_vit(), {"mask_patch_size": 6})
    with pytest.raises(ConfigError, match="mask_patch_size"):
        SimMIM(tiny_vit(), {"mask_patch_size": 12})     # a multiple of 4 that does not divide 32


@pytest.mark.parametrize("preset, grid, masked", [("cifar10_vit_tiny", (8, 8), 10 * 4),
                                                  ("imagenet_vit_base", (14, 14), 30 * 4)])
def test_presets_validate_and_build(preset, grid, masked, tmp_path):
    cfg = load_config(REPO / "configs" / "simmim" / f"{preset}.yaml", [f"data.root={tmp_path}"])
    method = build_method(cfg)
    assert isinstance(method, SimMIM) and method.grid_size == grid and method.scale == 2
    assert int(method.sample_mask(2)[0].sum()) == masked
    assert cfg.optim.lr_batch_base == 512 and cfg.train.grad_clip == 5.0


def test_reconstruction_png_is_drawn(tmp_path):
    spec = importlib.util.spec_from_file_location("masked_visualize",
                                                  REPO / "benchmarks" / "masked_visualize.py")
    viz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(viz)
    method = SimMIM(tiny_vit(), {"mask_patch_size": 8}).eval()
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    rows = viz.simmim_rows(method, torch.randn(3, 3, 32, 32), mean, std, seed=0)
    assert [label for label, _ in rows] == ["masked 62%", "prediction", "pred. + visible"]
    assert all(img.shape == (3, 3, 32, 32) for _, img in rows)
    viz.draw(rows, tmp_path / "simmim.png", "simmim")
    assert (tmp_path / "simmim.png").read_bytes()[:4] == b"\x89PNG"


def test_thirty_steps_on_real_cifar10_lower_the_loss_without_collapse(cifar_root):
    train = load_cifar_images(cifar_root, 256)
    held_out = v2.functional.normalize(load_cifar_images(cifar_root, 64, "test"), CIFAR_MEAN,
                                       CIFAR_STD)
    torch.manual_seed(0)
    method = SimMIM(tiny_vit(depth=2, dim=96), {"mask_patch_size": 8})
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3, weight_decay=0.05)
    held_out_mask = method.sample_mask(len(held_out), generator=torch.Generator().manual_seed(1))

    def held_out_loss_and_rank():
        method.eval()
        with torch.no_grad():
            loss = method.reconstruction_loss(method.reconstruct(held_out, held_out_mask),
                                              held_out, held_out_mask).item()
            feats = method.backbone_for_eval()(held_out)
            return loss, rankme(feats - feats.mean(0))

    before, rank_before = held_out_loss_and_rank()
    method.train()
    for step in range(30):
        idx = torch.randint(0, len(train), (32,))
        loss = method.training_step({"views": [crop_flip_normalise(train[idx], 0.67)]}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, rank_after = held_out_loss_and_rank()
    print(f"simmim: held-out L1 {before:.4f} -> {after:.4f}, "
          f"RankMe {rank_before:.1f} -> {rank_after:.1f}")
    assert after < 0.9 * before, (before, after)
    # a collapsed encoder has a RankMe of ~1; here 9.1 -> 8.5 (seed 0, centred features)
    assert rank_after > 0.5 * rank_before, (rank_before, rank_after)
