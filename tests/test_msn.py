"""MSN and PMSN (vissl_lite/methods/msn.py): the loss equal to lightly's MSNLoss, PMSNLoss and
PMSNCustomLoss in values and gradients in the presets' configuration, 2 gloo ranks equal to 1,
masked anchor and focal views, the EMA target, presets, and 30 real CIFAR-10 steps."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly.loss import MSNLoss, PMSNCustomLoss, PMSNLoss

from _helpers import load_cifar_images, loss_on_ranks, tiny_backbone
from _vit_steps import thirty_steps
from vissl_lite.config import ConfigError, load_config
from vissl_lite.methods import build_method
from vissl_lite.methods.msn import MSN, PMSN, msn_loss, power_law_prior

REPO = Path(__file__).resolve().parents[1]
#: the presets' loss configuration (msn_vits16.yaml): temperature, sharpening, Sinkhorn, weight
PRESET = dict(temperature=0.1, sharpen_temperature=0.25, sinkhorn_iterations=3, reg_weight=1.0)


def _inputs(seed=0, batch=8, views=3, dim=16, protos=32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(views * batch, dim, generator=g), torch.randn(batch, dim, generator=g),
            torch.randn(protos, dim, generator=g))


def _ours(anchors, targets, prototypes, prior=None):
    ce, reg = msn_loss(anchors, targets, prototypes, **PRESET, prior=prior)
    return ce + reg


@pytest.mark.parametrize("kind", ["msn", "pmsn", "pmsn_custom"])
def test_loss_equals_lightly_in_values_and_gradients(kind):
    anchors, targets, prototypes = _inputs()
    prior = None if kind == "msn" else power_law_prior(32, 0.25)
    if kind == "msn":
        oracle = MSNLoss(temperature=0.1, sinkhorn_iterations=3, regularization_weight=1.0)
    elif kind == "pmsn":
        oracle = PMSNLoss(temperature=0.1, sinkhorn_iterations=3, regularization_weight=1.0,
                          power_law_exponent=0.25)
    else:
        k = torch.arange(1, 33, dtype=torch.float32)
        oracle = PMSNCustomLoss(target_distribution=lambda m: k ** -0.25 / (k ** -0.25).sum(),
                                temperature=0.1, sinkhorn_iterations=3, regularization_weight=1.0)
    grads = []
    for fn in (lambda a, t, p: _ours(a, t, p, prior),
               lambda a, t, p: oracle(a, t, p, target_sharpen_temperature=0.25)):
        a, p = anchors.clone().requires_grad_(True), prototypes.clone().requires_grad_(True)
        loss = fn(a, targets, p)
        loss.backward()
        grads.append((loss.detach(), a.grad, p.grad))
    for ours, theirs in zip(grads[0], grads[1]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_power_law_prior_is_k_to_the_minus_s():
    k = torch.arange(1, 11, dtype=torch.float32)
    torch.testing.assert_close(power_law_prior(10, 0.5), k ** -0.5 / (k ** -0.5).sum())


def _loss_for_ranks(anchors, targets, prototypes):
    return _ours(anchors, targets, prototypes)


def test_two_gloo_ranks_equal_one(tmp_path):
    """Sinkhorn over the global batch and the me-max mean over every rank's anchors: the ranks'
    mean loss (each its own cross-entropy plus the shared regulariser) and their gradients (DDP
    averages them) equal those of the whole batch on one rank. Anchors are view-major per rank,
    so the whole batch is built from the ranks' halves."""
    torch.manual_seed(0)
    views, batch, dim = 2, 8, 16
    a = torch.randn(2, views, batch // 2, dim)                 # rank, view, sample
    targets, prototypes = torch.randn(batch, dim), torch.randn(32, dim)
    per_rank = torch.cat([a[r].reshape(-1, dim) for r in range(2)])
    results = loss_on_ranks(_loss_for_ranks, (per_rank, targets), (prototypes,), tmp_path)
    whole = a.permute(1, 0, 2, 3).reshape(-1, dim).requires_grad_(True)
    loss = _ours(whole, targets, prototypes)
    loss.backward()
    grad = whole.grad.view(views, 2, batch // 2, dim).permute(1, 0, 2, 3)
    torch.testing.assert_close((results[0]["loss"] + results[1]["loss"]) / 2, loss.detach(),
                               rtol=1e-5, atol=1e-6)
    for r, res in enumerate(results):
        # the regulariser's gradient reaches every rank; DDP then averages: x 2 before it
        torch.testing.assert_close(res["grads"][0], 2 * grad[r].reshape(-1, dim), rtol=1e-4,
                                   atol=1e-6)


def test_anchor_and_focal_views_are_masked_and_the_target_sees_every_patch():
    torch.manual_seed(0)
    method = MSN(tiny_backbone(MSN), {**MSN.tiny_config, "mask_ratio": 0.25}).train()
    method.setup(total_steps=10, steps_per_epoch=5)
    seen = []
    for vit in (method.backbone, method.target_backbone):
        vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[:2])))
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)] + \
        [torch.randn(4, 3, 16, 16) for _ in range(2)]
    out = method.training_step({"views": views})
    # target: CLS + 64 patches; anchor: CLS + 48 of 64; focal: 8 samples, CLS + 12 of 16
    assert seen == [(4, 65), (4, 1 + 48), (8, 1 + 12)]
    out.loss.backward()
    assert all(p.grad is None for p in method.target_backbone.parameters())
    assert method.prototypes.grad.abs().sum() > 0 and "prototypes" in method.no_weight_decay()
    assert method.backbone_for_eval() is method.target_backbone


