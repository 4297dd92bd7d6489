"""W-MSE: whitening gives identity covariance, the loss against its formula and lightly's
WMSELoss, gathered over 2 ranks == 1, config checks, one graph per step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import tiny_method, views_batch
from _je import assert_one_graph, assert_ranks_match_full, lightly_module, loss_on_ranks
from vissl_lite.errors import ConfigError
from vissl_lite.methods.wmse import whiten, wmse_loss


def reference_wmse(views, w_size, perms) -> float:
    """Algorithm 1 of the paper in numpy: whiten every sub-batch by the inverse Cholesky factor
    of its covariance, then average the normalised MSE over view pairs and iterations."""
    zs = [v.double().numpy() for v in views]
    total, count = 0.0, 0
    for perm in perms.numpy():
        white = []
        for z in zs:
            out = np.empty_like(z)
            for idx in perm.reshape(-1, w_size):
                x = z[idx] - z[idx].mean(0)
                chol = np.linalg.cholesky(x.T @ x / (len(idx) - 1))
                out[idx] = x @ np.linalg.inv(chol).T
            white.append(out / np.linalg.norm(out, axis=1, keepdims=True))
        for i in range(len(zs)):
            for j in range(i + 1, len(zs)):
                total += float(((white[i] - white[j]) ** 2).sum(1).mean())
                count += 1
    return total / count


def test_whitened_sub_batches_have_identity_covariance():
    x = torch.randn(3, 64, 5) @ torch.randn(5, 5) + 2.0         # correlated, off-centre
    w = whiten(x.double())
    for g in range(3):
        torch.testing.assert_close(torch.cov(w[g].T), torch.eye(5, dtype=torch.float64))
        torch.testing.assert_close(w[g].mean(0), torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("num_views,w_iter", [(2, 1), (4, 2)])
def test_wmse_matches_formula(num_views, w_iter):
    views = [torch.randn(16, 3) for _ in range(num_views)]
    perms = torch.stack([torch.randperm(16) for _ in range(w_iter)])
    ours = wmse_loss(views, 8, w_iter, perms=perms)
    assert ours.item() == pytest.approx(reference_wmse(views, 8, perms), rel=1e-4)


@pytest.mark.parametrize("num_views", [2, 4])
def test_wmse_equals_lightly_values_and_gradients(num_views):
    loss_mod = lightly_module("loss")
    views = [torch.randn(32, 4) + 0.3 * torch.randn(32, 1) for _ in range(num_views)]
    ours_in = [v.clone().requires_grad_(True) for v in views]
    theirs_in = torch.cat(views).requires_grad_(True)
    torch.manual_seed(5)                      # the same torch.randperm(32) draws in both
    ours = wmse_loss(ours_in, 16, 2)
    torch.manual_seed(5)
    theirs = loss_mod.WMSELoss(embedding_dim=4, w_size=16, w_iter=2, num_samples=num_views)(theirs_in)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([v.grad for v in ours_in]), theirs_in.grad,
                               rtol=1e-4, atol=1e-6)


def _wmse_fixed_cut(a, b, perms):
    return wmse_loss([a, b], 8, 2, perms=perms)


def test_wmse_gathered_over_two_ranks_equals_full_batch(tmp_path):
    """Every rank whitens the gathered batch with the same cut: each rank's loss is the global
    loss and rank gradients averaged as DDP does equal the full gradient."""
    a, b = torch.randn(16, 3), torch.randn(16, 3) + torch.randn(16, 1)
    perms = torch.stack([torch.randperm(16) for _ in range(2)])
    parts = loss_on_ranks(_wmse_fixed_cut, [a, b], (perms,), tmp_path)
    assert_ranks_match_full(parts, _wmse_fixed_cut, [a, b], (perms,), same_loss_on_every_rank=True)


def test_config_errors():
    with pytest.raises(ConfigError, match="w_size"):
        tiny_method("wmse", w_size=4)                 # == proj_output_dim
    with pytest.raises(ConfigError, match="num_views"):
        tiny_method("wmse", num_views=3)
    method = tiny_method("wmse")
    assert method.min_batch_size == 8
    with pytest.raises(ConfigError, match="multiple"):
        method.training_step(views_batch(method, batch=12))


def test_four_views_step_and_one_graph():
    method = tiny_method("wmse", num_views=4)
    assert method.views.num_global == 4
    out = method.training_step(views_batch(method, batch=16))
    assert torch.isfinite(out.loss)
    assert_one_graph(method, views_batch(method, batch=16))
