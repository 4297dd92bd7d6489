"""EMP-SSL: the loss against the official main.py written out (TotalCodingRate per patch set,
Similarity_Loss), its two terms equal to lightly's tcr_loss and invariance_loss (values and
gradients; lightly's EMPSSLLoss adds the coding rate with the opposite sign), gathered over 2
ranks == 1, the patches as a fixed number of batched views of the preset's crop, one graph."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _je import (assert_one_graph, assert_ranks_match_full, lightly_module, loss_on_ranks,
                 one_training_step)
from vissl_lite.augment import build_gpu_views
from vissl_lite.config import load_config
from vissl_lite.methods import build_method
from vissl_lite.methods.empssl import coding_rate, empssl_loss, patch_similarity


def official(z: torch.Tensor, eps: float, patch_sim: float) -> float:
    """main.py: patch_sim * Similarity_Loss + cal_TCR(TotalCodingRate(eps)), z (P, N, d)."""
    z = z.double()
    p_count, n, d = z.shape
    tcr = 0.0
    for v in range(p_count):
        w = z[v].T                                         # (d, N) as compute_discrimn_loss's W
        tcr += -torch.logdet(torch.eye(d, dtype=z.dtype) + d / (n * eps) * w @ w.T) / 2
    avg = z.mean(dim=0)
    sim = sum(F.cosine_similarity(z[v], avg, dim=1).mean() for v in range(p_count)) / p_count
    return float(patch_sim * -sim + tcr / p_count)


def _patches(p_count=4, n=10, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(p_count, n, d, generator=g), dim=-1)


@pytest.mark.parametrize("n, d", [(10, 6), (5, 12)])
def test_loss_is_the_official_main_py(n, d):
    z = _patches(n=n, d=d)
    assert empssl_loss(z, 0.2, 200.0)[0].item() == pytest.approx(official(z, 0.2, 200.0), rel=1e-5)


@pytest.mark.parametrize("n, d", [(10, 6), (5, 12)])
def test_terms_equal_lightlys_tcr_and_invariance_losses(n, d):
    """lightly's EMPSSLLoss = tcr_loss + inv_coef * invariance_loss: the coding rate with a plus
    sign, minimised; the official loss (and ours) subtracts it."""
    emp = lightly_module("loss.emp_ssl_loss")
    z = _patches(n=n, d=d, seed=1)
    for ours_fn, theirs_fn in ((lambda x: coding_rate(x, 0.2), lambda x: emp.tcr_loss(x, 0.2)),
                               (lambda x: -patch_similarity(x), emp.invariance_loss)):
        a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        ours, theirs = ours_fn(a), theirs_fn(b)
        ours.backward()
        theirs.backward()
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    theirs_total = emp.EMPSSLLoss(tcr_eps=0.2, inv_coef=200.0)(list(z))
    torch.testing.assert_close(empssl_loss(z)[0], theirs_total - 2 * coding_rate(z, 0.2))


def _loss(z):
    return empssl_loss(z.transpose(0, 1), 0.2, 200.0)[0]


def test_gathered_over_two_ranks_equals_full_batch(tmp_path):
    """Coding rate over the global batch, invariance per image (the ranks' mean)."""
    z = _patches(p_count=3, n=12, d=5, seed=2).transpose(0, 1).contiguous()   # (N, P, d): shard N
    parts = loss_on_ranks(_loss, [z], (), tmp_path)
    assert_ranks_match_full(parts, _loss, [z], (), same_loss_on_every_rank=False)


def test_the_presets_patches_are_one_batched_group_of_quarter_crops(tmp_path):
    cfg = load_config("empssl/cifar10_resnet18", [f"data.root={tmp_path}"])
    method = build_method(cfg)
    views_fn = build_gpu_views(method.views, cfg.augment, 32)
    assert len(views_fn.views) == 20 and len(views_fn.groups) == 1
    assert views_fn.views[0].scale == (0.25, 0.25) and views_fn.views[0].size == 32
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    patches = views_fn(images, torch.Generator().manual_seed(0))
    assert [tuple(p.shape) for p in patches] == [(3, 3, 32, 32)] * 20
    assert not torch.equal(patches[0], patches[1])


def test_step_is_the_loss_of_the_patch_embeddings_and_one_graph():
    method, batch, out = one_training_step("empssl")
    n = batch["views"][0].shape[0]
    with torch.no_grad():
        z = F.normalize(method.projector(method.backbone(torch.cat(batch["views"]))), dim=-1)
    assert out.loss.item() == pytest.approx(official(z.reshape(4, n, -1), 0.2, 200.0), rel=1e-5)
    assert -1 <= out.metrics["patch_sim"].item() <= 1 and out.metrics["tcr"].item() > 0
    assert_one_graph(method, batch)
