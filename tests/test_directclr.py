"""DirectCLR: equal to lightly's DirectCLRLoss (values and gradients; NT-Xent on the first d0
features), the official cross-view infoNCE written out, both gathered over 2 ranks == 1, and the
training step (no projector, the loss of the backbone's features, one graph)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_same_value_and_grads
from _je import (assert_one_graph, assert_ranks_match_full, lightly_module, loss_on_ranks,
                 one_training_step, tiny_method)
from vissl_lite.errors import ConfigError
from vissl_lite.methods.directclr import directclr_loss


def official_infonce(h_a, h_b, dim, t) -> float:
    """facebookresearch/directclr main.py infoNCE(z1, z2)/2 + infoNCE(z2, z1)/2, row by row."""
    a = F.normalize(h_a[:, :dim].double(), dim=1)
    b = F.normalize(h_b[:, :dim].double(), dim=1)
    total = 0.0
    for x, y in ((a, b), (b, a)):
        sims = (x @ y.T / t).tolist()
        total += sum(math.log(sum(math.exp(s) for s in row)) - row[i]
                     for i, row in enumerate(sims)) / len(sims)
    return total / 2


def test_ntxent_equals_lightlys_directclr_loss():
    theirs_fn = lightly_module("loss").DirectCLRLoss(loss_dim=5, temperature=0.5)
    g = torch.Generator().manual_seed(0)
    h_a, h_b = torch.randn(10, 12, generator=g), torch.randn(10, 12, generator=g)
    _, theirs_in = assert_same_value_and_grads(lambda a, b: directclr_loss(a, b, 5, 0.5, "ntxent"),
                                               theirs_fn, [h_a, h_b])
    for r in theirs_in:
        assert r.grad[:, 5:].abs().sum() == 0          # the features past d0 take no gradient


def test_infonce_is_the_official_formula():
    h_a, h_b = torch.randn(9, 10), torch.randn(9, 10)
    assert directclr_loss(h_a, h_b, 4, 0.1, "infonce").item() == pytest.approx(
        official_infonce(h_a, h_b, 4, 0.1), rel=1e-5)


def test_infonce_gathered_over_two_ranks_equals_full_batch(tmp_path):
    """(NT-Xent is SimCLR's nt_xent_loss, tested over 2 ranks in test_simclr.py.)"""
    h_a, h_b = torch.randn(12, 8), torch.randn(12, 8)
    parts = loss_on_ranks(directclr_loss, [h_a, h_b], (5, 0.2, "infonce"), tmp_path)
    assert_ranks_match_full(parts, directclr_loss, [h_a, h_b], (5, 0.2, "infonce"),
                            same_loss_on_every_rank=False)


def test_a_loss_dim_past_the_features_is_refused():
    with pytest.raises(ConfigError, match="method.loss_dim=600 exceeds the backbone's 512"):
        tiny_method("directclr", loss_dim=600)


def test_step_is_the_loss_of_the_backbone_features_and_one_graph():
    method, batch, out = one_training_step("directclr")
    assert [n for n, _ in method.named_children()] == ["backbone"]
    with torch.no_grad():
        h_a, h_b = method.backbone(torch.cat(batch["views"])).chunk(2)
    expected = directclr_loss(h_a, h_b, 32, 0.5)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert_one_graph(method, batch)
