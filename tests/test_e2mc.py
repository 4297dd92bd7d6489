"""E2MC add-on: the two terms against their formulas written out, weights 0 = the base bitwise,
the weighted sum, one graph per step."""
from __future__ import annotations

import math

import pytest
import torch

from _helpers import assert_addon_is_base, base_and_addon, tiny_method, views_batch
from _je import assert_one_graph
from vissl_lite.errors import ConfigError
from vissl_lite.methods.e2mc import marginal_entropy, off_diagonal_covariance

BASE = {"name": "simclr", "proj_hidden_dim": 32, "proj_output_dim": 16}


def test_marginal_entropy_is_the_m_spacing_estimate():
    z = torch.randn(16, 5, dtype=torch.float64)
    b, m = 16, 4                                   # m = round(sqrt(16))
    expected = 0.0
    for d in range(5):
        u = sorted(1 / (1 + math.exp(-v)) for v in z[:, d].tolist())
        expected += sum(math.log((b + 1) / m * (u[i + m] - u[i]) + 1e-6) for i in range(b - m)) / (b - m)
    assert marginal_entropy(z).item() == pytest.approx(expected / 5, rel=1e-5)


def test_uniform_marginals_score_higher_than_collapsed_ones():
    g = torch.Generator().manual_seed(0)
    uniform = torch.logit(torch.rand(256, 4, generator=g).clamp(1e-4, 1 - 1e-4))
    collapsed = 0.01 * torch.randn(256, 4, generator=g)
    assert marginal_entropy(uniform) > marginal_entropy(collapsed) + 1.0
    assert abs(marginal_entropy(uniform).item()) < 0.3          # the entropy of U[0, 1] is 0


def test_off_diagonal_covariance_formula():
    z = torch.randn(10, 4, dtype=torch.float64)
    c = z - z.mean(0)
    cov = [[sum(c[k, i] * c[k, j] for k in range(10)).item() / 9 for j in range(4)] for i in range(4)]
    expected = sum(cov[i][j] ** 2 for i in range(4) for j in range(4) if i != j) / 4
    assert off_diagonal_covariance(z).item() == pytest.approx(expected, rel=1e-6)


def _pair(**e2mc):
    return base_and_addon("e2mc", BASE, **e2mc)


def test_zero_weights_are_the_base_method_bitwise():
    plain, wrapped = _pair(lambda_ent=0.0, lambda_cov=0.0)
    assert wrapped.views == plain.views
    batch = views_batch(plain, batch=6)
    assert_addon_is_base(plain, wrapped, batch)


def test_loss_adds_the_weighted_terms():
    plain, wrapped = _pair(lambda_ent=0.5, lambda_cov=2.0)
    batch = views_batch(wrapped, batch=8)
    out = wrapped.training_step(batch)
    base_loss = plain.training_step(batch).loss
    z = wrapped.backbone(batch["views"][0])
    expected = base_loss - 0.5 * marginal_entropy(z) + 2.0 * off_diagonal_covariance(z)
    torch.testing.assert_close(out.loss, expected)
    assert {"marginal_entropy", "off_diag_cov", "pos_sim"} <= set(out.metrics)


def test_negative_weight_is_a_config_error():
    with pytest.raises(ConfigError, match="lambda_ent"):
        tiny_method("e2mc", base=BASE, lambda_ent=-1.0)


def test_one_graph_per_step():
    _, wrapped = _pair()
    assert_one_graph(wrapped, views_batch(wrapped, batch=8))
