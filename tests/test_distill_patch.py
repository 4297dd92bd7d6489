"""Patch-feature distillation (``methods/distill_patch.py``, ``method.patch_loss_weight``): the loss
written out on tiny models for a ResNet and a ViT student, ViT teachers of ours, timm's and a
DINOv2-like hub repo, the teacher grid finer, equal and coarser than the student's; 0 is the
global loss alone."""
from __future__ import annotations

import textwrap

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock

from test_encoder_specs import HUBCONF as DINOV2_HUBCONF
from vissl_lite.backbones.resnet import ResNet
from vissl_lite.backbones.vit import ViT
from vissl_lite.errors import ConfigError
from vissl_lite.methods.distill import Distill


def resnet() -> ResNet:
    return ResNet(BasicBlock, (1, 1, 1, 1), cifar_stem=True, name="resnet10_test")   # 4x4 at 32


def vit(img_size: int = 32, global_pool: str = "avg") -> ViT:
    return ViT(patch_size=4, embed_dim=48, depth=1, num_heads=3, img_size=img_size,
               global_pool=global_pool, name="vit_test")


def distill(student, **cfg) -> Distill:
    torch.manual_seed(0)
    method = Distill(student, {"teacher": "random:vit_tiny_patch4", "loss": "cosine", **cfg})
    method.setup(2, 2)
    return method.train()


def block_mean(tokens: torch.Tensor, grid: int, factor: int) -> torch.Tensor:
    """(B, grid^2, D) row-major tokens -> (B, (grid/factor)^2, D): means of factor x factor blocks."""
    b, _, d = tokens.shape
    g = grid // factor
    return tokens.reshape(b, g, factor, g, factor, d).mean(dim=(2, 4)).reshape(b, g * g, d)


def expected_loss(method, h, s_locations, t_global, t_locations, weight):
    """``1 - mean_b <n(P h_b), n(t_b)> + w * mean_{b,l} ||n(W s_l + c) - n(t_l)||^2``."""
    p, q = method.projector, method.patch_projector
    s = F.normalize(h @ p.weight.T + p.bias, dim=1)
    global_loss = 1 - (s * F.normalize(t_global, dim=1)).sum(dim=1).mean()
    s_l = F.normalize(s_locations @ q.weight.T + q.bias, dim=-1)
    patch = ((s_l - F.normalize(t_locations, dim=-1)) ** 2).sum(dim=-1).mean()
    return global_loss + weight * patch, patch


def test_resnet_student_matches_a_finer_vit_teacher_grid_by_block_means():
    """Student map 4x4 (the last stage), teacher grid 8x8 (32 px, patch 4): 2x2 block means."""
    method = distill(resnet(), teacher_image_size=32, patch_loss_weight=0.7)
    assert method.teacher_grid == (8, 8) and method.patch_projector.out_features == 192
    x = torch.randn(3, 3, 32, 32)
    stage = []
    method.backbone.layer4.register_forward_hook(lambda m, i, o: stage.append(o))
    with torch.no_grad():
        h = method.backbone(x)
        tokens = method.teacher.model.forward_all_tokens(method.teacher_input(x))
        t_global, t_patches = tokens[:, 1:].mean(dim=1), tokens[:, 1:]
        out = method.training_step({"views": [x]})
    assert stage[0].shape == (3, 512, 4, 4)
    want, patch = expected_loss(method, h, stage[0].flatten(2).transpose(1, 2), t_global,
                                block_mean(t_patches, 8, 2), 0.7)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["patch_loss"], patch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("teacher_size,factor", [(64, 2), (16, None)])
def test_vit_student_patch_tokens_match_the_teacher_grid_resized(teacher_size, factor):
    """Student ViT 8x8 patch tokens (CLS pooled); teacher grid 16x16 (2x2 block means) or 4x4
    (bilinear upsampling to 8x8, as F.interpolate with align_corners=False)."""
    method = distill(vit(global_pool="token"), teacher_image_size=teacher_size,
                     patch_loss_weight=2.0)
    x = torch.randn(2, 3, 32, 32)
    grid = teacher_size // 4
    with torch.no_grad():
        s_tokens = method.backbone.forward_all_tokens(x)
        tokens = method.teacher.model.forward_all_tokens(method.teacher_input(x))
        t_patches = tokens[:, 1:]
        if factor:
            t_locations = block_mean(t_patches, grid, factor)
        else:
            fmap = t_patches.transpose(1, 2).reshape(2, -1, grid, grid)
            fmap = F.interpolate(fmap, size=(8, 8), mode="bilinear", align_corners=False)
            t_locations = fmap.flatten(2).transpose(1, 2)
        out = method.training_step({"views": [x]})
    want, _ = expected_loss(method, s_tokens[:, 0], s_tokens[:, 1:], t_patches.mean(dim=1),
                            t_locations, 2.0)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-5)


