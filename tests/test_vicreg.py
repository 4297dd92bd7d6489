"""VICReg: the loss against its formula and lightly's VICRegLoss, gathered over 2 ranks == 1."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import assert_same_value_and_grads, tiny_method, views_batch
from _je import assert_one_graph, assert_ranks_match_full, lightly_module, loss_on_ranks
from vissl_lite.methods.vicreg import vicreg_loss


def reference_vicreg(z_a, z_b, lam=25.0, mu=25.0, nu=1.0, eps=1e-4) -> float:
    """Eq. 1-6 of the paper in numpy, entry by entry."""
    a, b = z_a.double().numpy(), z_b.double().numpy()
    n, d = a.shape
    inv = sum((a[i, j] - b[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def var(z):
        return sum(max(0.0, 1 - np.sqrt(z[:, j].var(ddof=1) + eps)) for j in range(d)) / d

    def cov(z):
        zc = z - z.mean(0)
        return sum((zc[:, j] @ zc[:, k] / (n - 1)) ** 2
                   for j in range(d) for k in range(d) if j != k) / d

    return lam * inv + mu * (var(a) + var(b)) / 2 + nu * (cov(a) + cov(b))


@pytest.mark.parametrize("scale", [0.3, 3.0])   # below / above the variance hinge
def test_vicreg_matches_formula(scale):
    z_a, z_b = torch.randn(9, 5) * scale, torch.randn(9, 5) * scale + 0.5
    assert vicreg_loss(z_a, z_b).item() == pytest.approx(reference_vicreg(z_a, z_b), rel=1e-5)
    assert vicreg_loss(z_a, z_b, 1.0, 2.0, 3.0).item() == pytest.approx(
        reference_vicreg(z_a, z_b, 1.0, 2.0, 3.0), rel=1e-5)


def test_vicreg_equals_lightly_values_and_gradients():
    loss_mod = lightly_module("loss")
    z_a, z_b = torch.randn(16, 8) * 0.5, torch.randn(16, 8)
    assert_same_value_and_grads(vicreg_loss, loss_mod.VICRegLoss(), [z_a, z_b])


def test_vicreg_gathered_over_two_ranks_equals_full_batch(tmp_path):
    """Variance and covariance over the gathered batch: rank losses average to the full loss and
    rank gradients averaged as DDP does equal the full gradient."""
    z_a, z_b = torch.randn(12, 6) * 0.7, torch.randn(12, 6) + torch.randn(12, 1)
    parts = loss_on_ranks(vicreg_loss, [z_a, z_b], (), tmp_path)
    assert_ranks_match_full(parts, vicreg_loss, [z_a, z_b], (), same_loss_on_every_rank=False)
    assert parts[0]["loss"].item() != pytest.approx(parts[1]["loss"].item())  # local invariance


def test_vicreg_step_uses_separate_view_passes_and_is_one_graph():
    torch.manual_seed(0)
    method = tiny_method("vicreg")
    method.train()
    batch = views_batch(method, batch=6)
    out = method.training_step(batch)
    with torch.no_grad():
        z_a, z_b = (method.projector(method.backbone(v)) for v in batch["views"])
    assert out.loss.item() == pytest.approx(reference_vicreg(z_a, z_b), rel=1e-5)
    assert_one_graph(method, batch)
