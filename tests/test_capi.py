"""CAPI (vissl_lite/methods/capi.py): positionwise Sinkhorn-Knopp against lightly and the official
formula, the loss, predictor and heads equal to lightly 1.6 in values and gradients, the whole step
rebuilt from lightly's pieces, 2 gloo ranks equal to 1, the momentum schedule, presets, and 30
real CIFAR-10 steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import (crop_flip_normalise, load_cifar_images, loss_on_ranks, tiny_backbone,
                      tiny_method, views_batch)
from vissl_lite.config import load_config
from vissl_lite.engine.optim import param_groups
from vissl_lite.errors import ConfigError
from vissl_lite.methods import build_method
from vissl_lite.methods.capi import CAPI, positionwise_sinkhorn
from vissl_lite.methods.dinov2 import ibot_patch_loss


def lightly_module(name):
    return pytest.importorskip(name, reason="lightly not installed (test-only oracle)")


def official_sinkhorn(m: torch.Tensor, n_iterations: int, eps: float = 1e-8) -> torch.Tensor:
    """facebookresearch/capi model.py ``sinkhorn_knopp`` (with ``stable_exp``) on one process,
    applied as OnlineClustering does: to the logits transposed to (positions, batch, K)."""
    m = m.transpose(0, 1).clone()
    m += 50 - m.max(dim=-2, keepdim=True).values
    m = m.exp()
    for _ in range(n_iterations):
        m /= torch.sum(m, dim=-2, keepdim=True) + eps
        m /= torch.sum(m, dim=-1, keepdim=True) + eps
    return m.transpose(0, 1)


def test_positionwise_sinkhorn_equals_lightly_and_the_official_formula():
    lightly = lightly_module("lightly.loss.capi_loss")
    scores = torch.randn(6, 5, 7, dtype=torch.float64) * 20       # large: the shift matters
    ours = positionwise_sinkhorn(scores, 3).double()
    torch.testing.assert_close(ours, lightly.sinkhorn_knopp(scores, 3), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours, official_sinkhorn(scores, 3), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.sum(-1), torch.ones(6, 5, dtype=torch.float64))
    balanced = positionwise_sinkhorn(torch.randn(64, 3, 4), 100).sum(0)   # per position
    torch.testing.assert_close(balanced, torch.full((3, 4), 16.0), rtol=1e-3, atol=0)


def test_capi_and_clustering_losses_equal_lightly_in_values_and_gradients():
    lightly = lightly_module("lightly.loss")
    b, n, p, k = 4, 9, 3, 11
    teacher = torch.randn(b, n, k, requires_grad=True)
    student = torch.randn(b, p, k, requires_grad=True)
    index = torch.rand(b, n).argsort(1)[:, :p]
    oracle = lightly.CAPILoss(teacher_temperature=0.06, student_temperature=0.12)
    want = oracle(teacher, student, index)
    targets = torch.gather(positionwise_sinkhorn(teacher.detach() / 0.06), 1,
                           index[..., None].expand(-1, -1, k))
    ours = ibot_patch_loss(student, targets, 0.12)
    torch.testing.assert_close(ours, want)
    torch.testing.assert_close(torch.autograd.grad(ours, student)[0],
                               torch.autograd.grad(want, student)[0])
    # the clustering loss: lightly's loss with the teacher logits on both sides
    want = oracle(teacher, teacher)
    ours = ibot_patch_loss(teacher, positionwise_sinkhorn(teacher.detach() / 0.06), 0.12)
    torch.testing.assert_close(ours, want)
    torch.testing.assert_close(torch.autograd.grad(ours, teacher)[0],
                               torch.autograd.grad(want, teacher)[0])


def _lightly_copies(method):
    """lightly's predictor and heads holding the method's weights."""
    modules = lightly_module("lightly.models.modules")
    c = method.cfg
    dim = method.backbone.embed_dim
    predictor = modules.CAPIPredictorTIMM(dim, method.backbone.grid_size, c.predictor_depth,
                                          c.predictor_heads)
    missing, unexpected = predictor.load_state_dict(method.predictor.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("rope.") for k in missing), missing
    head = modules.CAPIProjectionHead(dim, c.num_clusters, weight_norm=True)
    clustering = modules.CAPIProjectionHead(dim, c.num_clusters, bias=True)
    with torch.no_grad():
        head.layer.weight_v.copy_(method.head.last_layer.weight_v)
        head.layer.weight_g.copy_(method.head.last_layer.weight_g)
        clustering.layer.load_state_dict(method.clustering.layer.state_dict())
    return predictor, head, clustering


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
def test_predictor_equals_lightly_capi_predictor_in_values_and_gradients():
    torch.manual_seed(0)
    method = tiny_method("capi", predictor_depth=2)
    predictor, _, _ = _lightly_copies(method)
    ours = method.predictor.double()
    predictor.double()
    ctx = torch.randn(3, 10, 48, dtype=torch.float64, requires_grad=True)
    ctx_idx, q_idx = torch.rand(3, 64).argsort(1)[:, :10], torch.rand(3, 64).argsort(1)[:, :5]
    r = torch.randn(3, 5, 48, dtype=torch.float64)
    a, b = ours(ctx, ctx_idx, q_idx), predictor(ctx, ctx_idx, q_idx)
    torch.testing.assert_close(a, b)
    (a * r).sum().backward()
    grad_ctx = ctx.grad.clone()
    ctx.grad = None
    (b * r).sum().backward()
    torch.testing.assert_close(grad_ctx, ctx.grad)
    theirs = dict(predictor.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, theirs[name].grad, msg=name)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
def test_the_step_equals_one_rebuilt_from_lightly_pieces():
    lightly = lightly_module("lightly.loss")
    torch.manual_seed(0)
    method = tiny_method("capi").train()
    method.setup(total_steps=10, steps_per_epoch=5)
    predictor, head, clustering = _lightly_copies(method)
    images = views_batch(method)["views"][0]
    torch.manual_seed(3)
    out = method.training_step({"views": [images]})
    torch.manual_seed(3)                                   # the same masks
    keep_idx, predict_idx = method.sample_masks(images.shape[0], images.device)
    with torch.no_grad():
        h = method.teacher_backbone.forward_tokens(images)
        z = method.backbone.forward_tokens(images, keep_idx)
        teacher_logits = clustering(h)
        capi = lightly.CAPILoss(0.06, 0.12)(teacher_logits, head(predictor(z, keep_idx, predict_idx)),
                                            predict_idx)
        clust = lightly.CAPILoss(0.06, 0.12)(teacher_logits, teacher_logits)
    torch.testing.assert_close(out.metrics["capi_loss"], capi)
    torch.testing.assert_close(out.metrics["clustering_loss"], clust)
    torch.testing.assert_close(out.loss.detach(), capi + clust)
    assert predict_idx.shape == (8, method.num_predicted) and keep_idx.shape == (8, 22)
    masked = ~torch.zeros(8, 64, dtype=torch.bool).scatter(1, keep_idx, True)
    assert masked.gather(1, predict_idx).all()             # predictions only at masked patches


def test_gradients_reach_each_part_from_its_own_loss_only():
    torch.manual_seed(0)
    method = tiny_method("capi").train()
    method.setup(total_steps=10, steps_per_epoch=5)
    batch = views_batch(method)
    torch.manual_seed(1)
    out = method.training_step(batch)
    grads = torch.autograd.grad(out.loss, list(method.clustering.parameters()))
    torch.manual_seed(1)
    out = method.training_step(batch)
    clust = out.loss - out.metrics["capi_loss"]          # the clustering loss with its graph
    for g, want in zip(grads, torch.autograd.grad(clust, list(method.clustering.parameters()))):
        torch.testing.assert_close(g, want)
    out = method.training_step(batch)
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher_backbone.parameters())
    for part in (method.backbone, method.predictor, method.head):
        assert all(p.grad is not None for p in part.parameters() if p.requires_grad)
    assert method.head.last_layer.weight_g.grad.abs().sum() > 0   # g is trained (official)


def _sinkhorn_ce(teacher, student):
    return ibot_patch_loss(student, positionwise_sinkhorn(teacher.detach() / 0.06), 0.12)


def test_two_ranks_equal_one_rank(tmp_path):
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(8, 5, 6, generator=g) * 3, torch.randn(8, 5, 6, generator=g)
    ranks = loss_on_ranks(_sinkhorn_ce, (teacher, student), (), tmp_path)
    full = student.clone().requires_grad_(True)
    want = _sinkhorn_ce(teacher, full)
    want.backward()
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / 2, want.detach())
    torch.testing.assert_close(torch.cat([r["grads"][1] for r in ranks]) / 2, full.grad)


def official_warmup_then_cosine(it, total, base, final, warmup, start):
    """facebookresearch/capi utils.py ``WarmupThenCosine`` with truncate_cos=1."""
    iters = np.arange(total - warmup)
    schedule = np.concatenate([np.linspace(start, base, warmup),
                               final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))])
    return final if it >= total else float(schedule[it])


def test_momentum_warms_up_from_one_then_follows_a_cosine():
    method = tiny_method("capi", momentum_teacher=0.99, momentum_warmup_epochs=2)
    method.setup(total_steps=40, steps_per_epoch=5)
    got = [method.momentum_at(s, 40) for s in range(40)]
    want = [official_warmup_then_cosine(s, 40, 0.99, 1.0, 10, 1.0) for s in range(40)]
    assert got[0] == 1.0 and min(got) == pytest.approx(0.99)
    # np.linspace reaches the base value at the last warm-up step, ours one step later
    np.testing.assert_allclose(got[10:], want[10:], rtol=1e-9)
    np.testing.assert_allclose(got[:10], np.linspace(1.0, 0.99, 11)[:10], rtol=1e-9)


def test_lr_scales_reach_the_optimizer_groups_and_bad_configs_raise():
    method = tiny_method("capi", clustering_lr_scale=0.5, patch_embed_lr_mult=0.2)
    scale = {id(p): g["lr_scale"] for g in param_groups(method, 0.1) for p in g["params"]}
    assert scale[id(method.clustering.layer.weight)] == 0.5
    assert scale[id(method.backbone.patch_embed.proj.weight)] == 0.2
    assert scale[id(method.predictor.blocks[0].to_query.weight)] == 1.0
    with pytest.raises(ConfigError, match="prediction_subsampling"):
        tiny_method("capi", prediction_subsampling=0.01)
    with pytest.raises(ConfigError, match="mask_ratio"):
        tiny_method("capi", mask_ratio=1.0)


@pytest.mark.parametrize("preset", ["capi/cifar10_vit_tiny", "capi/imagenet_vit_base"])
def test_presets_validate_and_build(preset, tmp_path):
    cfg = load_config(preset, [f"data.root={tmp_path}"])
    assert cfg.method.student_temp == 0.12 and cfg.method.teacher_temp == 0.06
    if "cifar10" in preset:
        method = build_method(cfg)
        assert isinstance(method, CAPI) and method.num_predicted >= 8


def test_thirty_real_cifar10_steps_lower_the_loss_without_collapse(cifar_root):
    """The student's loss falls, and its predictions on held-out images still use many
    clusters (a collapsed student predicts one)."""
    torch.manual_seed(0)
    method = CAPI(tiny_backbone(CAPI), {**CAPI.tiny_config, "num_clusters": 64,
                                        "momentum_teacher": 0.99, "prediction_subsampling": 0.5})
    images = load_cifar_images(cifar_root, 128)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    method.setup(total_steps=30, steps_per_epoch=30)
    method.train()
    losses = []
    for step in range(30):
        x = crop_flip_normalise(images[torch.randint(0, len(images), (32,))], 0.6)
        out = method.training_step({"views": [x]})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.on_step_end(step, 30)
        losses.append(float(out.metrics["capi_loss"]))
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    held_out = crop_flip_normalise(load_cifar_images(cifar_root, 32, "test"), 1.0)
    with torch.no_grad():
        keep_idx, predict_idx = method.sample_masks(32, held_out.device)
        z = method.backbone.forward_tokens(held_out, keep_idx)
        clusters = method.head(method.predictor(z, keep_idx, predict_idx)).argmax(-1)
    assert clusters.unique().numel() >= 8, clusters.unique()
