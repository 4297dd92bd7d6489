"""Preset fidelity: a CIFAR-10 preset that says it follows lightly's CIFAR-10 benchmark builds the
same heads as that benchmark's model (lightly 1.6 heads: layer types in order, and parameter
counts), and our head builders match lightly's head classes at other widths too."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vissl_lite.config import load_config
from vissl_lite.methods import build_method
from vissl_lite.methods.heads import projection_mlp

heads = pytest.importorskip("lightly.models.modules.heads",
                            reason="lightly not installed (test-only oracle)")


def layout(module: nn.Module):
    """(type name, parameter count, bias?) of every leaf layer, in order."""
    leaves = [m for m in module.modules() if not list(m.children())]
    return [(type(m).__name__, sum(p.numel() for p in m.parameters()),
             getattr(m, "bias", None) is not None) for m in leaves]


def preset_method(name: str, tmp_path):
    torch.manual_seed(0)
    return build_method(load_config(f"{name}/cifar10_resnet18", [f"data.root={tmp_path}"]))


def test_simclr_preset_projector_is_lightlys_simclr_head(tmp_path):
    """lightly's benchmark: SimCLRProjectionHead(512, 512, 128) ends in Linear(bias=False) + BN."""
    ours = preset_method("simclr", tmp_path).projector
    assert layout(ours) == layout(heads.SimCLRProjectionHead(512, 512, 128))
    assert isinstance(ours[-1], nn.BatchNorm1d)


def test_byol_preset_heads_are_lightlys_byol_heads(tmp_path):
    """lightly's benchmark: BYOLProjectionHead(512, 1024, 256), BYOLPredictionHead(256, 1024, 256)."""
    method = preset_method("byol", tmp_path)
    assert layout(method.projector) == layout(heads.BYOLProjectionHead(512, 1024, 256))
    assert layout(method.predictor) == layout(heads.BYOLPredictionHead(256, 1024, 256))
    assert layout(method.target_projector) == layout(method.projector)


def test_barlow_twins_preset_projector_is_lightlys_benchmark_head(tmp_path):
    """lightly's benchmark builds a 2-layer ProjectionHead (512-2048 BN ReLU, 2048-2048)."""
    theirs = heads.ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)),
                                   (2048, 2048, None, None)])
    assert layout(preset_method("barlow_twins", tmp_path).projector) == layout(theirs)


def test_swav_preset_heads_are_lightlys_swav_heads(tmp_path):
    """SwaVProjectionHead(512, 512, 128) and SwaVPrototypes(128, 512); our prototypes have no bias
    (as facebookresearch/swav), lightly's Linear has one: 512 parameters fewer."""
    method = preset_method("swav", tmp_path)
    assert layout(method.projector) == layout(heads.SwaVProjectionHead(512, 512, 128))
    theirs = heads.SwaVPrototypes(128, 512)
    assert method.prototypes.weight.shape == theirs.heads[0].weight.shape
    assert sum(p.numel() for p in method.prototypes.parameters()) == \
        sum(p.numel() for p in theirs.parameters()) - 512


@pytest.mark.parametrize("cls,layers", [("BarlowTwinsProjectionHead", 3), ("VICRegProjectionHead", 3),
                                        ("BYOLProjectionHead", 2), ("SwaVProjectionHead", 2)])
def test_projection_mlp_matches_lightly_head_classes(cls, layers):
    theirs = getattr(heads, cls)(24, 40, 16)
    assert layout(projection_mlp(24, 40, 16, layers)) == layout(theirs)


def test_vicreg_preset_expander_matches_lightly_vicreg_head(tmp_path):
    ours = preset_method("vicreg", tmp_path).projector
    assert layout(ours) == layout(heads.VICRegProjectionHead(512, 2048, 2048, 3))


def test_quickstart_head_and_loss_are_lightlys_at_its_own_settings(tmp_path):
    """simclr/quickstart: lightly's SimCLRProjectionHead at the width-16 backbone's 128 features,
    less its last BatchNorm (the card's proj_last_bn deviation; its output Linear then keeps a bias,
    which lightly drops only because the BatchNorm follows), and lightly's NTXentLoss at the
    preset's temperature (0.2), value and gradients, on the head's own outputs."""
    from lightly.loss import NTXentLoss

    from vissl_lite.methods.simclr import nt_xent_loss

    cfg = load_config("simclr/quickstart", [f"data.root={tmp_path}"])
    torch.manual_seed(0)
    method = build_method(cfg)
    theirs = heads.SimCLRProjectionHead(method.backbone.num_features, 512, 128)
    assert method.backbone.num_features == 128
    assert layout(method.projector) == layout(theirs)[:-2] + [("Linear", 512 * 128 + 128, True)]
    z_a, z_b = method.projector(torch.randn(16, 128)), method.projector(torch.randn(16, 128))
    ours_in = [z.detach().clone().requires_grad_(True) for z in (z_a, z_b)]
    theirs_in = [z.detach().clone().requires_grad_(True) for z in (z_a, z_b)]
    ours = nt_xent_loss(*ours_in, cfg.method.temperature)
    reference = NTXentLoss(temperature=cfg.method.temperature)(*theirs_in)
    torch.testing.assert_close(ours.double(), reference.double(), rtol=1e-6, atol=1e-8)
    ours.backward()
    reference.backward()
    for a, b in zip(ours_in, theirs_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)
