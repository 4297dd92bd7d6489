"""TiCo: the loss and its covariance memory against the formula and lightly's TiCoLoss over
consecutive steps (values and gradients), gathered over 2 ranks == 1, one graph per step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _je import (assert_one_graph, assert_ranks_match_full, lightly_module, loss_on_ranks,
                 one_training_step)
from vissl_lite.methods.tico import tico_loss


def reference_tico(z_a, z_b, cov, beta, rho):
    """The paper's loss, sample by sample."""
    a, b = F.normalize(z_a.double(), dim=1), F.normalize(z_b.double(), dim=1)
    n = a.shape[0]
    c = beta * cov.double() + (1 - beta) * sum(torch.outer(a[i], a[i]) for i in range(n)) / n
    inv = 1 - sum(float(a[i] @ b[i]) for i in range(n)) / n
    return inv + rho * sum(float(a[i] @ c @ a[i]) for i in range(n)) / n, c


def test_tico_matches_formula():
    cov = torch.randn(5, 5).abs() * 0.1
    z_a, z_b = torch.randn(7, 5), torch.randn(7, 5)
    loss, new_cov = tico_loss(z_a, z_b, cov, 0.8, 3.0)
    expected, expected_cov = reference_tico(z_a, z_b, cov, 0.8, 3.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(new_cov.double(), expected_cov, rtol=1e-5, atol=1e-7)


def test_tico_equals_lightly_over_consecutive_steps():
    """Three steps: the covariance memory starts at zero and carries over, as lightly's."""
    theirs = lightly_module("loss").TiCoLoss(beta=0.9, rho=8.0)
    cov = torch.zeros(8, 8)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        z_a, z_b = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
        ours_in = [z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)]
        theirs_in = [z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)]
        ours, cov = tico_loss(*ours_in, cov, 0.9, 8.0)
        reference = theirs(*theirs_in)
        ours.backward()
        reference.backward()
        torch.testing.assert_close(ours, reference)
        torch.testing.assert_close(cov, theirs.C)
        for o, t in zip(ours_in, theirs_in):
            torch.testing.assert_close(o.grad, t.grad)


def _tico_fixed_memory(z_a, z_b):
    cov = torch.eye(z_a.shape[1]) * 0.2 + 0.01
    return tico_loss(z_a, z_b, cov, 0.9, 8.0)[0]


def test_tico_gathered_over_two_ranks_equals_full_batch(tmp_path):
    z_a, z_b = torch.randn(12, 6), torch.randn(12, 6)
    parts = loss_on_ranks(_tico_fixed_memory, [z_a, z_b], (), tmp_path)
    assert_ranks_match_full(parts, _tico_fixed_memory, [z_a, z_b], (), same_loss_on_every_rank=True)


def test_step_online_on_view_1_momentum_on_view_2_and_one_graph():
    method, batch, out = one_training_step("tico")
    with torch.no_grad():
        z_a = method.projector(method.backbone(batch["views"][0]))
        z_b = method.momentum_projector(method.momentum_backbone(batch["views"][1]))
    expected, expected_cov = reference_tico(z_a, z_b, torch.zeros(16, 16), 0.9, 8.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(method.cov.double(), expected_cov, rtol=1e-5, atol=1e-7)
    assert not any(p.requires_grad for p in method.momentum_backbone.parameters())
    assert_one_graph(method, batch)
