"""Alignment + uniformity: the loss against the paper's formulas written out pair by pair and
lightly's HypersphereLoss (values and gradients), gathered over 2 ranks == 1, and the step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_same_value_and_grads
from _je import (assert_one_graph, assert_ranks_match_full, lightly_module, loss_on_ranks,
                 one_training_step)
from vissl_lite.methods.align_uniform import align_uniform_loss


def reference(z_a, z_b, alpha, t, w_align, w_unif) -> float:
    """Eq. (4)-(5) of the paper in Python floats."""
    x = F.normalize(z_a.double(), dim=1).tolist()
    y = F.normalize(z_b.double(), dim=1).tolist()
    sq = lambda u, v: sum((p - q) ** 2 for p, q in zip(u, v))  # noqa: E731
    n = len(x)
    align = sum(sq(x[i], y[i]) ** (alpha / 2) for i in range(n)) / n

    def uniform(u):
        pairs = [math.exp(-t * sq(u[i], u[j])) for i in range(n) for j in range(i + 1, n)]
        return math.log(sum(pairs) / len(pairs))

    return w_align * align + w_unif * (uniform(x) + uniform(y)) / 2


@pytest.mark.parametrize("alpha, t, w_align, w_unif", [(2.0, 2.0, 1.0, 1.0), (1.5, 3.0, 3.0, 0.5)])
def test_loss_is_the_papers_formula(alpha, t, w_align, w_unif):
    z_a, z_b = torch.randn(7, 5), torch.randn(7, 5)
    loss = align_uniform_loss(z_a, z_b, alpha, t, w_align, w_unif)[0]
    assert loss.item() == pytest.approx(reference(z_a, z_b, alpha, t, w_align, w_unif), rel=1e-5)


@pytest.mark.parametrize("t, lam, alpha", [(1.0, 1.0, 2.0), (2.0, 0.5, 1.0)])
def test_loss_equals_lightlys_hypersphere_loss(t, lam, alpha):
    theirs_fn = lightly_module("loss.hypersphere_loss").HypersphereLoss(t=t, lam=lam, alpha=alpha)
    g = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    assert_same_value_and_grads(lambda a, b: align_uniform_loss(a, b, alpha, t, 1.0, lam)[0],
                                theirs_fn, [z_a, z_b])


def _loss(z_a, z_b):
    return align_uniform_loss(z_a, z_b, 2.0, 2.0, 3.0, 1.0)[0]


def test_gathered_over_two_ranks_equals_full_batch(tmp_path):
    """Alignment per rank (averaged by DDP), uniformity over every pair of the global batch."""
    z_a, z_b = torch.randn(12, 6), torch.randn(12, 6)
    parts = loss_on_ranks(_loss, [z_a, z_b], (), tmp_path)
    assert_ranks_match_full(parts, _loss, [z_a, z_b], (), same_loss_on_every_rank=False)


def test_step_is_the_loss_of_the_projections_and_one_graph():
    method, batch, out = one_training_step("align_uniform")
    with torch.no_grad():
        z_a, z_b = method.projector(method.backbone(torch.cat(batch["views"]))).chunk(2)
    assert out.loss.item() == pytest.approx(reference(z_a, z_b, 2.0, 2.0, 1.0, 1.0), rel=1e-5)
    assert out.metrics["uniform"].item() < 0 < out.metrics["align"].item() <= 4
    assert_one_graph(method, batch)
