"""DINO: loss vs. formula, teacher isolation, EMA and center updates, schedules, last-layer freeze."""
from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from _helpers import TinyNet
from vissl_lite.backbones import build_backbone
from vissl_lite.errors import AugmentError
from vissl_lite.methods.dino import DINO, dino_loss, update_center
from vissl_lite.methods.heads import DINOHead


SMALL = {"out_dim": 32, "hidden_dim": 24, "bottleneck_dim": 8, "num_local_crops": 3,
         "warmup_teacher_temp": 0.04, "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 30,
         "momentum_teacher": 0.996, "freeze_last_layer": 1}


def _method(**over) -> DINO:
    method = DINO(TinyNet(), {**SMALL, **over})
    method.setup(total_steps=1000, steps_per_epoch=10)
    return method


def _crops(b=4, n_local=3):
    return [torch.randn(b, 3, 16, 16) for _ in range(2)] + [torch.randn(b, 3, 8, 8) for _ in range(n_local)]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_dino_loss(student, teacher, center, tt, ts):
    """H(P_t(x_k), P_s(x_v)) averaged over the pairs k in globals, v in all crops, v != k."""
    terms = []
    for k, t in enumerate(teacher):
        p_t = _softmax((t.double().numpy() - center.double().numpy()) / tt)
        for v, s in enumerate(student):
            if v == k:
                continue
            log_p_s = np.log(_softmax(s.double().numpy() / ts))
            terms.append(np.mean([-(p_t[i] * log_p_s[i]).sum() for i in range(len(p_t))]))
    return float(np.mean(terms))


def test_dino_loss_matches_formula():
    student = [torch.randn(5, 7) for _ in range(4)]
    teacher = [torch.randn(5, 7) for _ in range(2)]
    center = torch.randn(1, 7) * 0.1
    loss = dino_loss(student, teacher, center, teacher_temp=0.04, student_temp=0.1)
    assert loss.item() == pytest.approx(reference_dino_loss(student, teacher, center, 0.04, 0.1), rel=1e-5)


def test_head_layout_and_weight_normalised_last_layer():
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, num_layers=3, norm_last_layer=True)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 24), (24, 24), (24, 8)]
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == 2
    assert not head.last_layer.weight_g.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(32))
    x = torch.randn(3, 16)
    bottleneck = nn.functional.normalize(head.mlp(x), dim=-1)
    v = head.last_layer.weight_v
    torch.testing.assert_close(head(x), bottleneck @ (v / v.norm(dim=1, keepdim=True)).T)
    assert DINOHead(16, 32, norm_last_layer=False).last_layer.weight_g.requires_grad


def test_teacher_gets_no_gradient_and_sees_global_crops_only():
    method = _method()
    seen = []
    method.teacher_backbone.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    out = method.training_step({"views": _crops(b=4, n_local=3)})
    out.loss.backward()
    assert seen == [(8, 3, 16, 16)]  # both global crops in one pass, no 8x8 local crop
    teacher = [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    assert all(p.grad is not None for p in method.backbone.parameters())
    assert method.backbone_for_eval() is method.teacher_backbone


def test_teacher_has_no_stochastic_depth_but_keeps_the_students_mode():
    """The official teachers are built without drop-path (a student-only argument); a teacher
    copied from a ViT student with drop_path_rate=0.5 must still be deterministic in train mode."""
    vit = build_backbone("vit_tiny_patch8", img_size=16, drop_path_rate=0.5)
    method = DINO(vit, {"name": "dino", **DINO.tiny_config}).train()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a, b = method.teacher_backbone(x), method.teacher_backbone(x)
        student = [method.backbone(x) for _ in range(2)]
    assert method.teacher_backbone.training
    torch.testing.assert_close(a, b)
    assert not torch.allclose(*student)                       # the student still drops paths
    torch.testing.assert_close(a, method.backbone.eval()(x))  # same weights, nothing dropped


def test_one_view_is_one_clear_error():
    with pytest.raises(AugmentError, match="DINO needs 2 global crops"):
        _method().training_step({"views": _crops(n_local=0)[:1]})


def test_ema_update_matches_formula():
    method = _method()
    with torch.no_grad():  # make student and teacher differ
        for p in [*method.backbone.parameters(), *method.head.parameters()]:
            p.add_(torch.randn_like(p))
    student = [p.detach().clone() for p in [*method.backbone.parameters(), *method.head.parameters()]]
    teacher = [p.detach().clone() for p in [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]]
    step, total = 250, 1000
    m = 1 - (1 - 0.996) * (math.cos(math.pi * step / total) + 1) / 2
    method.on_step_end(step, total)
    new = [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]
    for t_new, t_old, s in zip(new, teacher, student):
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * s)
    assert int(method.steps_done) == step + 1


def test_center_update_and_teacher_temperature_schedule():
    method = _method(center_momentum=0.8)
    method.center.copy_(torch.randn(1, 32))
    old_center = method.center.clone()
    crops = _crops()
    with torch.no_grad():
        teacher_out = method.teacher_head(method.teacher_backbone(torch.cat(crops[:2])))
    out = method.training_step({"views": crops})
    torch.testing.assert_close(method.center, 0.8 * old_center + 0.2 * teacher_out.mean(0, keepdim=True))
    assert out.metrics["teacher_temp"] == pytest.approx(0.04)

    warmup = np.linspace(0.04, 0.07, 30)  # the reference code's per-epoch schedule
    for epoch in (0, 7, 29, 30, 100):
        method.set_steps_done(epoch * method.steps_per_epoch + 3)
        expected = warmup[epoch] if epoch < 30 else 0.07
        assert method.training_step({"views": crops}).metrics["teacher_temp"] == pytest.approx(expected)


def test_last_layer_frozen_during_first_epoch_only():
    method = _method(freeze_last_layer=1)
    for step, frozen in ((0, True), (9, True), (10, False)):
        method.zero_grad(set_to_none=True)
        method.training_step({"views": _crops()}).loss.backward()
        method.on_before_optimizer_step(step)
        assert (method.head.last_layer.weight_v.grad is None) == frozen
        assert method.head.mlp[0].weight.grad is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _center_worker(rank, world, port, outputs, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        center = torch.zeros(1, outputs.shape[2])
        update_center(center, outputs[rank], momentum=0.9)
        torch.save(center, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_center_is_the_global_batch_mean_on_every_rank(tmp_path):
    world = 2
    outputs = torch.randn(world, 6, 5) + torch.arange(world).view(world, 1, 1) * 3.0
    mp.spawn(_center_worker, args=(world, _free_port(), outputs, str(tmp_path)), nprocs=world, join=True)
    expected = 0.1 * outputs.reshape(-1, 5).mean(0, keepdim=True)
    for r in range(world):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{r}.pt"), expected)
