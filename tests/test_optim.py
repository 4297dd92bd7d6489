"""LARS, parameter groups, schedules and EMA against values worked out by hand."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from vissl_lite.config import ConfigError, default_config, load_config
from vissl_lite.engine import (LARS, ParamScheduler, build_optimizer, cosine_schedule, ema_update,
                               linear_schedule, param_groups, scaled_lr, warmup_cosine_schedule)


def test_warmup_cosine_hand_checked_points():
    # total 100 steps, 10 warmup from 0 to 1.0, then cosine down to 0.1
    f = lambda s: warmup_cosine_schedule(s, 100, 10, base=1.0, end=0.1, warmup_start=0.0)
    assert f(0) == pytest.approx(0.0)
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.55)            # cosine midpoint: 0.1 + 0.9 * (1 + cos(pi/2)) / 2
    assert f(100) == pytest.approx(0.1)
    assert f(250) == pytest.approx(0.1)            # constant after the end
    assert f(32.5) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)


def test_warmup_start_and_no_warmup():
    assert warmup_cosine_schedule(2, 10, 4, base=1.0, end=0.0, warmup_start=0.2) == pytest.approx(0.6)
    assert warmup_cosine_schedule(0, 10, 0, base=1.0, end=0.0) == pytest.approx(1.0)
    assert warmup_cosine_schedule(5, 10, 0, base=1.0, end=0.0) == pytest.approx(0.5)


def test_momentum_and_linear_schedules():
    # BYOL/DINO teacher momentum 0.996 -> 1 over the run
    assert cosine_schedule(0, 1000, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(500, 1000, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_schedule(1000, 1000, 0.996, 1.0) == pytest.approx(1.0)
    assert linear_schedule(3, 4, 0.04, 0.08) == pytest.approx(0.07)
    assert linear_schedule(9, 4, 0.04, 0.08) == pytest.approx(0.08)


def test_param_scheduler_sets_lr_and_weight_decay_per_group():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    opt = torch.optim.SGD(param_groups(model, 0.05), lr=0.0)
    opt.param_groups[0]["lr_scale"] = 2.0
    sched = ParamScheduler(opt, total_steps=20, warmup_steps=0, lr=0.4, min_lr=0.0,
                           weight_decay=0.04, weight_decay_end=0.4)
    values = sched.step(10)                          # half way: lr 0.2, wd 0.22
    assert values["lr"] == pytest.approx(0.2) and values["wd"] == pytest.approx(0.22)
    decayed, excluded = opt.param_groups
    assert decayed["lr"] == pytest.approx(0.4) and decayed["weight_decay"] == pytest.approx(0.22)
    assert excluded["lr"] == pytest.approx(0.2) and excluded["weight_decay"] == 0.0


def test_lars_two_steps_by_hand():
    w = nn.Parameter(torch.tensor([3.0, 4.0]).view(1, 2))      # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([dict(params=[w]), dict(params=[b], lars_exclude=True, weight_decay=0.0)],
               lr=1.0, weight_decay=0.1, momentum=0.9, eta=0.02)
    for _ in range(2):
        w.grad = torch.tensor([[0.3, 0.4]])
        b.grad = torch.tensor([0.5])
        opt.step()
    # step 1: g + wd w = [0.6, 0.8] (norm 1); trust 0.02 * 5 / 1 = 0.1; w = [2.94, 3.92]
    # step 2: g + wd w = [0.594, 0.792] (norm 0.99); trust 0.02 * 4.9 / 0.99;
    #         mu = 0.9 * [0.06, 0.08] + trust * [0.594, 0.792] = [0.1128, 0.1504]
    assert torch.allclose(w.detach(), torch.tensor([[2.8272, 3.7696]]), atol=1e-6)
    # excluded: plain SGD with momentum, no weight decay and no trust ratio: 1 - 0.5 - 0.95
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 - (0.9 * 0.5 + 0.5)]), atol=1e-6)


def test_lars_zero_weight_uses_trust_one():
    w = nn.Parameter(torch.zeros(3))
    opt = LARS([w], lr=0.5, weight_decay=0.0, momentum=0.0, eta=0.02)
    w.grad = torch.tensor([1.0, -2.0, 0.0])
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([-0.5, 1.0, 0.0]))


class _WithPosEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)

    def no_weight_decay(self):
        return {"pos_embed"}


@pytest.mark.parametrize("method", ["dino", "dinov2", "selfpatch", "mocov3"])
def test_dino_family_decays_pos_embed_and_cls_token(method):
    """DINO / SelfPatch (utils.get_params_groups) and DINOv2 (param_groups.py) decay everything but
    biases and 1-d parameters, pos_embed and cls_token included; other methods keep timm's
    no_weight_decay() list (pos_embed, cls_token) out of the decay."""
    from vissl_lite.backbones.vit import ViT
    from vissl_lite.registry import METHODS

    cls = METHODS.get(method)
    vit = ViT(patch_size=4, embed_dim=48, depth=1, num_heads=3, img_size=32, pos_embed="learn",
              class_token=method != "selfpatch", global_pool="avg" if method == "selfpatch" else "token",
              dynamic_img_size=True, name="vit_test")
    model = cls(vit, dict(cls.tiny_config))
    params = dict(model.named_parameters())
    groups = param_groups(model, 0.04)
    decayed = {n for n, p in params.items() if any(p is q for g in groups if g["weight_decay"] > 0
                                                   for q in g["params"])}
    listed = {n for n, p in params.items() if p.requires_grad and n.split(".")[-1] in
              ("pos_embed", "cls_token")}
    assert listed, "the ViT has a trainable pos_embed or cls_token"
    assert listed & decayed == (set() if method == "mocov3" else listed)
    assert not any(n.endswith(".bias") or params[n].ndim <= 1 for n in decayed)


def test_param_groups_exclude_bias_norm_and_timm_list():
    model = nn.Sequential(_WithPosEmbed(), nn.Linear(8, 2, bias=False))
    decayed, excluded = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decayed["params"]} == {"0.proj.weight", "1.weight"}
    assert {names[id(p)] for p in excluded["params"]} == {"0.pos_embed", "0.proj.bias",
                                                          "0.norm.weight", "0.norm.bias"}
    assert decayed["weight_decay"] == 0.1 and excluded["weight_decay"] == 0.0
    assert excluded["lars_exclude"] and not decayed["lars_exclude"]
    (everything,) = param_groups(model, 0.1, exclude_bias_and_norm=False)
    assert len(everything["params"]) == 6


def test_build_optimizer_and_scaled_lr():
    model = nn.Linear(4, 4)
    for name, cls in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lars", LARS)):
        cfg = default_config(_any_method(), [f"optim.name={name}"]).optim
        assert isinstance(build_optimizer(cfg, model, 0.1), cls)
    with pytest.raises(ConfigError, match="optim.name='adam'"):
        default_config(_any_method(), ["optim.name=adam"])
    cfg = default_config(_any_method(), ["optim.lr=0.3", "optim.scale_lr=true",
                                         "optim.lr_batch_base=256"]).optim
    assert scaled_lr(cfg, 1024) == pytest.approx(1.2)
    cfg = default_config(_any_method(), ["optim.lr=0.3"]).optim
    assert scaled_lr(cfg, 1024) == pytest.approx(0.3)


def _any_method() -> str:
    import _toy  # noqa: F401  (registers toy_contrastive)
    return "toy_contrastive"


def test_ema_update_formula():
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0), online.bias.fill_(2.0)
        target.weight.fill_(0.0), target.bias.fill_(-2.0)
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, torch.full((1, 2), 0.1))
    assert torch.allclose(target.bias, torch.tensor([-1.8 + 0.2]))


def _barlow_twins_official_lr(step: int, max_steps: int, warmup_steps: int, batch_size: int):
    """facebookresearch/barlowtwins main.py adjust_learning_rate: (weights' lr, biases' lr)."""
    base_lr = batch_size / 256
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    return lr * 0.2, lr * 0.0048          # learning_rate_weights, learning_rate_biases


def test_barlow_twins_preset_trains_biases_and_bn_at_the_official_rate_at_every_step():
    """The ImageNet preset's groups follow adjust_learning_rate at every step, weights at 0.2 and
    biases and BN parameters at 0.0048 (x batch/256, warmed up and annealed alike)."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "barlow_twins" /
                      "imagenet_resnet50.yaml", ["data.root=/unused"])
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4), nn.Linear(4, 2))
    lr = scaled_lr(cfg.optim, cfg.train.batch_size)
    opt = build_optimizer(cfg.optim, model, lr)
    per_epoch = 3
    total, warmup = cfg.train.epochs * per_epoch, round(cfg.optim.warmup_epochs * per_epoch)
    sched = ParamScheduler(opt, total, warmup, lr, min_lr=cfg.optim.min_lr,
                           weight_decay=cfg.optim.weight_decay)
    weights, biases = opt.param_groups
    assert not weights["lars_exclude"] and biases["lars_exclude"]
    for step in range(total):
        sched.step(step)
        w_lr, b_lr = _barlow_twins_official_lr(step, total, warmup, cfg.train.batch_size)
        assert weights["lr"] == pytest.approx(w_lr, rel=1e-9, abs=1e-15), step
        assert biases["lr"] == pytest.approx(b_lr, rel=1e-9, abs=1e-15), step


