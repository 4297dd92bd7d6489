"""BYOL: the loss against its formula and lightly's NegativeCosineSimilarity, the summed
symmetric loss, the EMA target, one graph per step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import tiny_method, views_batch
from _je import assert_one_graph, lightly_module
from vissl_lite.errors import ConfigError
from vissl_lite.methods.byol import byol_loss


def reference_byol(p: torch.Tensor, z: torch.Tensor) -> float:
    """Eq. 2 of the paper: || p/||p|| - z/||z|| ||^2, averaged over the batch, in numpy."""
    p, z = p.double().numpy(), z.double().numpy()
    total = 0.0
    for i in range(p.shape[0]):
        d = p[i] / np.linalg.norm(p[i]) - z[i] / np.linalg.norm(z[i])
        total += float(d @ d)
    return total / p.shape[0]


def test_byol_loss_matches_formula():
    p, z = torch.randn(7, 5), torch.randn(7, 5)
    assert byol_loss(p, z).item() == pytest.approx(reference_byol(p, z), rel=1e-5)


def test_byol_loss_equals_lightly_negative_cosine_similarity_values_and_gradients():
    loss_mod = lightly_module("loss")
    p = torch.randn(8, 6, requires_grad=True)
    p_l = p.detach().clone().requires_grad_(True)
    z = torch.randn(8, 6)
    ours = byol_loss(p, z)
    theirs = loss_mod.NegativeCosineSimilarity()(p_l, z)
    ours.backward()
    theirs.backward()
    # 2 - 2 cos = 2 + 2 * (-cos): the same function up to the affine map
    torch.testing.assert_close(ours, 2 + 2 * theirs)
    torch.testing.assert_close(p.grad, 2 * p_l.grad)


def test_byol_step_sums_both_directions_and_gradients_skip_the_target():
    torch.manual_seed(0)
    method = tiny_method("byol")
    method.setup(total_steps=10, steps_per_epoch=5)
    method.train()
    batch = views_batch(method, batch=6)
    out = method.training_step(batch)
    out.loss.backward()
    with torch.no_grad():
        v1, v2 = batch["views"]
        p1, p2 = (method.predictor(method.projector(method.backbone(v))) for v in (v1, v2))
        z1, z2 = (method.target_projector(method.target_backbone(v)) for v in (v1, v2))
    expected = reference_byol(p1, z2) + reference_byol(p2, z1)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert all(p.grad is None for p in method.target_backbone.parameters())
    assert all(p.grad is not None for p in method.predictor.parameters())


def test_target_follows_the_cosine_ema():
    torch.manual_seed(0)
    method = tiny_method("byol", momentum_tau=0.9, momentum_tau_end=1.0)
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    before = [t.clone() for t in method.target_backbone.parameters()]
    method.on_step_end(0, 10)                        # step 0: tau = 0.9
    for t0, t, o in zip(before, method.target_backbone.parameters(), method.backbone.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o)
    snapshot = [t.clone() for t in method.target_backbone.parameters()]
    method.on_step_end(10, 10)                       # end of the schedule: tau = 1, frozen
    for s, t in zip(snapshot, method.target_backbone.parameters()):
        torch.testing.assert_close(s, t)


def test_bad_momentum_is_a_config_error():
    with pytest.raises(ConfigError, match="momentum_tau"):
        tiny_method("byol", momentum_tau=1.2)


def test_byol_step_is_one_graph():
    method = tiny_method("byol")
    method.setup(total_steps=10, steps_per_epoch=5)
    assert_one_graph(method, views_batch(method))
