"""LARS and the learning-rate schedule of every LARS preset against the code its source runs.

Each source's update is written out below, per parameter, as that source computes it; the LARS
built from a preset's ``optim:`` section (vissl_lite.engine.lars) must give the same weights and
momentum buffers after two steps. lightly's ``LARS`` and schedules (the test oracle) are compared
in their own conventions.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from vissl_lite.config import load_config
from vissl_lite.engine import LARS, build_optimizer, param_groups, scaled_lr
from vissl_lite.engine.schedules import ParamScheduler
from vissl_lite.schedules import cosine_schedule

REPO = Path(__file__).resolve().parents[1]

#: every LARS preset, and the source whose optimizer it follows (its ``optim:`` comment says so)
LARS_PRESETS = {
    "barlow_twins/imagenet_resnet50": "barlow_twins",   # facebookresearch/barlowtwins main.py
    "vicreg/imagenet_resnet50": "barlow_twins",         # facebookresearch/vicreg: the same LARS
    "tregs/imagenet_resnet50": "barlow_twins",          # the VICReg ImageNet recipe
    "byol/imagenet_resnet50": "barlow_twins",           # BYOL optimizers.py: the same update
    "simclr/imagenet_resnet50": "barlow_twins",         # SimCLR lars_optimizer.py (constant lr)
    "essl/imagenet_resnet50": "barlow_twins",           # the SimCLR ImageNet recipe
    "vicreg/cifar10_resnet18": "solo_learn",            # solo-learn LARS, clip_lr, eta 0.02
    "mocov3/cifar10_resnet18": "solo_learn",
    "tregs/cifar10_resnet18": "solo_learn",
    "swav/imagenet_resnet50": "swav_larc",              # apex LARC(0.001, clip=False)
    "mmcr/imagenet_resnet50": "barlow_twins",           # ThomasYerxa/mmcr misc.py: Barlow's LARS
    "directclr/imagenet_resnet50": "barlow_twins",      # facebookresearch/directclr utils.py: same
    "frossl/cifar10_resnet18": "solo_learn",            # OFSkean/FroSSL: solo-learn's LARS
    "frossl/imagenet_resnet50": "solo_learn",
}


def _optim_cfg(preset: str):
    return load_config(REPO / "configs" / f"{preset}.yaml", ["data.root=/unused"])


class _Net(nn.Module):
    """Conv (no bias), BatchNorm, Linear with bias: weights, norm parameters and a bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)