def test_timm_teacher_tokens_and_pooled_feature_from_one_pass(tmp_path):
    """timm's test ViT (160 px, patch 16: a 10x10 grid) and a ViT student at 40 px (10x10): no
    resize; the teacher's global feature is its own pooled head input (forward_head)."""
    teacher = timm.create_model("test_vit.r160_in1k", pretrained=False, num_classes=0)
    save_file(teacher.state_dict(), str(tmp_path / "t.safetensors"))
    method = distill(vit(40), teacher="timm:test_vit.r160_in1k", patch_loss_weight=1.0,
                     teacher_weights=str(tmp_path / "t.safetensors"))
    assert method.teacher_grid == (10, 10)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        s_tokens = method.backbone.forward_all_tokens(x)[:, 1:]
        x_t = method.teacher_input(x)
        t_global = method.teacher(x_t)
        t_patches = method.teacher.model.forward_features(x_t)[:, teacher.num_prefix_tokens:]
        out = method.training_step({"views": [x]})
    want, _ = expected_loss(method, s_tokens.mean(dim=1), s_tokens, t_global, t_patches, 1.0)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-5)


def test_dinov2_teacher_patch_tokens_without_registers_and_its_cls_plus_mean(tmp_path):
    """A DINOv2-like hub teacher (patch 14 at 224 px: 16x16, 4 registers, global CLS + mean patch
    = 64-d, tokens 32-d) into a ResNet's 4x4 map: 4x4 block means of the patch tokens."""
    (tmp_path / "dinov2").mkdir()
    (tmp_path / "dinov2" / "hubconf.py").write_text(textwrap.dedent(DINOV2_HUBCONF))
    torch.manual_seed(0)
    model = torch.hub.load(str(tmp_path / "dinov2"), "dinov2_vits14", source="local",
                           pretrained=False)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    method = distill(resnet(), teacher=f"hub:{tmp_path / 'dinov2'}:dinov2_vits14",
                     teacher_weights=str(tmp_path / "w.pth"), patch_loss_weight=1.0)
    assert method.teacher_grid == (16, 16) and method.projector.out_features == 64
    assert method.patch_projector.out_features == 32
    x = torch.randn(2, 3, 32, 32)
    stage = []
    method.backbone.layer4.register_forward_hook(lambda m, i, o: stage.append(o))
    with torch.no_grad():
        h = method.backbone(x)
        tokens = model.vit.forward_features(method.teacher_input(x))
        t_global = torch.cat([tokens[:, 0], tokens[:, 5:].mean(dim=1)], dim=1)
        out = method.training_step({"views": [x]})
    want, _ = expected_loss(method, h, stage[0].flatten(2).transpose(1, 2), t_global,
                            block_mean(tokens[:, 5:], 16, 4), 1.0)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-5)


def test_weight_0_is_the_global_loss_alone_and_the_patch_head_trains_and_reloads():
    x = torch.randn(2, 3, 32, 32)
    plain = distill(resnet(), teacher_image_size=32)
    dense = distill(resnet(), teacher_image_size=32, patch_loss_weight=0.5)
    dense.backbone.load_state_dict(plain.backbone.state_dict())
    dense.projector.load_state_dict(plain.projector.state_dict())
    assert plain.patch_projector is None and "patch_loss" not in plain.training_step(
        {"views": [x]}).metrics
    out = dense.training_step({"views": [x]})
    torch.testing.assert_close(out.metrics["global_loss"], plain.training_step({"views": [x]}).loss,
                               rtol=0, atol=0)
    out.loss.backward()
    assert dense.patch_projector.weight.grad.abs().sum() > 0
    assert dense.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0

    rebuilt = Distill(resnet(), {"teacher": "timm:never_built", "patch_loss_weight": 0.5})
    rebuilt.load_state_dict(dense.state_dict())
    assert torch.equal(rebuilt.patch_projector.weight, dense.patch_projector.weight)


def test_patch_loss_needs_a_dense_student_and_a_vit_teacher():
    with pytest.raises(ConfigError, match="patch_loss_weight must be >= 0"):
        Distill(resnet(), {"teacher": "random:vit_tiny_patch4", "patch_loss_weight": -1})
    with pytest.raises(ConfigError, match="pooled features only"):
        distill(resnet(), teacher="random:resnet18", teacher_image_size=32, patch_loss_weight=1.0)
