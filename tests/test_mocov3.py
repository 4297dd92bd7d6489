"""MoCo v3: the loss against Algorithm 1 written out, gathered over 2 ranks == 1, the reference
heads, the frozen patch projection, one graph per step.

lightly 1.6's NTXentLoss is not an oracle here: without a memory bank it is SimCLR's loss (the
other queries are negatives too), with one it contrasts against the bank only; MoCo v3's
InfoNCE contrasts each query with the keys of the batch, so the test writes that out instead.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _helpers import tiny_backbone, tiny_method, views_batch
from _je import assert_one_graph, assert_ranks_match_full, loss_on_ranks
from vissl_lite.errors import ConfigError
from vissl_lite.methods.mocov3 import MoCoV3, mocov3_loss


def reference_ctr(q: torch.Tensor, k: torch.Tensor, t: float) -> float:
    """ctr(q, k) of Algorithm 1, one query at a time."""
    q = q.double() / q.double().norm(dim=1, keepdim=True)
    k = k.double() / k.double().norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(q.shape[0]):
        sims = [float(q[i] @ k[j]) / t for j in range(k.shape[0])]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return 2 * t * total / q.shape[0]


@pytest.mark.parametrize("t", [0.2, 1.0])
def test_mocov3_loss_matches_algorithm_1(t):
    q, k = torch.randn(7, 5), torch.randn(7, 5)
    assert mocov3_loss(q, k, t).item() == pytest.approx(reference_ctr(q, k, t), rel=1e-5)


def test_keys_get_no_gradient():
    q, k = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    mocov3_loss(q, k, 0.2).backward()
    assert k.grad is None and q.grad is not None


def _symmetric(q1, q2, k1, k2, t):
    return mocov3_loss(q1, k2, t) + mocov3_loss(q2, k1, t)


def test_mocov3_gathered_over_two_ranks_equals_full_batch(tmp_path):
    inputs = [torch.randn(8, 4) for _ in range(4)]
    parts = loss_on_ranks(_symmetric, inputs, (0.2,), tmp_path)
    assert_ranks_match_full(parts, _symmetric, inputs, (0.2,), same_loss_on_every_rank=False)


def test_heads_follow_the_reference_code():
    method = tiny_method("mocov3")
    kinds = [type(m).__name__ for m in method.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert method.projector[-1].weight is None              # BN without affine parameters
    assert all(m.bias is None for m in method.projector if isinstance(m, nn.Linear))
    assert [type(m).__name__ for m in method.predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    vit = tiny_method("mocov3", proj_layers=3, pred_last_bn=True)
    assert sum(isinstance(m, nn.Linear) for m in vit.projector) == 3
    assert isinstance(vit.predictor[-1], nn.BatchNorm1d)


def test_step_matches_formula_and_is_one_graph():
    torch.manual_seed(0)
    method = tiny_method("mocov3", temperature=0.2)
    method.train()
    batch = views_batch(method, batch=6)
    out = method.training_step(batch)
    with torch.no_grad():
        x1, x2 = batch["views"]
        q1, q2 = (method.predictor(method.projector(method.backbone(x))) for x in (x1, x2))
        k1, k2 = (method.momentum_projector(method.momentum_backbone(x)) for x in (x1, x2))
    expected = reference_ctr(q1, k2, 0.2) + reference_ctr(q2, k1, 0.2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert_one_graph(method, batch)


def test_frozen_random_patch_projection_for_vits():
    from vissl_lite.backbones.vit import ViT
    vit = ViT(patch_size=4, embed_dim=48, depth=1, num_heads=3, img_size=32, name="vit_test")
    method = MoCoV3(vit, {**MoCoV3.tiny_config, "freeze_patch_embed": True})
    method.training_step(views_batch(method, batch=4)).loss.backward()
    assert all(p.grad is None for p in method.backbone.patch_embed.parameters())
    assert method.backbone.blocks[0].attn.qkv.weight.grad is not None
    with pytest.raises(ConfigError, match="freeze_patch_embed"):
        MoCoV3(tiny_backbone(MoCoV3), {**MoCoV3.tiny_config, "freeze_patch_embed": True})