def test_target_follows_the_ema_over_the_stretched_horizon():
    method = MSN(tiny_backbone(MSN), MSN.tiny_config)
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target_backbone.parameters()]
    method.on_step_end(50, 100)
    m = 0.996 + (1.0 - 0.996) * 50 / 125                       # horizon 1.25 x 100 steps
    assert method.momentum == pytest.approx(m)
    for t, t0, s in zip(method.target_backbone.parameters(), before, method.backbone.parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * s)


def test_pmsn_regulariser_is_the_prior_matching_one():
    torch.manual_seed(0)
    msn = MSN(tiny_backbone(MSN), MSN.tiny_config)
    pmsn = PMSN(tiny_backbone(PMSN), PMSN.tiny_config)
    pmsn.load_state_dict(msn.state_dict())
    batch = {"views": [torch.randn(4, 3, 32, 32) for _ in range(2)]
             + [torch.randn(4, 3, 16, 16) for _ in range(2)]}
    torch.manual_seed(1)
    a = msn.training_step(batch)
    torch.manual_seed(1)
    b = pmsn.training_step(batch)
    torch.testing.assert_close(a.metrics["ce"], b.metrics["ce"])
    assert not torch.allclose(a.metrics["reg"], b.metrics["reg"])


def test_bad_config_values_raise_clear_errors():
    with pytest.raises(ConfigError, match="mask_ratio"):
        MSN(tiny_backbone(MSN), {**MSN.tiny_config, "mask_ratio": 1.0})
    with pytest.raises(ConfigError, match="sharpen_temperature"):
        MSN(tiny_backbone(MSN), {**MSN.tiny_config, "sharpen_temperature": 0.0})


@pytest.mark.parametrize("preset", ["msn/cifar10_vit_tiny", "msn/imagenet_vit_small",
                                    "pmsn/cifar10_vit_tiny", "pmsn/imagenet_vit_small"])
def test_presets_validate(preset, tmp_path):
    cfg = load_config(REPO / "configs" / f"{preset}.yaml", [f"data.root={tmp_path}"])
    m = cfg.method
    assert (m.temperature, m.sharpen_temperature, m.sinkhorn_iterations, m.reg_weight) == \
        (0.1, 0.25, 3, 1.0)
    assert cfg.backbone.dynamic_img_size and m.mask_ratio == 0.15
    if "cifar10" in preset:
        assert isinstance(build_method(cfg), PMSN if preset.startswith("pmsn") else MSN)


def test_thirty_steps_on_real_cifar10_lower_the_loss_without_collapse(cifar_root):
    torch.manual_seed(0)
    method = MSN(tiny_backbone(MSN), {**MSN.tiny_config, "num_focal_views": 0})
    run = thirty_steps(method, load_cifar_images(cifar_root, 256), "msn", batch=32, num_views=2)
    assert run.last < 0.9 * run.first, run        # seed 0: 4.415 -> 2.992, RankMe 6.2 -> 6.2
    assert run.rank > 0.5 * run.initial_rank, run
