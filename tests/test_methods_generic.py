"""The Method contract, checked for every registered method (parametrised over the registry).

A method file dropped into vissl_lite/methods/ is picked up here with no edit: it must build from
a dict, a DictConfig or its Config dataclass alike, refuse an unknown key with a ConfigError, take
one finite step whose gradient reaches the backbone, survive a state_dict round trip, and ship a
CIFAR-10 preset that validates.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from _helpers import registered_methods, tiny_backbone, tiny_method, views_batch
from vissl_lite.config import load_config
from vissl_lite.errors import ConfigError
from vissl_lite.presets import list_presets
from vissl_lite.registry import METHODS

NAMES = registered_methods()


def test_the_registry_holds_the_shipped_methods():
    assert {"simclr", "barlow_twins", "dino", "mae", "ijepa"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_from_dict_dictconfig_or_dataclass_is_the_same(name):
    cls = METHODS.get(name)
    as_dict = cls.Config(**cls.tiny_config)
    backbone = tiny_backbone(cls)
    built = [cls(copy.deepcopy(backbone), cfg).cfg for cfg in
             (cls.tiny_config, OmegaConf.create(cls.tiny_config), as_dict)]
    assert built[0] == built[1] == built[2] == as_dict
    assert dataclasses.is_dataclass(built[0]) and built[0].name == name


@pytest.mark.parametrize("name", NAMES)
def test_unknown_key_is_a_config_error(name):
    cls = METHODS.get(name)
    with pytest.raises(ConfigError, match="no_such_option"):
        cls(tiny_backbone(cls), {**cls.tiny_config, "no_such_option": 1})


@pytest.mark.parametrize("name", NAMES)
def test_one_step_gives_a_finite_loss_whose_gradient_reaches_the_backbone(name):
    torch.manual_seed(0)
    method = tiny_method(name)
    method.setup(total_steps=10, steps_per_epoch=5)
    method.train()
    out = method.training_step(views_batch(method))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    for key, value in out.metrics.items():
        assert isinstance(value, float) or (torch.is_tensor(value) and value.numel() == 1), key
    out.loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    method.on_before_optimizer_step(0)
    method.on_step_end(0, 10)
    assert method.backbone_for_eval()(views_batch(method)["views"][0]).ndim == 2


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_the_same_loss(name):
    torch.manual_seed(0)
    a = tiny_method(name)
    torch.manual_seed(1)
    b = tiny_method(name)
    b.load_state_dict(a.state_dict())
    b.load_extra_state(a.extra_state_for_checkpoint())
    batch = views_batch(a)
    for m in (a, b):
        m.setup(total_steps=10, steps_per_epoch=5)
        m.eval()
    torch.manual_seed(2)
    loss_a = a.training_step(batch).loss
    torch.manual_seed(2)
    loss_b = b.training_step(batch).loss
    torch.testing.assert_close(loss_a, loss_b)


@pytest.mark.parametrize("name", NAMES)
def test_every_method_ships_a_cifar10_preset_that_validates(name, tmp_path):
    presets = [p for p in list_presets(name) if p.split("/")[1].startswith("cifar10")]
    assert presets, f"configs/{name}/cifar10_<backbone>.yaml is missing"
    for preset in presets:
        cfg = load_config(preset, [f"data.root={tmp_path}"])
        assert cfg.method.name == name
