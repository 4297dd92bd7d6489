"""DINOv2-style method (vissl_lite/methods/dinov2.py): Sinkhorn-Knopp, iBOT and KoLeo losses
against formulas and lightly, masked global crops with a fixed count, register tokens, layer-wise
lr decay through the optimizer's groups, one compiled graph, presets, real CIFAR-10 steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import load_cifar_images, real_cifar_losses, tiny_backbone, tiny_method, views_batch
from vissl_lite.backbones.vit import ViT
from vissl_lite.augment.masks import random_patch_mask
from vissl_lite.config import load_config
from vissl_lite.engine.optim import param_groups
from vissl_lite.engine.schedules import ParamScheduler
from vissl_lite.errors import ConfigError
from vissl_lite.methods import build_method
from vissl_lite.methods.dino import dino_loss
from vissl_lite.methods.dinov2 import (DINOv2, cross_entropy_pairs, ibot_patch_loss, koleo_loss,
                                       sinkhorn_knopp)

lightly_loss = pytest.importorskip  # resolved per test, so the other tests run without lightly


def test_sinkhorn_knopp_matches_the_written_out_iterations_and_balances_prototypes():
    logits = torch.randn(12, 5)
    q = torch.exp(logits / 0.1).t()
    q = q / q.sum()
    for _ in range(3):
        q = q / q.sum(1, keepdim=True) / 5
        q = q / q.sum(0, keepdim=True) / 12
    want = (q * 12).t()
    got = sinkhorn_knopp(logits, 0.1, 3)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(1), torch.ones(12))              # a distribution per sample
    many = sinkhorn_knopp(torch.randn(400, 8) * 0.3, 0.05, 50).sum(0)
    torch.testing.assert_close(many, torch.full((8,), 50.0), rtol=0.02, atol=0.0)


def test_pair_loss_with_centering_equals_dino_loss():
    student = [torch.randn(6, 10) for _ in range(4)]
    teacher = [torch.randn(6, 10) for _ in range(2)]
    center = torch.randn(1, 10)
    probs = [F.softmax((t - center) / 0.04, -1) for t in teacher]
    torch.testing.assert_close(cross_entropy_pairs(student, probs, 0.1),
                               dino_loss(student, teacher, center, 0.04, 0.1))


def test_ibot_patch_loss_equals_lightly():
    lightly = pytest.importorskip("lightly.loss", reason="lightly not installed (test-only oracle)")
    b, m, k = 4, 5, 16
    teacher, student = torch.randn(b * m, k), torch.randn(b * m, k, requires_grad=True)
    center = torch.randn(1, k)
    mask = torch.zeros(b, 3, 4, dtype=torch.bool)
    for i in range(b):                                   # m masked patches per image
        mask[i].view(-1)[torch.randperm(12)[:m]] = True
    oracle = lightly.IBOTPatchLoss(output_dim=k, teacher_temp=0.04, student_temp=0.1)
    oracle.center.center.copy_(center)
    want = oracle(teacher, student, mask)
    (want_grad,) = torch.autograd.grad(want, student)
    probs = F.softmax((teacher - center) / 0.04, -1)
    ours = ibot_patch_loss(student.view(b, m, k), probs.view(b, m, k), 0.1)
    torch.testing.assert_close(ours, want)
    torch.testing.assert_close(torch.autograd.grad(ours, student)[0], want_grad)
    by_hand = -(probs * F.log_softmax(student / 0.1, -1)).sum(-1).mean()
    torch.testing.assert_close(ours, by_hand)


def test_koleo_equals_lightly_and_its_formula():
    lightly = pytest.importorskip("lightly.loss", reason="lightly not installed (test-only oracle)")
    x = torch.randn(16, 8, requires_grad=True)
    want = lightly.KoLeoLoss()(x)
    ours = koleo_loss(x)
    torch.testing.assert_close(ours, want)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(want, x)[0])
    u = F.normalize(x.detach(), dim=-1)
    d = torch.cdist(u, u) + torch.eye(16) * 10
    torch.testing.assert_close(ours.detach(), -torch.log(d.min(1).values).mean(), atol=1e-5, rtol=1e-5)


def test_student_sees_a_fixed_number_of_mask_tokens_and_the_teacher_the_full_crop():
    method = tiny_method("dinov2", mask_ratio=0.25)
    assert method.num_masked == 16                        # 64 patches of a 32 px crop, patch 4
    vit = method.backbone
    x = torch.randn(3, 3, 32, 32)
    mask = torch.zeros(3, 64, dtype=torch.bool)
    mask[:, :16] = True
    token = torch.randn(1, vit.embed_dim)
    changed = x.clone()
    changed[:, :, :4, :] += 3.0                          # the first grid row: patches 0-7, masked
    a = vit.forward_all_tokens(x, mask, token)
    torch.testing.assert_close(a, vit.forward_all_tokens(changed, mask, token))
    assert not torch.allclose(vit.forward_all_tokens(x), vit.forward_all_tokens(changed))


def test_register_tokens_are_prefix_tokens_without_position_embedding():
    vit = ViT(patch_size=4, embed_dim=48, depth=1, num_heads=3, img_size=32, pos_embed="sincos",
              global_pool="token", reg_tokens=4, name="vit_test")
    assert vit.num_prefix_tokens == 5 and vit.pos_embed.shape[1] == 5 + 64
    assert torch.equal(vit.pos_embed[:, 1:5], torch.zeros(1, 4, 48))
    prefix = vit._prefix_tokens(2)
    torch.testing.assert_close(prefix[:, 1:], vit.reg_token.expand(2, -1, -1))
    x = torch.randn(2, 3, 32, 32)
    assert vit.forward_all_tokens(x).shape == (2, 69, 48) and vit.forward_tokens(x).shape == (2, 64, 48)
    assert vit(x).shape == (2, 48)


def test_layer_wise_lr_decay_reaches_the_optimizer_groups():
    backbone = ViT(patch_size=4, embed_dim=48, depth=2, num_heads=3, img_size=32,
                   global_pool="token", dynamic_img_size=True, name="vit_test")
    method = DINOv2(backbone, {**DINOv2.tiny_config, "layer_decay": 0.5,
                               "patch_embed_lr_mult": 0.2})
    assert method.param_lr_scale("backbone.patch_embed.proj.weight") == pytest.approx(0.025)
    assert method.param_lr_scale("backbone.cls_token") == 0.125
    assert method.param_lr_scale("backbone.blocks.0.attn.qkv.weight") == 0.25
    assert method.param_lr_scale("backbone.blocks.1.attn.qkv.weight") == 0.5
    assert method.param_lr_scale("backbone.norm.weight") == 1.0
    assert method.param_lr_scale("head.mlp.0.weight") == 1.0
    groups = param_groups(method, 0.04)
    opt = torch.optim.AdamW(groups, lr=1.0)
    ParamScheduler(opt, total_steps=10, warmup_steps=0, lr=1e-3).step(0)
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert by_param[id(backbone.patch_embed.proj.weight)] == pytest.approx(2.5e-5)
    assert by_param[id(backbone.blocks[1].attn.qkv.weight)] == pytest.approx(5e-4)
    assert by_param[id(method.head.mlp[0].weight)] == pytest.approx(1e-3)
    # a model without the hook keeps the two classic groups
    assert [g["lr_scale"] for g in param_groups(torch.nn.Linear(2, 2), 0.1)] == [1.0, 1.0]


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "centering"])
def test_training_step_is_one_graph(centering):
    method = tiny_method("dinov2", centering=centering)
    method.setup(total_steps=10, steps_per_epoch=5)
    explain = torch._dynamo.explain(method.training_step)(views_batch(method))
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons


def test_teacher_gets_no_gradient_and_both_last_layers_freeze_in_the_first_epoch():
    method = tiny_method("dinov2", freeze_last_layer=1, koleo_loss_weight=0.1)
    method.setup(total_steps=10, steps_per_epoch=5)
    method.train()
    out = method.training_step(views_batch(method))
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher_backbone.parameters())
    assert method.mask_token.grad is not None and method.mask_token.grad.abs().sum() > 0
    assert method.patch_head.last_layer.weight_v.grad is not None
    method.on_before_optimizer_step(4)
    assert method.head.last_layer.weight_v.grad is None
    assert method.patch_head.last_layer.weight_v.grad is None
    assert not method.teacher_backbone.training


def test_shared_patch_head_is_updated_once_per_step():
    method = tiny_method("dinov2", separate_patch_head=False, momentum_teacher=0.5)
    assert method.patch_head is method.head and method.teacher_patch_head is method.teacher_head
    method.setup(total_steps=10, steps_per_epoch=5)
    method.training_step(views_batch(method)).loss.backward()
    with torch.no_grad():
        for p in method.head.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.teacher_head.parameters()]
    student = [p.clone() for p in method.head.parameters()]
    method.on_step_end(0, 10)                               # momentum 0.5 at step 0
    for new, old, s in zip(method.teacher_head.parameters(), before, student):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * s)


def test_bad_config_raises():
    with pytest.raises(ConfigError, match="centering"):
        tiny_method("dinov2", centering="none")
    with pytest.raises(ConfigError, match="mask_ratio"):
        tiny_method("dinov2", mask_ratio=0.0)


@pytest.mark.parametrize("preset", ["dinov2/cifar10_vit_tiny", "dinov2/imagenet_vit_small"])
def test_presets_validate_and_build(preset, tmp_path):
    cfg = load_config(preset, [f"data.root={tmp_path}"])
    assert cfg.method.centering == "sinkhorn_knopp" and cfg.method.koleo_loss_weight == 0.1
    if "cifar10" in preset:
        method = build_method(cfg)
        assert isinstance(method, DINOv2) and method.backbone.num_prefix_tokens == 1 + cfg.backbone.reg_tokens


def test_steps_on_real_cifar10_lower_the_loss(cifar_root):
    torch.manual_seed(0)
    method = DINOv2(tiny_backbone(DINOv2), {**DINOv2.tiny_config, "num_local_crops": 0,
                                            "freeze_last_layer": 0, "momentum_teacher": 0.9})
    losses = real_cifar_losses(method, load_cifar_images(cifar_root, 64), steps=12, batch=32,
                               lr=1e-3, num_views=2)
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses


def official_koleo(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """facebookresearch/dinov2 dinov2/loss/koleo_loss.py, KoLeoLoss.forward, written out."""
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    dots = torch.mm(x, x.t())
    n = x.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)
    nearest = torch.max(dots, dim=1).indices
    return -torch.log(torch.nn.PairwiseDistance(2, eps=eps)(x, x[nearest]) + eps).mean()


def test_koleo_is_summed_over_the_two_global_crops_as_ssl_meta_arch():
    """ssl_meta_arch.py: koleo_loss_weight * sum(koleo(p) for p in student_cls_tokens.chunk(2)),
    on the student's (masked) global CLS tokens, not the mean over the two crops."""
    torch.manual_seed(0)
    method = tiny_method("dinov2", num_local_crops=0, dino_loss_weight=0.0, ibot_loss_weight=0.0,
                         koleo_loss_weight=0.3).train()
    method.setup(total_steps=10, steps_per_epoch=5)
    batch = views_batch(method, batch=6)
    torch.manual_seed(7)
    out = method.training_step(batch)
    torch.manual_seed(7)                                  # the same masks (drawn first)
    glob = torch.cat(batch["views"][:2])
    masks = random_patch_mask(glob.shape[0], method.backbone.num_patches, method.cfg.mask_ratio)
    with torch.no_grad():
        cls = method.backbone.forward_all_tokens(glob, masks.mask, method.mask_token)[:, 0]
    want = 0.3 * sum(official_koleo(p) for p in cls.chunk(2))
    torch.testing.assert_close(out.loss.detach(), want)
    torch.testing.assert_close(out.metrics["koleo_loss"], want / 0.3)