def test_the_excluded_group_moves_by_the_scaled_rate_after_one_step():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    cfg = default_config(_any_method(), ["optim.name=lars", "optim.weight_decay=0.1",
                                         "optim.exclude_lr_scale=0.024"]).optim
    opt = build_optimizer(cfg, model, 1.5)
    ParamScheduler(opt, 10, 0, 1.5, weight_decay=0.1).step(0)
    before = [p.detach().clone() for p in model.parameters()]
    grads = [torch.full_like(p, 0.5) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    opt.step()
    for (name, p), b, g in zip(model.named_parameters(), before, grads):
        if p.ndim == 1:     # bias and BN: no decay, no trust ratio, lr 1.5 x 0.024
            torch.testing.assert_close(p.detach(), b - 1.5 * 0.024 * g, msg=name)
    weight = model[0].weight
    assert not torch.allclose(weight.detach(), before[0] - 1.5 * 0.024 * grads[0])


def test_an_lr_scale_of_no_excluded_group_is_a_config_error():
    cfg = default_config(_any_method(), ["optim.exclude_lr_scale=0.024",
                                         "optim.exclude_bias_and_norm=false"]).optim
    with pytest.raises(ConfigError, match="optim.exclude_bias_and_norm=true"):
        build_optimizer(cfg, nn.Linear(2, 2), 0.1)
