"""N-JEPA (vissl_lite/methods/njepa.py): noise level 0 is I-JEPA bit for bit, the noisy queries
follow their formula with one level per row drawn on the device, no graph break of its own,
presets, and real CIFAR-10 steps that lower the loss."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _helpers import load_cifar_images, real_cifar_losses
from vissl_lite.backbones.vit import ViT
from vissl_lite.config import load_config
from vissl_lite.errors import ConfigError
from vissl_lite.methods import build_method
from vissl_lite.methods.ijepa import IJEPA
from vissl_lite.methods.njepa import NJEPA, noisy_positions

REPO = Path(__file__).resolve().parents[1]
TINY = {"predictor_dim": 32, "predictor_depth": 1, "predictor_heads": 2, "min_keep": 4}


def tiny_vit() -> ViT:
    return ViT(patch_size=4, embed_dim=48, depth=1, num_heads=3, img_size=32, pos_embed="sincos",
               class_token=False, name="vit_test")


def build(cls, seed=0, **cfg):
    torch.manual_seed(seed)
    return cls(tiny_vit(), {**TINY, **cfg})


def step_and_grads(method, images, seed=1):
    torch.manual_seed(seed)
    loss = method.training_step({"views": [images]}).loss
    params = [p for p in method.parameters() if p.requires_grad]
    return loss, torch.autograd.grad(loss, params)


def test_noise_level_zero_is_ijepa_bit_for_bit():
    images = torch.randn(4, 3, 32, 32)
    ijepa, njepa = build(IJEPA), build(NJEPA, noise_levels=[0.0])
    assert all(torch.equal(a, b) for a, b in zip(ijepa.state_dict().values(),
                                                 njepa.state_dict().values()))
    loss_i, grads_i = step_and_grads(ijepa, images)
    loss_n, grads_n = step_and_grads(njepa, images)
    assert torch.equal(loss_i, loss_n)
    assert all(torch.equal(a, b) for a, b in zip(grads_i, grads_n))
    noisy = build(NJEPA, noise_levels=[0.5])
    assert not torch.equal(step_and_grads(noisy, images)[0], loss_i)


def test_noisy_positions_formula_one_level_per_row():
    pos = torch.randn(64, 5, 8)
    levels = torch.tensor([0.0, 0.3, 0.9])
    torch.manual_seed(3)
    out = noisy_positions(pos, levels)
    torch.manual_seed(3)
    pick = torch.randint(0, 3, (64, 1, 1))
    eps = torch.randn_like(pos)
    s = levels[pick]
    torch.testing.assert_close(out, (1 - s ** 2).sqrt() * pos + s * eps)
    assert set(pick.flatten().tolist()) == {0, 1, 2}
    clean = (pick.flatten() == 0)
    assert torch.equal(out[clean], pos[clean])


def test_noise_is_variance_preserving():
    pos = torch.randn(4000, 1, 16)
    out = noisy_positions(pos, torch.tensor([0.6]))
    assert abs(out.std().item() - 1.0) < 0.05
    assert abs(torch.corrcoef(torch.stack([out.flatten(), pos.flatten()]))[0, 1].item() - 0.8) < 0.03


def test_predictor_adds_no_graph_break():
    """N-JEPA's only code in the step; the masks and the rest are I-JEPA's (the registry-wide
    one-graph test covers the whole step)."""
    method = build(NJEPA)
    context = torch.arange(20).repeat(2, 1)
    targets = torch.arange(40, 49).repeat(2 * 4, 1)
    z = torch.randn(2, 20, 48)
    explain = torch._dynamo.explain(method.predictor)(z, context, targets)
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons


def test_bad_noise_levels_raise():
    with pytest.raises(ConfigError, match="noise_levels"):
        build(NJEPA, noise_levels=[])
    with pytest.raises(ConfigError, match="noise_levels"):
        build(NJEPA, noise_levels=[0.0, 1.5])


@pytest.mark.parametrize("preset, grid", [("cifar10_vit_tiny", (8, 8)),
                                          ("imagenet_vit_small", (14, 14))])
def test_presets_validate_and_build(preset, grid, tmp_path):
    cfg = load_config(f"njepa/{preset}", [f"data.root={tmp_path}"])
    method = build_method(cfg)
    assert isinstance(method, NJEPA) and method.grid_size == grid
    assert 0.0 in cfg.method.noise_levels and len(cfg.method.noise_levels) > 1


def test_steps_on_real_cifar10_lower_the_loss(cifar_root):
    method = build(NJEPA, predictor_dim=48, predictor_heads=4)
    losses = real_cifar_losses(method, load_cifar_images(cifar_root, 64), steps=15, batch=32, lr=1e-3)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
