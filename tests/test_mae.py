"""MAE (vissl_lite/methods/mae.py): masking, patch layout, the masked-only loss, presets, and
30 real CIFAR-10 steps with a tiny ViT."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import Block
from torchvision.transforms import v2

from _helpers import CIFAR_MEAN, CIFAR_STD, crop_flip_normalise, load_cifar_images
from vissl_lite.backbones import build_backbone
from vissl_lite.backbones.vit import ViT
from vissl_lite.config import ConfigError, load_config
from vissl_lite.methods import build_method
from vissl_lite.methods.mae import MAE, patchify, unpatchify

REPO = Path(__file__).resolve().parents[1]


def mae_config(**kw):
    cfg = MAE.Config(decoder_dim=64, decoder_depth=1, decoder_heads=4)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def tiny_vit(depth: int = 2, dim: int = 96) -> ViT:
    return ViT(patch_size=4, embed_dim=dim, depth=depth, num_heads=3, img_size=32,
               pos_embed="sincos", name="vit_test")


def test_patchify_layout_and_round_trip():
    x = torch.randn(2, 3, 16, 32)
    patches = patchify(x, 4)
    assert patches.shape == (2, 4 * 8, 4 * 4 * 3)
    for b, i, j in [(0, 0, 0), (1, 2, 5), (0, 3, 7)]:
        expected = x[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].permute(1, 2, 0).reshape(-1)
        assert torch.equal(patches[b, i * 8 + j], expected)
    assert torch.equal(unpatchify(patches, 4, (4, 8)), x)
    with pytest.raises(ValueError, match="patch size"):
        patchify(torch.randn(1, 3, 30, 30), 4)


@pytest.mark.parametrize("ratio, visible", [(0.75, 16), (0.5, 32)])
def test_encoder_sees_exactly_the_visible_patches(ratio, visible):
    backbone = build_backbone("vit_tiny_patch4", img_size=32)
    method = MAE(backbone, mae_config(mask_ratio=ratio))
    seen, calls = [], []
    first_block = next(m for m in backbone.modules() if isinstance(m, Block))
    first_block.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    original = backbone.forward_tokens
    backbone.forward_tokens = lambda x, keep_idx=None: calls.append(keep_idx) or original(x, keep_idx)

    x = torch.randn(3, 3, 32, 32)
    pred, keep_idx, mask_idx = method.reconstruct(x)
    assert seen == [visible + backbone.num_prefix_tokens]
    assert calls[0] is keep_idx and keep_idx.shape == (3, visible)
    assert mask_idx.shape == (3, 64 - visible)
    for b in range(3):
        both = torch.cat([keep_idx[b], mask_idx[b]])
        assert torch.equal(both.sort().values, torch.arange(64))  # disjoint and complete
    assert pred.shape == (3, 64, 4 * 4 * 3)


def reference_loss(pred, images, mask_idx, norm_pix):
    """The MAE loss written patch by patch: mean squared error over the masked patches only."""
    losses = []
    for b in range(images.shape[0]):
        for n in mask_idx[b].tolist():
            i, j = divmod(n, 8)
            t = images[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].permute(1, 2, 0).reshape(-1)
            if norm_pix:
                t = (t - t.mean()) / torch.sqrt(t.var(unbiased=True) + 1e-6)
            losses.append(((pred[b, n] - t) ** 2).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_counts_only_masked_patches(norm_pix):
    method = MAE(tiny_vit(), mae_config(norm_pix_loss=norm_pix))
    images = torch.randn(2, 3, 32, 32)
    pred = torch.randn(2, 64, 48)
    perm = torch.stack([torch.randperm(64) for _ in range(2)])
    keep_idx, mask_idx = perm[:, :16], perm[:, 16:]

    loss = method.reconstruction_loss(pred, images, mask_idx)
    torch.testing.assert_close(loss, reference_loss(pred, images, mask_idx, norm_pix))

    visible_changed = pred.clone()
    for b in range(2):
        visible_changed[b, keep_idx[b]] += 100.0 * torch.randn(16, 48)
    assert torch.equal(method.reconstruction_loss(visible_changed, images, mask_idx), loss)

    masked_changed = pred.clone()
    masked_changed[0, mask_idx[0, 0]] += 1.0
    assert method.reconstruction_loss(masked_changed, images, mask_idx) != loss

    pred.requires_grad_(True)
    method.reconstruction_loss(pred, images, mask_idx).backward()
    for b in range(2):
        assert torch.all(pred.grad[b, keep_idx[b]] == 0)
        assert torch.all(pred.grad[b, mask_idx[b]].abs().sum(-1) > 0)


def test_training_step_backpropagates_into_encoder_and_decoder():
    method = MAE(tiny_vit(), mae_config())
    out = method.training_step({"views": [torch.randn(4, 3, 32, 32)]})
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert method.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.decoder.mask_token.grad.abs().sum() > 0
    assert method.backbone_for_eval() is method.backbone


def test_bad_config_values_raise_clear_errors():
    with pytest.raises(ConfigError, match="mask_ratio"):
        MAE(tiny_vit(), mae_config(mask_ratio=1.0))
    with pytest.raises(ConfigError, match="decoder_heads"):
        MAE(tiny_vit(), mae_config(decoder_dim=64, decoder_heads=3))


@pytest.mark.parametrize("preset, patch, grid", [("cifar10_vit_tiny", 4, (8, 8)),
                                                 ("imagenet_vit_base", 16, (14, 14))])
def test_presets_validate_and_build(preset, patch, grid, tmp_path):
    cfg = load_config(REPO / "configs" / "mae" / f"{preset}.yaml", [f"data.root={tmp_path}"])
    method = build_method(cfg)
    assert isinstance(method, MAE)
    assert method.patch_size == patch and method.grid_size == grid
    assert cfg.optim.name == "adamw" and list(cfg.optim.betas) == [0.9, 0.95]


def test_thirty_steps_on_real_cifar10_lower_the_loss(cifar_root):
    train = load_cifar_images(cifar_root, 256)
    held_out = v2.functional.normalize(load_cifar_images(cifar_root, 32, "test"), CIFAR_MEAN,
                                       CIFAR_STD)
    method = MAE(tiny_vit(depth=2), mae_config(decoder_dim=96, decoder_depth=1, decoder_heads=3))
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)

    def held_out_loss():
        gen = torch.Generator().manual_seed(123)
        with torch.no_grad():
            pred, _, mask_idx = method.reconstruct(held_out, generator=gen)
            return method.reconstruction_loss(pred, held_out, mask_idx).item()

    before = held_out_loss()
    method.train()
    for step in range(30):
        idx = torch.randint(0, len(train), (32,))
        loss = method.training_step({"views": [crop_flip_normalise(train[idx], 0.5)]}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.9 * before, (before, after)
