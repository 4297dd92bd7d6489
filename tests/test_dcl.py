"""DCL / DCLW: the loss against eq. 6 written out and lightly's DCLLoss / DCLWLoss (values and
gradients), gathered over 2 ranks == 1, the presets' heads, one graph per step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_same_value_and_grads
from _je import (assert_one_graph, assert_ranks_match_full, head_layout, lightly_module,
                 loss_on_ranks, one_training_step)
from vissl_lite.config import load_config
from vissl_lite.methods import build_method
from vissl_lite.methods.dcl import dcl_loss


def reference_dcl(z_a, z_b, t, sigma=None) -> float:
    """Eq. 6, anchor by anchor in Python floats, both directions averaged."""
    a = F.normalize(z_a.double(), dim=1).tolist()
    b = F.normalize(z_b.double(), dim=1).tolist()
    n = len(a)
    dot = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
    if sigma is None:
        w = [1.0] * n
    else:
        e = [math.exp(dot(a[i], b[i]) / sigma) for i in range(n)]
        w = [2 - n * x / sum(e) for x in e]
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            negs = [dot(x[i], x[j]) / t for j in range(n) if j != i] + \
                   [dot(x[i], y[j]) / t for j in range(n) if j != i]
            total += -w[i] * dot(x[i], y[i]) / t + math.log(sum(math.exp(v) for v in negs))
    return total / (2 * n)


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_matches_equation_6(sigma):
    z_a, z_b = torch.randn(7, 5), torch.randn(7, 5)
    assert dcl_loss(z_a, z_b, 0.2, sigma).item() == pytest.approx(
        reference_dcl(z_a, z_b, 0.2, sigma), rel=1e-5)


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_equals_lightly_values_and_gradients(sigma):
    loss_mod = lightly_module("loss")
    theirs_fn = (loss_mod.DCLLoss(temperature=0.1) if sigma is None
                 else loss_mod.DCLWLoss(temperature=0.1, sigma=sigma))
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    assert_same_value_and_grads(lambda a, b: dcl_loss(a, b, 0.1, sigma), theirs_fn, [z_a, z_b])


def _dclw(z_a, z_b):
    return dcl_loss(z_a, z_b, 0.1, 0.5)


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_gathered_over_two_ranks_equals_full_batch(sigma, tmp_path):
    """Negatives from every rank and (DCLW) weights over the global batch: the rank losses
    average to the full loss, the rank gradients averaged as DDP does equal the full gradient."""
    z_a, z_b = torch.randn(12, 6), torch.randn(12, 6)
    fn = dcl_loss if sigma is None else _dclw
    parts = loss_on_ranks(fn, [z_a, z_b], (), tmp_path)
    assert_ranks_match_full(parts, fn, [z_a, z_b], (), same_loss_on_every_rank=False)


@pytest.mark.parametrize("name", ["dcl", "dclw"])
def test_cifar_preset_projector_is_lightlys_simclr_head(name, tmp_path):
    heads = lightly_module("models.modules.heads")
    method = build_method(load_config(f"{name}/cifar10_resnet18", [f"data.root={tmp_path}"]))
    assert head_layout(method.projector) == head_layout(heads.SimCLRProjectionHead(512, 512, 128))
    assert (method.cfg.temperature, getattr(method.cfg, "sigma", 0.5)) == (0.1, 0.5)


@pytest.mark.parametrize("name", ["dcl", "dclw"])
def test_step_is_the_loss_of_the_projections_and_one_graph(name):
    method, batch, out = one_training_step(name)
    with torch.no_grad():
        z_a, z_b = (method.projector(method.backbone(v)) for v in batch["views"])
    sigma = 0.5 if name == "dclw" else None
    assert out.loss.item() == pytest.approx(reference_dcl(z_a, z_b, 0.1, sigma), rel=1e-5)
    assert_one_graph(method, batch)
