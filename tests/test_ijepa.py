"""I-JEPA (vissl_lite/methods/ijepa.py): masks, the EMA target encoder, predictor shapes, the loss,
presets, and 30 real CIFAR-10 steps with a tiny ViT."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from _helpers import CIFAR_MEAN, CIFAR_STD, crop_flip_normalise, load_cifar_images
from vissl_lite.backbones.vit import ViT
from vissl_lite.config import ConfigError, load_config
from vissl_lite.methods import build_method
from vissl_lite.methods.ijepa import IJEPA
from vissl_lite.methods.vit_blocks import gather_tokens

REPO = Path(__file__).resolve().parents[1]


def ijepa_config(**kw):
    cfg = IJEPA.Config(predictor_dim=64, predictor_depth=1, predictor_heads=4, min_keep=4)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def tiny_vit(depth: int = 2, dim: int = 96, img_size: int = 32, patch_size: int = 4) -> ViT:
    return ViT(patch_size=patch_size, embed_dim=dim, depth=depth, num_heads=3, img_size=img_size,
               pos_embed="sincos", class_token=False, name="vit_test")


@pytest.mark.parametrize("img_size, patch", [(32, 4), (56, 4)])
def test_context_and_target_blocks_do_not_overlap(img_size, patch):
    method = IJEPA(tiny_vit(img_size=img_size, patch_size=patch), ijepa_config())
    n = (img_size // patch) ** 2
    for _ in range(5):
        context, targets = method.sample_masks(6, torch.device("cpu"))
        assert len(targets) == method.cfg.num_targets
        assert context.shape[0] == 6 and context.shape[1] >= method.cfg.min_keep
        for t in targets:
            assert t.shape[0] == 6 and t.shape[1] > 0
        for b in range(6):
            ctx = set(context[b].tolist())
            assert len(ctx) == context.shape[1] and max(ctx) < n
            for t in targets:
                assert not ctx & set(t[b].tolist())


def test_predictor_output_matches_target_tokens():
    method = IJEPA(tiny_vit(), ijepa_config())
    images = torch.randn(3, 3, 32, 32)
    context, targets = method.sample_masks(3, images.device)
    z = method.backbone.forward_tokens(images, context)
    stacked = torch.cat(targets)
    pred = method.predictor(z, context, stacked)
    h = method.target_tokens(images)
    assert pred.shape == gather_tokens(h.repeat(len(targets), 1, 1), stacked).shape
    assert pred.shape == (3 * len(targets), targets[0].shape[1], 96)

    preds, tgts, _ = method.predict(images, context, targets)
    assert preds.shape == tgts.shape == (sum(t.numel() for t in targets), 96)
    # blocks of different sizes take the unbatched path and give the same tokens count
    uneven = [targets[0], targets[1][:, :-1]]
    preds, tgts, _ = method.predict(images, context, uneven)
    assert preds.shape == tgts.shape == (sum(t.numel() for t in uneven), 96)


def test_target_tokens_are_layer_normalised_outputs_of_the_ema_encoder():
    method = IJEPA(tiny_vit(), ijepa_config())
    images = torch.randn(2, 3, 32, 32)
    h = method.target_tokens(images)
    raw = method.target_encoder.forward_tokens(images)
    expected = (raw - raw.mean(-1, keepdim=True)) / torch.sqrt(raw.var(-1, unbiased=False,
                                                                       keepdim=True) + 1e-5)
    torch.testing.assert_close(h, expected)


@pytest.mark.parametrize("loss", ["smooth_l1", "l2"])
def test_loss_formula(loss):
    method = IJEPA(tiny_vit(), ijepa_config(loss=loss))
    preds, targets = 2 * torch.randn(50, 96), torch.randn(50, 96)
    d = (preds - targets).abs()
    if loss == "smooth_l1":
        expected = torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()
    else:
        expected = (d ** 2).mean()
    torch.testing.assert_close(method.prediction_loss(preds, targets), expected)


def test_target_encoder_gets_no_gradients():
    method = IJEPA(tiny_vit(), ijepa_config())
    method.train()
    assert not method.target_encoder.training
    out = method.training_step({"views": [torch.randn(4, 3, 32, 32)]})
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in method.target_encoder.parameters())
    assert all(p.grad is not None for p in method.backbone.blocks.parameters())
    assert all(p.grad is not None for p in method.predictor.parameters())
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert not trainable & {id(p) for p in method.target_encoder.parameters()}
    assert method.backbone_for_eval() is method.target_encoder
    assert method.backbone_for_eval()(torch.randn(2, 3, 32, 32)).shape == (2, 96)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_target_encoder_follows_the_ema_formula(schedule):
    method = IJEPA(tiny_vit(), ijepa_config(momentum_start=0.9, momentum_end=1.0,
                                            momentum_schedule=schedule))
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(torch.randn_like(p))
    old_target = [p.clone() for p in method.target_encoder.parameters()]
    online = [p.clone() for p in method.backbone.parameters()]

    method.on_step_end(step=25, total_steps=100)
    if schedule == "linear":
        m = 0.9 + 0.1 * 25 / 100
    else:
        m = 1.0 - 0.1 * (1 + math.cos(math.pi * 25 / 100)) / 2
    assert method.momentum == pytest.approx(m)
    for new, old, o in zip(method.target_encoder.parameters(), old_target, online):
        torch.testing.assert_close(new, m * old + (1 - m) * o)

    method.on_step_end(step=100, total_steps=100)  # momentum 1: the target no longer moves
    frozen = [p.clone() for p in method.target_encoder.parameters()]
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    method.on_step_end(step=150, total_steps=100)
    for new, old in zip(method.target_encoder.parameters(), frozen):
        assert torch.equal(new, old)


def test_bad_config_values_raise_clear_errors():
    with pytest.raises(ConfigError, match="method.loss"):
        IJEPA(tiny_vit(), ijepa_config(loss="l1"))
    with pytest.raises(ConfigError, match="momentum"):
        IJEPA(tiny_vit(), ijepa_config(momentum_start=1.0, momentum_end=0.99))
    with pytest.raises(ConfigError, match="context_scale"):
        IJEPA(tiny_vit(), ijepa_config(context_scale=[0.5, 1.5]))


@pytest.mark.parametrize("preset, grid", [("cifar10_vit_tiny", (8, 8)),
                                          ("imagenet_vit_small", (14, 14))])
def test_presets_validate_and_build(preset, grid, tmp_path):
    cfg = load_config(REPO / "configs" / "ijepa" / f"{preset}.yaml", [f"data.root={tmp_path}"])
    method = build_method(cfg)
    assert isinstance(method, IJEPA) and method.grid_size == grid
    assert cfg.optim.name == "adamw"
    assert cfg.method.momentum_start == 0.996 and cfg.method.momentum_end == 1.0
    assert cfg.method.predictor_dim < method.backbone.embed_dim  # a narrow predictor


def test_thirty_steps_on_real_cifar10_lower_the_loss(cifar_root):
    train = load_cifar_images(cifar_root, 256)
    held_out = v2.functional.normalize(load_cifar_images(cifar_root, 32, "test"), CIFAR_MEAN,
                                       CIFAR_STD)
    method = IJEPA(tiny_vit(depth=2), ijepa_config(predictor_dim=64, predictor_depth=2))
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3,
                            weight_decay=0.04)
    torch.manual_seed(7)
    held_out_masks = method.sample_masks(len(held_out), held_out.device)

    def held_out_loss():
        with torch.no_grad():
            preds, targets, _ = method.predict(held_out, *held_out_masks)
            return method.prediction_loss(preds, targets).item()

    before = held_out_loss()
    method.train()
    for step in range(30):
        idx = torch.randint(0, len(train), (32,))
        loss = method.training_step({"views": [crop_flip_normalise(train[idx], 0.3)]}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, 30)
    after = held_out_loss()
    assert after < 0.9 * before, (before, after)