def _init(net: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        net.fc.weight.zero_()[0, 0] = 1e-3      # a tiny weight: trust ratio far below others


def _grads(net: nn.Module, seed: int):
    """Gradients whose scale differs per tensor, so that the clipped trust ratio binds for some
    parameters and not for others; the conv's gradient is 0 at step 1 (the 'norm is 0' branch)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, p) in enumerate(net.named_parameters()):
        out[name] = torch.randn(p.shape, generator=g) * 10.0 ** (i % 3 - 2)
    if seed == 1:
        out["conv.weight"] = torch.zeros_like(out["conv.weight"])
    return out


# -- the sources' updates, per parameter ------------------------------------------------------

def barlow_twins_step(p, g, mu, lr, wd, eta, momentum, excluded):
    """facebookresearch/barlowtwins main.py LARS.step (VICReg's is the same), one parameter:
    excluded (ndim 1) parameters skip both the decay and the adaptation."""
    dp = g if excluded else g + wd * p
    if not excluded:
        param_norm, update_norm = torch.norm(p), torch.norm(dp)
        q = eta * param_norm / update_norm if param_norm > 0 and update_norm > 0 else 1.0
        dp = dp * q
    mu.mul_(momentum).add_(dp)
    p.add_(mu, alpha=-lr)


def solo_learn_step(p, g, state, lr, wd, eta, momentum, excluded, clip):
    """solo-learn solo/utils/lars.py LARS.step with exclude_bias_n_norm, one parameter."""
    d_p = g
    if not excluded:
        p_norm, g_norm = torch.norm(p), torch.norm(g)
        if p_norm != 0 and g_norm != 0:
            lars_lr = p_norm / (g_norm + p_norm * wd + 1e-8) * eta
            if clip:
                lars_lr = min(lars_lr / lr, 1)
            d_p = d_p.add(p, alpha=wd) * lars_lr
    if "buf" not in state:
        state["buf"] = d_p.clone()
    else:
        state["buf"].mul_(momentum).add_(d_p)
    p.add_(state["buf"], alpha=-lr)


def swav_larc_step(p, g, state, lr, wd, eta, momentum):
    """apex LARC(trust_coefficient=eta, clip=False) around torch SGD(momentum, weight_decay) as
    SwAV's main_swav.py builds it: every parameter adapted and decayed."""
    g = g.clone()
    param_norm, grad_norm = torch.norm(p), torch.norm(g)
    if param_norm != 0 and grad_norm != 0:
        adaptive_lr = eta * param_norm / (grad_norm + param_norm * wd + 1e-8)
        g += wd * p
        g *= adaptive_lr
    if "buf" not in state:
        state["buf"] = g.clone()
    else:
        state["buf"].mul_(momentum).add_(g)
    p.add_(state["buf"], alpha=-lr)


#: each source's trust coefficient and clip, as its code sets them (not read from the preset)
SOURCE_ETA_CLIP = {"barlow_twins": (0.001, False),   # LARS(eta=0.001), BYOL eta 1e-3, SimCLR
                   "solo_learn": (0.02, True),       # kwargs: eta 0.02, clip_lr True
                   "swav_larc": (0.001, False)}      # LARC(trust_coefficient=0.001, clip=False)

#: the source's learning rate of biases and BN parameters over that of the weights
BIAS_LR_RATIO = {"barlow_twins/imagenet_resnet50": 0.0048 / 0.2}   # learning_rate_biases


def _reference_step(source, params, grads, states, lr, bias_lr, cfg):
    """One step of ``source`` over ``params``; ``bias_lr`` is the rate of the ndim-1 parameters
    (every source here excludes exactly those from decay and adaptation, SwAV none)."""
    o, (eta, clip) = cfg.optim, SOURCE_ETA_CLIP[source]
    for name, p in params.items():
        excluded = p.ndim == 1
        rate = bias_lr if excluded else lr
        if source == "barlow_twins":
            states.setdefault(name, torch.zeros_like(p))
            barlow_twins_step(p, grads[name], states[name], rate, o.weight_decay, eta,
                              o.momentum, excluded)
        elif source == "solo_learn":
            solo_learn_step(p, grads[name], states.setdefault(name, {}), rate, o.weight_decay,
                            eta, o.momentum, excluded, clip=clip)
        else:
            swav_larc_step(p, grads[name], states.setdefault(name, {}), rate, o.weight_decay,
                           eta, o.momentum)


@pytest.mark.parametrize("preset", sorted(LARS_PRESETS))
def test_lars_of_each_preset_equals_its_source_over_two_steps(preset):
    source, cfg = LARS_PRESETS[preset], _optim_cfg(preset)
    assert cfg.optim.name == "lars"
    net = _Net()
    _init(net)
    ref = {n: p.detach().clone() for n, p in net.named_parameters()}
    lr = scaled_lr(cfg.optim, cfg.train.batch_size)
    opt = build_optimizer(cfg.optim, net, lr)
    sched = ParamScheduler(opt, 100, 10, lr, min_lr=cfg.optim.min_lr,
                           warmup_start_lr=cfg.optim.warmup_start_lr,
                           weight_decay=cfg.optim.weight_decay)
    names = {id(p): n for n, p in net.named_parameters()}
    states: dict = {}
    for step, seed in ((40, 1), (41, 2)):
        rate = sched.step(step)["lr"]
        grads = _grads(net, seed)
        for n, p in net.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        _reference_step(source, ref, grads, states, rate, rate * BIAS_LR_RATIO.get(preset, 1.0),
                        cfg)
    excluded = {names[id(p)] for g in opt.param_groups if g["lars_exclude"] for p in g["params"]}
    assert excluded == (set() if source == "swav_larc" else {"bn.weight", "bn.bias", "fc.bias"})
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), ref[n], rtol=1e-5, atol=1e-7, msg=n)


def test_solo_learn_clip_binds_for_some_parameters_and_not_others():
    """The clip is exercised by the test above: at the CIFAR presets' values and its first step,
    eta ||w|| / (||g|| + wd ||w||) lies above the lr (capped) for some weights, below for others."""
    cfg = _optim_cfg("vicreg/cifar10_resnet18")
    o, net = cfg.optim, _Net()
    _init(net)
    lr = scaled_lr(o, cfg.train.batch_size)
    rate = ParamScheduler(torch.optim.SGD(net.parameters(), lr=0.0), 100, 10, lr).lr_at(40)
    grads, ratios = _grads(net, 2), []
    for n, p in net.named_parameters():
        if p.ndim > 1:
            w, g = p.detach().norm(), grads[n].norm()
            ratios.append(float(o.lars_eta * w / (g + o.weight_decay * w)))
    assert min(ratios) < rate < max(ratios), (ratios, rate)


