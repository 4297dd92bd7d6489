"""Barlow Twins' loss against the formula written out, on one process and gathered over 2 ranks."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from _helpers import TinyNet, pair_loss_on_ranks
from vissl_lite.methods.barlow_twins import BarlowTwins, barlow_twins_loss


def reference_barlow_twins(z_a: torch.Tensor, z_b: torch.Tensor, lam: float, eps: float = 1e-5) -> float:
    """Algorithm 1 of the paper in numpy, summing the cross-correlation entries one by one."""
    a, b = z_a.double().numpy(), z_b.double().numpy()
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + eps)
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + eps)
    n, d = a.shape
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lam * c_ij ** 2
    return loss


@pytest.mark.parametrize("lam", [0.0051, 0.5])
def test_barlow_twins_matches_formula(lam):
    z_a, z_b = torch.randn(10, 6) * 3 + 1, torch.randn(10, 6)
    loss = barlow_twins_loss(z_a, z_b, lam)
    assert loss.item() == pytest.approx(reference_barlow_twins(z_a, z_b, lam), rel=1e-5)


def test_barlow_twins_matches_reference_code_with_batchnorm():
    """The official code: BatchNorm1d(affine=False) in training mode, c = bn(z1).T @ bn(z2) / N."""
    z_a, z_b = torch.randn(16, 8), torch.randn(16, 8)
    bn = nn.BatchNorm1d(8, affine=False)
    c = bn(z_a).T @ bn(z_b) / 16
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    assert barlow_twins_loss(z_a, z_b, 0.0051).item() == pytest.approx((on + 0.0051 * off).item(), rel=1e-5)


def test_barlow_twins_is_zero_for_identical_decorrelated_views():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z.clone(), 0.0051, eps=0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert barlow_twins_loss(z, -z, 0.0051, eps=0.0).item() == pytest.approx(8.0)  # c = -I




def test_barlow_twins_gathered_over_two_ranks_equals_full_batch(tmp_path):
    """Every rank sees the global-batch loss; rank gradients averaged as DDP does = full gradient."""
    world, lam = 2, 0.0051
    z_a, z_b = torch.randn(12, 5), torch.randn(12, 5) + torch.randn(12, 1)
    parts = pair_loss_on_ranks(barlow_twins_loss, z_a, z_b, (lam,), tmp_path, world)

    full_a, full_b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    full = barlow_twins_loss(full_a, full_b, lam)
    full.backward()
    for p in parts:
        assert p["loss"].item() == pytest.approx(reference_barlow_twins(z_a, z_b, lam), rel=1e-5)
    ddp_grad_a = torch.cat([p["grad_a"] for p in parts]) / world
    ddp_grad_b = torch.cat([p["grad_b"] for p in parts]) / world
    torch.testing.assert_close(ddp_grad_a, full_a.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ddp_grad_b, full_b.grad, rtol=1e-4, atol=1e-6)


def test_barlow_twins_projector_and_step():
    method = BarlowTwins(TinyNet(), {"proj_hidden_dim": 32, "proj_output_dim": 24, "scale_loss": 0.5})
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 32), (32, 24)]
    views = [torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)]
    out = method.training_step({"views": views})
    out.loss.backward()
    assert all(p.grad is not None for p in method.parameters())
    with torch.no_grad():  # train-mode BN normalises with batch statistics: same outputs again
        z_a, z_b = (method.projector(method.backbone(v)) for v in views)
    assert out.loss.item() == pytest.approx(0.5 * barlow_twins_loss(z_a, z_b, 0.0051).item(), rel=1e-5)
