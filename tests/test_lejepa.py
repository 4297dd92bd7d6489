"""LeJEPA (vissl_lite/methods/lejepa.py): SIGReg against the Epps-Pulley integral written out and
against lightly's SIGReg / LeJEPALoss, its behaviour as a Gaussianity test, the global batch on 2
ranks, one compiled graph, presets, and real CIFAR-10 steps that lower the loss."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from _helpers import (load_cifar_images, pair_loss_on_ranks, real_cifar_losses, tiny_method,
                      views_batch)
from vissl_lite.config import load_config
from vissl_lite.errors import ConfigError
from vissl_lite.methods import build_method
from vissl_lite.methods.lejepa import (LeJEPA, epps_pulley_grid, lejepa_invariance, lejepa_loss,
                                       random_directions, sigreg)

REPO = Path(__file__).resolve().parents[1]
GRID = epps_pulley_grid(17, 3.0)


def sigreg_by_hand(proj, directions, t_max=3.0, knots=17):
    """The Epps-Pulley statistic with the complex characteristic function, integrated by
    torch.trapezoid over the symmetric grid [-t_max, t_max] (2 knots - 1 points)."""
    t = torch.linspace(-t_max, t_max, 2 * knots - 1, dtype=torch.float64)
    x = (proj.double() @ directions.double())                        # (V, N, M)
    ecf = torch.exp(1j * x.unsqueeze(-1) * t).mean(-3)                 # (V, M, T)
    gauss = torch.exp(-t ** 2 / 2)
    integrand = (ecf - gauss).abs() ** 2 * gauss
    return (torch.trapezoid(integrand, t, dim=-1) * proj.shape[-2]).mean()


def test_sigreg_is_the_epps_pulley_integral():
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(3, 40, 8, generator=g) * 1.5 + 0.3
    a = random_directions(8, 16)
    assert torch.allclose(a.norm(dim=0), torch.ones(16))
    ours = sigreg(proj, a, *GRID)
    torch.testing.assert_close(ours.double(), sigreg_by_hand(proj, a), rtol=1e-5, atol=1e-6)


def test_sigreg_small_for_gaussian_samples_large_for_collapsed_or_scaled_ones():
    g = torch.Generator().manual_seed(1)
    a = random_directions(32, 64)
    gaussian = sigreg(torch.randn(1, 512, 32, generator=g), a, *GRID)
    collapsed = sigreg(torch.randn(1, 1, 32, generator=g).expand(1, 512, 32), a, *GRID)
    scaled = sigreg(3 * torch.randn(1, 512, 32, generator=g), a, *GRID)
    assert gaussian < 1.0 and collapsed > 50 * gaussian and scaled > 10 * gaussian


def test_invariance_formula():
    proj = torch.randn(5, 6, 4)
    centre = (proj[0] + proj[1]) / 2
    want = sum(((centre - proj[v]) ** 2).mean() for v in range(5)) / 5
    torch.testing.assert_close(lejepa_invariance(proj, 2), want)


def test_loss_and_gradients_equal_lightly():
    lightly = pytest.importorskip("lightly.loss", reason="lightly not installed (test-only oracle)")
    g = torch.Generator().manual_seed(2)
    global_proj = torch.randn(2, 24, 16, generator=g).requires_grad_(True)
    local_proj = torch.randn(4, 24, 16, generator=g).requires_grad_(True)
    a = random_directions(16, 128)
    oracle = lightly.LeJEPALoss(lambda_param=0.05, sigreg_num_vectors=128)
    oracle.sigreg._generate_unit_vectors = lambda *args: a
    want = oracle(local_proj=local_proj, global_proj=global_proj)
    want_grads = torch.autograd.grad(want, [global_proj, local_proj])
    ours, reg, _ = lejepa_loss(torch.cat([global_proj, local_proj]), 2, a, *GRID, lam=0.05)
    grads = torch.autograd.grad(ours, [global_proj, local_proj])
    torch.testing.assert_close(ours, want)
    torch.testing.assert_close(reg, oracle.sigreg(torch.cat([global_proj, local_proj])))
    for got, exp in zip(grads, want_grads):
        torch.testing.assert_close(got, exp)


def _sigreg_two_views(a, b, directions):
    return sigreg(torch.stack([a, b]), directions, *GRID)


def test_sigreg_on_two_ranks_is_that_of_the_global_batch(tmp_path):
    g = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    a = random_directions(8, 32)
    full_a, full_b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    full = _sigreg_two_views(full_a, full_b, a)
    full.backward()
    ranks = pair_loss_on_ranks(_sigreg_two_views, z_a, z_b, (a,), tmp_path)
    for r, out in enumerate(ranks):
        torch.testing.assert_close(out["loss"], full.detach())
        # each rank gets world_size x its share of the gradient; DDP's averaging divides it back
        torch.testing.assert_close(out["grad_a"], 2 * full_a.grad[r * 8:(r + 1) * 8])


def _sigreg_own_seed_per_rank(a, b):
    import torch.distributed as dist
    torch.manual_seed(dist.get_rank())              # different draws unless rank 0's is broadcast
    return sigreg(torch.stack([a, b]), random_directions(a.shape[1], 32), *GRID)


def test_every_rank_uses_rank_zeros_directions(tmp_path):
    g = torch.Generator().manual_seed(4)
    z_a, z_b = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    ranks = pair_loss_on_ranks(_sigreg_own_seed_per_rank, z_a, z_b, (), tmp_path)
    torch.manual_seed(0)
    want = sigreg(torch.stack([z_a, z_b]), random_directions(8, 32), *GRID)
    for out in ranks:
        torch.testing.assert_close(out["loss"], want)


def test_training_step_is_one_graph_and_draws_new_directions_each_step():
    method = tiny_method("lejepa")
    batch = views_batch(method)
    explain = torch._dynamo.explain(method.training_step)(batch)
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons
    torch.manual_seed(0)
    first = method.training_step(batch).metrics["sigreg"]
    second = method.training_step(batch).metrics["sigreg"]
    assert not torch.equal(first, second)


def test_no_teacher_and_every_view_gets_gradient():
    method = tiny_method("lejepa")
    assert not any(isinstance(m, type(method.backbone)) for m in method.modules()
                   if m is not method.backbone)
    batch = views_batch(method)
    views = [v.clone().requires_grad_(True) for v in batch["views"]]
    method.training_step({**batch, "views": views}).loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in views)


def test_bad_config_values_raise_clear_errors():
    from _helpers import tiny_backbone
    with pytest.raises(ConfigError, match="lambda_sigreg"):
        LeJEPA(tiny_backbone(LeJEPA), {"lambda_sigreg": 1.5})
    with pytest.raises(ConfigError, match="num_slices"):
        LeJEPA(tiny_backbone(LeJEPA), {"num_slices": 0})


@pytest.mark.parametrize("preset", ["lejepa/cifar10_resnet18", "lejepa/imagenet_vit_small"])
def test_presets_validate_and_build(preset, tmp_path):
    cfg = load_config(preset, [f"data.root={tmp_path}"])
    assert cfg.method.lambda_sigreg == 0.05
    if "cifar10" in preset:
        method = build_method(cfg)
        assert isinstance(method, LeJEPA) and method.views.num_views == 2 + cfg.method.num_local_crops


def test_steps_on_real_cifar10_lower_the_loss(cifar_root):
    torch.manual_seed(0)
    method = tiny_method("lejepa", proj_hidden_dim=64, proj_output_dim=16, num_slices=64,
                         num_local_crops=0)
    losses = real_cifar_losses(method, load_cifar_images(cifar_root, 64), steps=10, batch=32,
                               lr=2e-3, num_views=2)
    assert math.isfinite(losses[-1]) and sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