@pytest.mark.parametrize("clip", [False, True])
def test_solo_learn_lars_with_and_without_its_clip(clip):
    net = _Net()
    _init(net)
    groups = param_groups(net, 1e-4)
    opt = LARS(groups, lr=0.3, weight_decay=1e-4, momentum=0.9, eta=0.02,
               denominator="sum_of_norms", clip=clip)
    ref = {n: p.detach().clone() for n, p in net.named_parameters()}
    states: dict = {}
    for seed in (1, 2, 3):
        grads = _grads(net, seed)
        for n, p in net.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        for n, p in ref.items():
            solo_learn_step(p, grads[n], states.setdefault(n, {}), 0.3, 1e-4, 0.02, 0.9,
                            excluded=p.ndim == 1, clip=clip)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), ref[n], rtol=1e-5, atol=1e-7, msg=n)


def test_default_trust_coefficient_is_the_sources_0_001():
    cfg = load_config(None, ["method.name=simclr", "optim.name=lars"], require=())
    assert cfg.optim.lars_eta == 0.001 and not cfg.optim.lars_clip
    assert cfg.optim.lars_denominator == "norm_of_sum"


# -- lightly (the oracle) --------------------------------------------------------------------

oracle = pytest.importorskip  # resolved per test, so the others run without lightly


@pytest.mark.parametrize("preset", sorted(LARS_PRESETS))
def test_lars_equals_lightly_in_its_convention_with_each_presets_values(preset):
    """lightly's LARS is ``sum_of_norms`` without a clip, and skips the adaptation of groups whose
    weight decay is 0 (our excluded group): at each preset's lr, weight decay, momentum and trust
    coefficient ours in that convention gives the same weights after three steps."""
    LightlyLARS = oracle("lightly.utils.lars").LARS
    o = _optim_cfg(preset).optim
    nets = [_Net(), _Net()]
    for net in nets:
        _init(net)
    ours = LARS(param_groups(nets[0], o.weight_decay, o.exclude_bias_and_norm), lr=o.lr,
                weight_decay=o.weight_decay, momentum=o.momentum, eta=o.lars_eta,
                denominator="sum_of_norms", clip=False)
    theirs = LightlyLARS([{k: v for k, v in g.items() if k in ("params", "weight_decay")}
                          for g in param_groups(nets[1], o.weight_decay, o.exclude_bias_and_norm)],
                         lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                         trust_coefficient=o.lars_eta)
    for seed in (1, 2, 3):
        grads = _grads(nets[0], seed)
        for net in nets:
            for n, p in net.named_parameters():
                p.grad = grads[n].clone()
        ours.step()
        theirs.step()
    for (n, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("preset", sorted(LARS_PRESETS))
def test_lr_schedule_of_each_lars_preset_equals_lightlys(preset):
    """lightly's ``CosineWarmupScheduler`` (a LambdaLR over ``cosine_warmup_schedule``) with the
    preset's values. Where they part: lightly's warm-up reaches the base rate one step earlier
    (``(step + 1) / W``) and its cosine runs to ``max_steps - 1``; ours is the sources' (Barlow
    Twins, VICReg, DINO: ``step / W``, cosine over ``T - W``). So lightly at step s - 1 equals ours
    at step s in the warm-up, and lightly with ``max_steps = T + 1`` equals ours afterwards."""
    scheduler = oracle("lightly.utils.scheduler")
    cfg = _optim_cfg(preset)
    o, steps_per_epoch = cfg.optim, 3
    total, warmup = cfg.train.epochs * steps_per_epoch, round(o.warmup_epochs * steps_per_epoch)
    lr = scaled_lr(o, cfg.train.batch_size)
    net = nn.Linear(2, 2)
    ours = ParamScheduler(torch.optim.SGD(net.parameters(), lr=0.0), total, warmup, lr,
                          min_lr=o.min_lr, warmup_start_lr=o.warmup_start_lr)
    theirs_opt = torch.optim.SGD(net.parameters(), lr=lr)
    theirs = scheduler.CosineWarmupScheduler(
        theirs_opt, warmup_epochs=warmup, max_epochs=total + 1, start_value=1.0,
        end_value=o.min_lr / lr, warmup_start_value=o.warmup_start_lr / lr)
    lightly_lrs = []
    for _ in range(total + 1):
        lightly_lrs.append(theirs_opt.param_groups[0]["lr"])
        theirs_opt.step()                       # no gradients: nothing moves
        theirs.step()
    for s in range(1, total + 1):
        expected = lightly_lrs[s - 1] if s <= warmup else lightly_lrs[s]
        assert ours.lr_at(s) == pytest.approx(expected, rel=1e-9, abs=1e-12), s
    for s in (0, 7, total // 2, total):
        assert scheduler.cosine_schedule(s, total + 1, lr, o.min_lr) == pytest.approx(
            cosine_schedule(s, total, lr, o.min_lr), rel=1e-9, abs=1e-12)
