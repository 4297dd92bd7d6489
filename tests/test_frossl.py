"""FroSSL: the loss against the paper's formula written out with eigenvalues and lightly's
FroSSLLoss (values and gradients, 2 and 3 views, N > D and N <= D), gathered over 2 ranks == 1,
and the training step (per-view passes, one graph)."""
from __future__ import annotations

import math

import pytest
import torch

from _helpers import assert_same_value_and_grads
from _je import (assert_one_graph, assert_ranks_match_full, lightly_module, loss_on_ranks,
                 one_training_step)
from vissl_lite.methods.frossl import frossl_loss


def reference(views, w) -> float:
    """sum_v log sum_j lambda_j^2 (eigenvalues of the trace-normalised covariance)
    + w V D ||Z_v - Zbar||^2 / (N D)."""
    z = [v.double() / v.double().norm(dim=0, keepdim=True) for v in views]
    mean = sum(z) / len(z)
    n, d = z[0].shape
    total = 0.0
    for v in z:
        eig = torch.linalg.eigvalsh(v.T @ v)
        eig = eig / eig.sum()
        total += math.log(float((eig ** 2).sum()))
        total += w * len(z) * d * float(((v - mean) ** 2).sum()) / (n * d)
    return total


@pytest.mark.parametrize("n, d, k", [(12, 5, 2), (6, 9, 3)])
def test_loss_is_the_papers_formula(n, d, k):
    views = [torch.randn(n, d) for _ in range(k)]
    assert frossl_loss(views, 1.5)[0].item() == pytest.approx(reference(views, 1.5), rel=1e-5)


@pytest.mark.parametrize("n, d, k", [(16, 8, 2), (6, 10, 3)])
def test_loss_equals_lightlys_frossl_loss(n, d, k):
    theirs_fn = lightly_module("loss").FroSSLLoss(invariance_weight=2.0)
    g = torch.Generator().manual_seed(n)
    views = [torch.randn(n, d, generator=g) for _ in range(k)]
    assert_same_value_and_grads(lambda *v: frossl_loss(list(v), 2.0)[0],
                                lambda *v: theirs_fn(list(v)), views,
                                grad_tol=dict(rtol=1e-4, atol=1e-6))


def _loss(a, b):
    return frossl_loss([a, b], 1.0)[0]


def test_gathered_over_two_ranks_equals_full_batch(tmp_path):
    z_a, z_b = torch.randn(12, 6), torch.randn(12, 6)
    parts = loss_on_ranks(_loss, [z_a, z_b], (), tmp_path)
    assert_ranks_match_full(parts, _loss, [z_a, z_b], (), same_loss_on_every_rank=True)


def test_step_is_the_loss_of_per_view_projections_and_one_graph():
    method, batch, out = one_training_step("frossl")
    with torch.no_grad():
        z = [method.projector(method.backbone(v)) for v in batch["views"]]
    assert out.loss.item() == pytest.approx(reference(z, 1.0), rel=1e-4)
    assert_one_graph(method, batch)