def _preset_head_config(tmp_path, out_dim: int = 4096) -> dict:
    """The ImageNet preset's head settings (prototypes cut to ``out_dim`` to keep the test light)."""
    m = load_config("dinov2/imagenet_vit_small", [f"data.root={tmp_path}"]).method
    return {"hidden_dim": m.hidden_dim, "bottleneck_dim": m.bottleneck_dim,
            "head_layers": m.head_layers, "separate_patch_head": m.separate_patch_head,
            "out_dim": out_dim, "patch_out_dim": out_dim, "num_local_crops": 0}


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated:FutureWarning")
def test_heads_train_their_weight_norm_and_equal_lightly_dinov2_head(tmp_path):
    """dino_head.py and lightly's DINOv2ProjectionHead: weight_norm(Linear) with weight_g filled
    with 1 and left trainable (DINO v1's norm_last_layer=True froze it); values and gradients of
    every parameter, weight_g included, equal lightly's head with the same weights."""
    heads = pytest.importorskip("lightly.models.modules.heads", reason="lightly (test-only oracle)")
    torch.manual_seed(0)
    cfg = _preset_head_config(tmp_path)
    method = DINOv2(tiny_backbone(DINOv2), {**DINOv2.tiny_config, **cfg})
    for head in (method.head, method.patch_head):
        assert head.last_layer.weight_g.requires_grad
        torch.testing.assert_close(head.last_layer.weight_g, torch.ones(cfg["out_dim"], 1))
    decayed = {id(p) for g in param_groups(method, 0.04) for p in g["params"]}
    assert id(method.head.last_layer.weight_g) in decayed

    ours = method.head
    dim = method.backbone.embed_dim
    theirs = heads.DINOv2ProjectionHead(dim, cfg["hidden_dim"], cfg["bottleneck_dim"], cfg["out_dim"])
    our_linears = [m for m in ours.mlp if isinstance(m, torch.nn.Linear)]
    their_linears = [m for m in theirs.layers if isinstance(m, torch.nn.Linear)]
    assert len(our_linears) == len(their_linears) == cfg["head_layers"]
    with torch.no_grad():
        for a, b in zip(our_linears, their_linears):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
        theirs.last_layer.weight_v.copy_(ours.last_layer.weight_v)
        for head in (ours, theirs):                       # make g differ from 1 to see it act
            head.last_layer.weight_g.copy_(torch.linspace(0.5, 1.5, cfg["out_dim"])[:, None])
    ours.double(), theirs.double()                         # float64: no rounding to tolerate
    x = torch.randn(5, dim, dtype=torch.float64)
    r = torch.randn(5, cfg["out_dim"], dtype=torch.float64)
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs)
    (y_ours * r).sum().backward()
    (y_theirs * r).sum().backward()
    pairs = [(a.weight, b.weight) for a, b in zip(our_linears, their_linears)]
    pairs += [(a.bias, b.bias) for a, b in zip(our_linears, their_linears)]
    pairs += [(ours.last_layer.weight_g, theirs.last_layer.weight_g),
              (ours.last_layer.weight_v, theirs.last_layer.weight_v)]
    for a, b in pairs:
        assert a.grad is not None and a.grad.abs().sum() > 0
        torch.testing.assert_close(a.grad, b.grad)


