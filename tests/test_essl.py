"""E-SSL add-on: the rotations, lambda = 0 is the base method bitwise, the loss with lambda > 0,
nesting other bases, one graph per step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_addon_is_base, base_and_addon, tiny_method, views_batch
from _je import assert_one_graph
from vissl_lite.errors import ConfigError
from vissl_lite.methods.essl import rotate_batch


def test_rotations_and_labels():
    x = torch.randn(8, 3, 6, 6)
    images, labels = rotate_batch(x, all_rotations=True)
    assert images.shape == (32, 3, 6, 6) and labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8
    torch.testing.assert_close(images[8], x[0].rot90(1, dims=(1, 2)))     # 90 degrees
    torch.testing.assert_close(images[16], x[0].flip(1).flip(2))           # 180 degrees
    quarter, q_labels = rotate_batch(x, all_rotations=False)
    assert quarter.shape == x.shape and q_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    torch.testing.assert_close(quarter[6], x[6].rot90(3, dims=(1, 2)))


def _pair(base: dict, **essl):
    """A base method and an E-SSL wrapper around an identical copy of it."""
    return base_and_addon("essl", base, **essl)


@pytest.mark.parametrize("base", [{"name": "simclr", "proj_hidden_dim": 32, "proj_output_dim": 16},
                                  {"name": "byol", "proj_hidden_dim": 32, "proj_output_dim": 16,
                                   "pred_hidden_dim": 32}])
def test_lambda_zero_is_the_base_method_bitwise(base):
    plain, wrapped = _pair(base, lambda_rot=0.0)
    assert wrapped.views == plain.views                 # no extra view asked for
    batch = views_batch(plain, batch=6)
    assert_addon_is_base(plain, wrapped, batch)


def test_lambda_adds_the_rotation_cross_entropy():
    base = {"name": "simclr", "proj_hidden_dim": 32, "proj_output_dim": 16}
    plain, wrapped = _pair(base, lambda_rot=0.4)
    assert wrapped.views.num_local == plain.views.num_local + 1
    batch = views_batch(wrapped, batch=6)
    out = wrapped.training_step(batch)
    with torch.no_grad():
        base_loss = plain.training_step({**batch, "views": batch["views"][:2]}).loss
        images, labels = rotate_batch(batch["views"][2])
        ce = F.cross_entropy(wrapped.rotation_head(wrapped.backbone(images)), labels)
    torch.testing.assert_close(out.loss, base_loss + 0.4 * ce)
    assert {"rot_loss", "rot_acc", "pos_sim"} <= set(out.metrics)
    out.loss.backward()
    assert all(p.grad is not None for p in wrapped.rotation_head.parameters())


def test_config_errors():
    with pytest.raises(ConfigError, match="add-on"):
        tiny_method("essl", base={"name": "essl"})
    with pytest.raises(ConfigError, match="lambda_rot"):
        tiny_method("essl", lambda_rot=-1.0)
    with pytest.raises(ConfigError, match="no_such"):
        tiny_method("essl", base={"name": "simclr", "no_such": 1})


def test_essl_step_is_one_graph():
    method = tiny_method("essl")
    method.setup(total_steps=10, steps_per_epoch=5)
    assert_one_graph(method, views_batch(method, batch=4))
