"""Gradient clipping as each source clips (vissl_lite.engine.clip), against the formulas written
out: DINO's ``utils.clip_gradients`` (per parameter), DINOv2's per-submodule ``clip_grad_norm_``,
and one global norm; the presets that cite them use their mode."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from _helpers import tiny_method
from vissl_lite.config import load_config
from vissl_lite.engine.clip import clip_blocks, clip_gradients
from vissl_lite.methods.base import Method

REPO = Path(__file__).resolve().parents[1]
CLIP = 1.0


class _TwoHeads(Method):
    """A backbone, two heads and a parameter of the method's own (as DINOv2's mask token)."""

    def __init__(self):
        super().__init__(nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6)))
        self.head = nn.Linear(6, 3)
        self.patch_head = nn.Linear(6, 3)
        self.teacher = nn.Linear(6, 3).requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(1, 6))


def _with_grads(method: nn.Module, seed: int = 0):
    """Gradients of very different sizes: some tensors above the clip, some below."""
    g = torch.Generator().manual_seed(seed)
    for i, p in enumerate(p for p in method.parameters() if p.requires_grad):
        p.grad = torch.randn(p.shape, generator=g) * (0.05 if i % 2 else 3.0)
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def dino_clip_gradients(named_grads, clip):
    """facebookresearch/dino utils.clip_gradients: every tensor by its own norm."""
    out = {}
    for name, g in named_grads.items():
        param_norm = g.norm(2)
        clip_coef = clip / (param_norm + 1e-6)
        out[name] = g * clip_coef if clip_coef < 1 else g
    return out


def clip_grad_norm(named_grads, clip):
    """torch / FSDP clip_grad_norm_ over one set of tensors: one norm, one coefficient."""
    total = torch.linalg.vector_norm(torch.stack([g.norm(2) for g in named_grads.values()]))
    coef = min(clip / (total + 1e-6), 1.0)
    return {name: g * coef for name, g in named_grads.items()}


def dinov2_clip(named_grads, clip, parts):
    """DINOv2 train.py: ``for v in model.student.values(): v.clip_grad_norm_(clip)``, each
    student module (backbone with its mask token, DINO head, iBOT head) by its own norm."""
    out = {}
    for prefixes in parts:
        part = {n: g for n, g in named_grads.items() if n.startswith(prefixes)}
        out.update(clip_grad_norm(part, clip))
    return out


@pytest.mark.parametrize("mode", ["global", "per_param", "per_module"])
def test_each_mode_equals_its_sources_formula(mode):
    method = _TwoHeads()
    grads = _with_grads(method)
    params = [p for p in method.parameters() if p.requires_grad]
    total = clip_gradients(clip_blocks(mode, method, params), CLIP)
    expected = {"global": lambda: clip_grad_norm(grads, CLIP),
                "per_param": lambda: dino_clip_gradients(grads, CLIP),
                "per_module": lambda: dinov2_clip(
                    grads, CLIP, [("backbone.", "mask_token"), ("head.",), ("patch_head.",)])}[mode]()
    for name, p in method.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-6, atol=1e-8, msg=name)
    norm_before = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
    torch.testing.assert_close(total, norm_before)
    clipped = sum(not torch.equal(p.grad, grads[n]) for n, p in method.named_parameters()
                  if p.requires_grad)
    assert 0 < clipped, "nothing was clipped: the test would not see a wrong coefficient"


def test_the_modes_differ_on_the_same_gradients():
    results = {}
    for mode in ("global", "per_param", "per_module"):
        method = _TwoHeads()
        _with_grads(method)
        params = [p for p in method.parameters() if p.requires_grad]
        clip_gradients(clip_blocks(mode, method, params), CLIP)
        results[mode] = torch.cat([p.grad.flatten() for p in params])
    assert not torch.allclose(results["global"], results["per_param"])
    assert not torch.allclose(results["per_module"], results["global"])
    assert not torch.allclose(results["per_module"], results["per_param"])


def test_no_clip_leaves_gradients_and_returns_the_norm():
    method = _TwoHeads()
    grads = _with_grads(method)
    params = [p for p in method.parameters() if p.requires_grad]
    total = clip_gradients([params], 0.0)
    assert all(torch.equal(p.grad, grads[n]) for n, p in method.named_parameters() if p.requires_grad)
    assert total == pytest.approx(float(torch.linalg.vector_norm(
        torch.stack([g.norm() for g in grads.values()]))), rel=1e-6)


def test_default_clip_groups_are_the_trainable_children_with_own_parameters_in_the_backbone():
    method = _TwoHeads()
    groups = method.clip_groups()
    names = {id(p): n for n, p in method.named_parameters()}
    assert {k: sorted(names[id(p)] for p in v) for k, v in groups.items()} == {
        "backbone": ["backbone.0.bias", "backbone.0.weight", "backbone.1.bias", "backbone.1.weight",
                     "mask_token"],
        "head": ["head.bias", "head.weight"],
        "patch_head": ["patch_head.bias", "patch_head.weight"]}


def test_dinov2_clips_its_backbone_and_each_head_as_the_official_student_modules():
    method = tiny_method("dinov2")
    groups = method.clip_groups()
    assert sorted(groups) == ["backbone", "head", "patch_head"]
    assert any(p is method.mask_token for p in groups["backbone"])
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert {id(p) for v in groups.values() for p in v} == trainable


@pytest.mark.parametrize("preset, mode", [
    ("dino/imagenet_vit_small", "per_param"), ("selfpatch/imagenet_vit_small", "per_param"),
    ("selfpatch/cifar10_vit_tiny", "per_param"), ("dinov2/imagenet_vit_small", "per_module"),
    ("dinov2/cifar10_vit_tiny", "per_module")])
def test_presets_clip_as_their_sources(preset, mode):
    cfg = load_config(REPO / "configs" / f"{preset}.yaml", ["data.root=/unused"])
    assert cfg.train.grad_clip == 3.0 and cfg.train.grad_clip_mode == mode