def official_teacher_temp(it: int, warmup: float, final: float, warmup_iters: int) -> float:
    """dinov2/train/train.py teacher_temp_schedule: CosineScheduler(base_value=final,
    final_value=final, total_iters=W, warmup_iters=W, start_warmup_value=warmup)[it]."""
    schedule = np.concatenate([np.linspace(warmup, final, warmup_iters),
                               final + 0.5 * (final - final) * (1 + np.cos(np.pi * np.arange(0)))])
    return final if it >= warmup_iters else float(schedule[it])


def test_teacher_temperature_warms_up_per_iteration():
    method = tiny_method("dinov2", warmup_teacher_temp=0.04, teacher_temp=0.07,
                         warmup_teacher_temp_epochs=3).train()
    method.setup(total_steps=40, steps_per_epoch=5)       # a warm-up of 15 iterations
    seen = [float(method.current_teacher_temp)]
    for step in range(20):
        method.on_step_end(step, 40)
        seen.append(float(method.current_teacher_temp))
    want = [official_teacher_temp(it, 0.04, 0.07, 15) for it in range(21)]
    np.testing.assert_allclose(seen, want, rtol=1e-6)
    assert len(set(seen[:6])) == 6                        # it moves within the first epoch
    out = method.training_step(views_batch(method))
    assert float(out.metrics["teacher_temp"]) == pytest.approx(0.07)
