"""Patch-feature distillation for dense students (lightly-train's distillation v2 idea; its docs:
the student's spatial features are matched to the teacher's patch tokens, for dense downstream
tasks). Ours, not lightly-train's code: a linear map per location, the teacher's token grid
resized to the student's, a normalised MSE::

    S = the student's feature map (B, C, h, w): a ResNet's last stage, a ViT's patch tokens
    T = the teacher's patch tokens on its grid (g x g, from its card: image size / patch size),
        resized to (h, w): area-averaged (adaptive average pooling) when finer, else bilinear
    s_l = normalize(W S[:, :, l] + b),  t_l = normalize(T[:, :, l])      W: C -> D_t, per location l
    patch_loss = mean_{b, l} ||s_l - t_l||^2                             (= 2 - 2 cos(s_l, t_l))

Every shape is known when the step is traced (the grids come from the images' and the card's
sizes), so the resize runs on the device with no host read.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.errors import ConfigError

DENSE_FAMILIES = ("resnet", "vit")


def check_dense_student(backbone: nn.Module) -> None:
    family = getattr(backbone, "family", "?")
    if family not in DENSE_FAMILIES:
        raise ConfigError(f"method.patch_loss_weight > 0 needs a ResNet or ViT student with a "
                          f"feature map; backbone {getattr(backbone, 'arch_name', '?')} is a "
                          f"{family} model; set method.patch_loss_weight=0")


def student_features(backbone: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the global feature ``backbone(x)`` gives (B, C), the feature map (B, C, h, w)), one pass."""
    if backbone.family == "vit":
        tokens = backbone.forward_all_tokens(x)
        patches = tokens[:, backbone.num_prefix_tokens:]
        pooled = patches.mean(dim=1) if backbone.global_pool == "avg" else tokens[:, 0]
        h, w = x.shape[-2] // backbone.patch_size, x.shape[-1] // backbone.patch_size
        return pooled, patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
    r = backbone
    x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
    feature_map = r.layer4(r.layer3(r.layer2(r.layer1(x))))
    return feature_map.mean(dim=(2, 3)), feature_map


def resize_grid(tokens: torch.Tensor, grid: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Tokens (B, g_h * g_w, D) on a row-major grid -> (B, D, h, w) on the grid ``size``."""
    fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
    if tuple(grid) == tuple(size):
        return fmap
    if grid[0] >= size[0] and grid[1] >= size[1]:
        return F.adaptive_avg_pool2d(fmap, size)
    return F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)


def patch_loss(projector: nn.Linear, student_map: torch.Tensor, teacher_tokens: torch.Tensor,
               teacher_grid: Tuple[int, int]) -> torch.Tensor:
    """The normalised MSE between the projected student map and the resized teacher tokens."""
    size = tuple(student_map.shape[-2:])
    t = resize_grid(teacher_tokens.float(), teacher_grid, size).flatten(2).transpose(1, 2)
    s = projector(student_map.flatten(2).transpose(1, 2)).float()
    return (F.normalize(s, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(dim=-1).mean()
