"""MMCR: the loss against lightly's MMCRLoss on normalised embeddings (values and gradients, with
and without the local term), the momentum-free form against the official formula written out
with eigenvalues, 2 ranks == 1, the presets' projectors against lightly's MMCRProjectionHead, and
the training step (its loss, frozen momentum copies, the EMA update, one graph)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_same_value_and_grads
from _je import (assert_one_graph, assert_ranks_match_full, head_layout, lightly_module,
                 loss_on_ranks, one_training_step, tiny_method)
from vissl_lite.config import load_config
from vissl_lite.errors import ConfigError
from vissl_lite.methods import build_method
from vissl_lite.methods.mmcr import mmcr_loss


def nuclear(m: torch.Tensor) -> torch.Tensor:
    """Sum of singular values as the square roots of the eigenvalues of m m^T (or m^T m)."""
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum()


def official_cifar_loss(z: torch.Tensor, lmbda: float) -> torch.Tensor:
    """mmcr/cifar_stl/loss_mmcr.py: z (B, k, d) -> lmbda * local / B - global (no momentum)."""
    z = F.normalize(z.double(), dim=-1)
    local = sum(nuclear(z[i]) for i in range(z.shape[0]))
    return lmbda * local / z.shape[0] - nuclear(z.mean(dim=1))


def _inputs(n=8, k=3, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, d, generator=g), torch.randn(n, k, d, generator=g)


@pytest.mark.parametrize("lmbda", [0.0, 5e-3])
def test_mmcr_equals_lightly_on_normalised_embeddings(lmbda):
    theirs_fn = lightly_module("loss").MMCRLoss(lmda=lmbda)
    online, momentum = _inputs()
    assert_same_value_and_grads(
        lambda x: mmcr_loss(x, momentum, lmbda),
        lambda x: theirs_fn(F.normalize(x, dim=-1), F.normalize(momentum, dim=-1)), [online],
        grad_tol=dict(rtol=1e-4, atol=1e-6))


@pytest.mark.parametrize("lmbda", [0.0, 0.1])
def test_mmcr_without_momentum_is_the_official_cifar_loss(lmbda):
    online, _ = _inputs(n=7, k=4, d=5, seed=1)
    assert mmcr_loss(online, None, lmbda).item() == pytest.approx(
        official_cifar_loss(online, lmbda).item(), rel=1e-5)


def test_nuclear_norm_of_agreeing_views_is_the_square_root_of_n():
    """k identical views of n orthonormal directions: the centroids are orthonormal, ||C||_* = n."""
    z = torch.eye(4)[:, None, :].expand(4, 3, 4)
    assert mmcr_loss(z).item() == pytest.approx(-4.0)


def _mmcr_with_momentum(online, momentum):
    return mmcr_loss(online, momentum, 0.01)


def test_mmcr_gathered_over_two_ranks_equals_full_batch(tmp_path):
    online, momentum = _inputs(n=12, k=2, d=6, seed=2)
    parts = loss_on_ranks(_mmcr_with_momentum, [online, momentum], (), tmp_path)
    assert_ranks_match_full(parts, _mmcr_with_momentum, [online, momentum], (),
                            same_loss_on_every_rank=True)


@pytest.mark.parametrize("preset, dims", [("mmcr/imagenet_resnet50", (2048, 8192, 512, 2)),
                                          ("mmcr/cifar10_resnet18", (512, 512, 128, 1))])
def test_presets_build_lightlys_mmcr_projection_head(preset, dims, tmp_path):
    heads = lightly_module("models.modules.heads")
    method = build_method(load_config(preset, [f"data.root={tmp_path}"]))
    assert head_layout(method.projector) == head_layout(heads.MMCRProjectionHead(*dims))
    assert hasattr(method, "momentum_backbone") == preset.startswith("mmcr/imagenet")


def test_one_view_is_refused():
    with pytest.raises(ConfigError, match="method.num_views=1"):
        tiny_method("mmcr", num_views=1)


def test_step_is_the_loss_of_all_views_and_momentum_copies_and_one_graph():
    method, batch, out = one_training_step("mmcr")
    n, k = batch["views"][0].shape[0], method.cfg.num_views
    x = torch.cat(batch["views"])
    with torch.no_grad():
        z = method.projector(method.backbone(x)).reshape(k, n, -1).transpose(0, 1)
        z_m = method.momentum_projector(method.momentum_backbone(x)).reshape(k, n, -1).transpose(0, 1)
    zz = F.normalize(torch.cat([z, z_m], dim=1).double(), dim=-1)
    assert out.loss.item() == pytest.approx(-nuclear(zz.mean(dim=1)).item(), rel=1e-5)
    assert 0 < out.metrics["centroid_norm"].item() <= 1
    assert not any(p.requires_grad for p in method.momentum_projector.parameters())
    before = [p.clone() for p in method.momentum_projector.parameters()]
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(1.0)
    method.on_step_end(0, 10)
    for b, p, o in zip(before, method.momentum_projector.parameters(), method.projector.parameters()):
        torch.testing.assert_close(p, 0.99 * b + 0.01 * o)
    assert_one_graph(method, batch)
