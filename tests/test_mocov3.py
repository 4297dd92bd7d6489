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


def official_build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True) -> nn.Sequential:
    """facebookresearch/moco-v3 moco/builder.py ``MoCo._build_mlp``, written out."""
    mlp = []
    for layer in range(num_layers):
        dim1 = input_dim if layer == 0 else mlp_dim
        dim2 = output_dim if layer == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if layer < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_heads_equal_the_official_build_mlp(family):
    """MoCo_ResNet: projector _build_mlp(2, ...), predictor _build_mlp(2, ..., last_bn=False);
    MoCo_ViT: projector _build_mlp(3, ...), predictor _build_mlp(2, ...). No Linear has a bias,
    the ResNet predictor's last one included: same parameters, same outputs."""
    vit = family == "vit"
    torch.manual_seed(0)
    method = tiny_method("mocov3", proj_layers=3 if vit else 2, pred_last_bn=vit).train()
    c = method.cfg
    official = {
        "projector": official_build_mlp(c.proj_layers, method.backbone.num_features,
                                        c.proj_hidden_dim, c.proj_output_dim),
        "predictor": official_build_mlp(2, c.proj_output_dim, c.pred_hidden_dim,
                                        c.proj_output_dim, last_bn=vit)}
    x = {"projector": torch.randn(6, method.backbone.num_features),
         "predictor": torch.randn(6, c.proj_output_dim)}
    for name, theirs in official.items():
        ours = getattr(method, name)
        assert ours.state_dict().keys() == theirs.state_dict().keys(), name
        theirs.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(x[name]), theirs.train()(x[name]))


def test_sync_batchnorm_is_converted_only_on_several_cuda_ranks():
    """main_moco.py converts to SyncBatchNorm whenever it runs distributed; one process keeps
    BatchNorm (and torch's SyncBatchNorm is GPU-only, so CPU ranks warn and keep it too)."""
    from vissl_lite.engine.components import sync_batchnorm
    from vissl_lite.engine.runtime import Runtime

    def kinds(enabled, device, world):
        converted = sync_batchnorm(tiny_method("mocov3"), Runtime(torch.device(device), 0, world),
                                   enabled)
        return {type(m).__name__ for m in converted.modules() if "BatchNorm" in type(m).__name__}

    assert kinds(True, "cuda", 2) == {"SyncBatchNorm"}     # conversion needs no GPU to run
    assert kinds(False, "cuda", 2) == {"BatchNorm1d", "BatchNorm2d"}
    assert kinds(True, "cuda", 1) == {"BatchNorm1d", "BatchNorm2d"}
    assert kinds(True, "cpu", 2) == {"BatchNorm1d", "BatchNorm2d"}


@pytest.mark.parametrize("preset", ["mocov3/cifar10_resnet18", "mocov3/imagenet_vit_small"])
def test_presets_sync_batchnorm_and_the_vit_adamw_decays_every_parameter(preset, tmp_path):
    """Both presets turn SyncBatchNorm on; the ViT recipe's AdamW(model.parameters(),
    weight_decay=0.1) decays every trainable parameter, biases, norms and the CLS token too."""
    from vissl_lite.backbones.vit import ViT
    from vissl_lite.config import load_config
    from vissl_lite.engine.optim import build_optimizer
    cfg = load_config(preset, [f"data.root={tmp_path}"])
    assert cfg.train.sync_bn
    if "vit" not in preset:
        return
    vit = ViT(patch_size=4, embed_dim=48, depth=1, num_heads=3, img_size=32, pos_embed="sincos",
              global_pool="token", name="vit_test")
    method = MoCoV3(vit, {**dict(cfg.method), **MoCoV3.tiny_config})
    optimizer = build_optimizer(cfg.optim, method, lr=1e-3)
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    grouped = [p for g in optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in grouped} == trainable and len(grouped) == len(trainable)
    assert all(g["weight_decay"] == cfg.optim.weight_decay == 0.1 for g in optimizer.param_groups
               if g["params"])
    assert any(p is vit.cls_token for p in grouped)
