"""SimSiam and FastSiam: the losses against their formulas and lightly's NegativeCosineSimilarity
(values and gradients, as lightly's benchmark models call it), the presets' heads against
lightly's, the stop-gradient, and one graph per step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _je import assert_one_graph, head_layout, lightly_module, one_training_step
from vissl_lite.config import load_config
from vissl_lite.methods import build_method
from vissl_lite.methods.fastsiam import fastsiam_loss
from vissl_lite.methods.simsiam import negative_cosine


def _leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True) for s in shapes]


def _clone(xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


def _assert_same(ours_fn, theirs_fn, inputs):
    a, b = _clone(inputs), _clone(inputs)
    ours, theirs = ours_fn(*a), theirs_fn(*b)
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-6, atol=1e-8)
    ours.backward()
    theirs.backward()
    for x, y in zip(a, b):
        assert (x.grad is None) == (y.grad is None)
        if x.grad is not None:
            torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-8)


def test_simsiam_loss_is_the_papers_formula_with_stop_gradient():
    p1, p2, z1, z2 = _leaves(*[(6, 5)] * 4)
    loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
    cos = lambda a, b: (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))  # noqa: E731
    expected = -0.5 * (cos(p1, z2).mean() + cos(p2, z1).mean())
    torch.testing.assert_close(loss.double(), expected.detach())
    loss.backward()
    assert z1.grad is None and z2.grad is None and p1.grad.abs().sum() > 0


def test_simsiam_loss_equals_lightlys_benchmark_model_loss():
    """lightly's SimSiamModel: 0.5 * (criterion(z0, p1) + criterion(z1, p0)), z detached."""
    crit = lightly_module("loss").NegativeCosineSimilarity()
    inputs = _leaves(*[(8, 6)] * 4, seed=1)
    _assert_same(lambda p1, p2, z1, z2: 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1)),
                 lambda p1, p2, z1, z2: 0.5 * (crit(z1.detach(), p2) + crit(z2.detach(), p1)),
                 inputs)


@pytest.mark.parametrize("k", [2, 4])
def test_fastsiam_loss_equals_lightlys_benchmark_model_loss(k):
    """lightly's FastSiamModel: sum_i criterion(p_i, mean(z[j != i])) / K with detached z."""
    crit = lightly_module("loss").NegativeCosineSimilarity()
    inputs = _leaves(*[(8, 6)] * (2 * k), seed=k)

    def ours(*x):
        return fastsiam_loss(list(x[:k]), list(x[k:]))

    def theirs(*x):
        ps, zs = torch.stack(x[:k]), torch.stack([z.detach() for z in x[k:]])
        loss = 0.0
        for i in range(k):
            mask = torch.arange(k) != i
            loss += crit(ps[i], torch.mean(zs[mask], dim=0)) / k
        return loss

    _assert_same(ours, theirs, inputs)


def test_fastsiam_with_two_views_is_simsiam():
    p1, p2, z1, z2 = _leaves(*[(5, 4)] * 4, seed=7)
    torch.testing.assert_close(fastsiam_loss([p1, p2], [z1, z2]),
                               0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1)))


@pytest.mark.parametrize("name", ["simsiam", "fastsiam"])
def test_cifar_presets_build_lightlys_benchmark_heads(name, tmp_path):
    heads = lightly_module("models.modules.heads")
    method = build_method(load_config(f"{name}/cifar10_resnet18", [f"data.root={tmp_path}"]))
    theirs = heads.ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)),
                                   (2048, 2048, nn.BatchNorm1d(2048), None)])
    assert head_layout(method.projector) == head_layout(theirs)
    assert head_layout(method.predictor) == head_layout(heads.SimSiamPredictionHead(2048, 512, 2048))
    assert method.views.num_global == (
        4 if name == "fastsiam" else 2)


def test_imagenet_projector_is_lightlys_simsiam_head(tmp_path):
    """SimSiamProjectionHead: three layers, the last BatchNorm without affine parameters."""
    heads = lightly_module("models.modules.heads")
    cfg = load_config("simsiam/imagenet_resnet50", [f"data.root={tmp_path}"])
    method = build_method(cfg)
    assert head_layout(method.projector) == head_layout(heads.SimSiamProjectionHead(2048, 2048, 2048))


@pytest.mark.parametrize("name", ["simsiam", "fastsiam"])
def test_step_is_the_loss_of_separate_view_passes_and_one_graph(name):
    method, batch, out = one_training_step(name)
    with torch.no_grad():
        z = [method.projector(method.backbone(v)) for v in batch["views"]]
        p = [method.predictor(x) for x in z]
    k = len(z)
    expected = sum(-F.cosine_similarity(p[i], (sum(z) - z[i]) / (k - 1)).mean() for i in range(k)) / k
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0 < out.metrics["z_std"].item() <= 1
    assert_one_graph(method, batch)
