"""CNN-JEPA: I-JEPA for convolutional encoders (Kalapos & Gyires-Toth 2024, arXiv:2408.07514).

The masks are I-JEPA's multi-block masks (``augment.masks.BlockMaskSampler``: one context block and
``num_targets`` target blocks, disjoint) on the encoder's *output* grid (gh, gw) = (H, W) / stride
(7x7 for a ResNet-50 at 224 px, 4x4 for a CIFAR-stem ResNet at 32 px), upsampled to the input:

    keep   = context mask on the grid (B, 1, gh, gw), 1 on context cells
    z      = sparse_encoder(x, keep)       # x * up(keep), and after the stem, the max-pool and
                                           # every stage the map is multiplied by keep resized to
                                           # it (SparK-style sparse convolution by zeroing)
    u      = keep * z + (1 - keep) * mask_token           # learned (1, C, 1, 1) token
    pred   = predictor(u)                  # depthwise-separable convs, C -> C, same grid
    h      = channel_norm(target_encoder.features(x))     # EMA encoder on the full image,
                                                          # layer norm over channels per cell
    loss   = smooth_l1(pred, h) over the target cells of every target block
    target_encoder <- m * target_encoder + (1 - m) * encoder,  m: 0.996 -> 1 linearly

A masked input pixel reaches nothing: it is zeroed before the first convolution, and every later
map is re-zeroed at masked cells, so the context features are those of the visible region alone.
Batch-norm statistics are those of the zero-filled maps (SparK normalises over visible cells
only; here BN is left dense). The EMA target encoder runs in train mode on full images and keeps
its own batch-norm statistics (as DINO's teacher), which is also the encoder ``backbone_for_eval``
returns, pooled as the ResNet pools.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.masks import BlockMaskSampler
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.methods.ema import ema_update, teacher_copy
from vissl_lite.schedules import linear_schedule
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.vit_blocks import gather_tokens
from vissl_lite.registry import METHODS
from vissl_lite.shapes import RunShape

STAGES = ("layer1", "layer2", "layer3", "layer4")


def resnet_stride(resnet: nn.Module) -> int:
    """The total down-sampling of a torchvision-style ResNet (32, or 8 with the CIFAR stem)."""
    stride = resnet.conv1.stride[0] * (2 if isinstance(resnet.maxpool, nn.MaxPool2d) else 1)
    for name in STAGES:
        downsample = getattr(resnet, name)[0].downsample
        stride *= downsample[0].stride[0] if downsample is not None else 1
    return stride


def _zero_masked(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) times ``keep`` (B, 1, gh, gw) nearest-resized to (H, W)."""
    return x * F.interpolate(keep, size=x.shape[-2:], mode="nearest").to(x.dtype)


def sparse_resnet_features(resnet: nn.Module, x: torch.Tensor,
                           keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The last-stage feature map (B, C, gh, gw) of a torchvision-style ResNet; with ``keep``
    (B, 1, gh, gw) in {0, 1} masked cells are zeroed in the input and after every stage."""
    mask = (lambda t: _zero_masked(t, keep)) if keep is not None else (lambda t: t)
    x = mask(x)
    x = mask(resnet.relu(resnet.bn1(resnet.conv1(x))))
    x = mask(resnet.maxpool(x))
    for name in STAGES:
        x = mask(getattr(resnet, name)(x))
    return x


def index_mask(idx: torch.Tensor, num_cells: int) -> torch.Tensor:
    """(B, K) cell indices -> a (B, num_cells) float mask with ones at those cells."""
    return torch.zeros(idx.shape[0], num_cells, device=idx.device).scatter_(1, idx, 1.0)


class ConvPredictor(nn.Module):
    """``depth`` depthwise-separable blocks (k x k depthwise conv, BN, ReLU, 1x1 conv) on a
    (B, C, gh, gw) map; blocks but the last end in BN + ReLU."""

    def __init__(self, channels: int, depth: int = 3, kernel_size: int = 3,
                 hidden: Optional[int] = None):
        super().__init__()
        hidden = hidden or channels
        layers: List[nn.Module] = []
        c_in = channels
        for i in range(depth):
            last = i == depth - 1
            layers += [nn.Conv2d(c_in, c_in, kernel_size, padding=kernel_size // 2, groups=c_in,
                                 bias=False), nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                       nn.Conv2d(c_in, channels if last else hidden, 1)]
            if not last:
                layers += [nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
            c_in = hidden
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@METHODS.register("cnnjepa", help="CNN-JEPA: I-JEPA for ResNets with a sparse encoder and a conv predictor")
class CNNJEPA(Method):
    """CNN-JEPA (arXiv:2408.07514); see the module docstring for the algorithm."""

    @dataclass
    class Config:
        name: str = "cnnjepa"
        predictor_depth: int = 3
        predictor_kernel: int = 3
        predictor_hidden: int = 0         # 0: as wide as the encoder's output
        num_targets: int = 4
        target_scale: List[float] = field(default_factory=lambda: [0.15, 0.2])
        target_aspect: List[float] = field(default_factory=lambda: [0.75, 1.5])
        context_scale: List[float] = field(default_factory=lambda: [0.85, 1.0])
        min_keep: int = 4                 # fewest context cells a sample may keep
        momentum_start: float = 0.996
        momentum_end: float = 1.0
        input_size: int = 224             # side of the views: fixes the mask grid for the run

    views = ViewSpec("ijepa", 1, 0)
    supported_backbones = ("resnet",)
    min_batch_size = 2
    tiny_config = {"predictor_depth": 1, "num_targets": 2, "min_keep": 1, "input_size": 32}
    #: the masks live on the encoder's output grid: tests/_helpers.tiny_backbone gives this method
    #: a CIFAR-stem ResNet (stride 8, a 4x4 grid at 32 px) instead of a 1x1 grid
    tiny_backbone_options = {"cifar_stem": True}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        if c.predictor_depth < 1 or c.predictor_kernel < 1 or c.predictor_kernel % 2 == 0:
            raise ConfigError(f"need method.predictor_depth >= 1 and an odd predictor_kernel, got "
                              f"{c.predictor_depth} and {c.predictor_kernel}")
        if not 0.0 <= c.momentum_start <= c.momentum_end <= 1.0:
            raise ConfigError(f"need 0 <= method.momentum_start <= method.momentum_end <= 1, got "
                              f"{c.momentum_start} and {c.momentum_end}")
        self.stride = resnet_stride(backbone)
        channels = backbone.num_features
        self.mask_token = nn.Parameter(torch.zeros(1, channels, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.predictor = ConvPredictor(channels, c.predictor_depth, c.predictor_kernel,
                                       c.predictor_hidden or None)
        self.target_encoder = teacher_copy(backbone)
        self.momentum = float(c.momentum_start)
        # built once (it sizes its fixed mask counts by sampling on the host), never in a step
        self.mask_sampler = BlockMaskSampler(
            self.grid_of(c.input_size, c.input_size, "method.input_size"), num_targets=c.num_targets,
            target_scale=tuple(c.target_scale), target_aspect=tuple(c.target_aspect),
            context_scale=tuple(c.context_scale), min_keep=c.min_keep)

    @classmethod
    def check_shape(cls, cfg: Any, shape: RunShape) -> None:
        if cfg.input_size != shape.global_size:
            raise ConfigError(f"method.input_size={cfg.input_size} sizes CNN-JEPA's masks, but the "
                              f"global views are {shape.global_size} px (augment.global_size or "
                              f"data.image_size); set method.input_size={shape.global_size}")

    def grid_of(self, h: int, w: int, what: str = "the input") -> Tuple[int, int]:
        if h % self.stride or w % self.stride or min(h, w) // self.stride < 2:
            raise ConfigError(f"CNN-JEPA masks the encoder's output grid: {what} ({h}x{w}) must "
                              f"be a multiple of the encoder's stride {self.stride} with at least "
                              f"2x2 cells (use backbone.cifar_stem=true for 32 px images)")
        return h // self.stride, w // self.stride

    def grid(self, images: torch.Tensor) -> Tuple[int, int]:
        return self.grid_of(*images.shape[-2:])

    def sample_masks(self, images: torch.Tensor, generator: Optional[torch.Generator] = None):
        grid = self.grid(images)
        if grid != self.mask_sampler.grid:
            raise ConfigError(f"CNN-JEPA got {images.shape[-1]} px views but its masks were sized "
                              f"for method.input_size={self.cfg.input_size}; set method.input_size "
                              f"to the global view size")
        return self.mask_sampler(images.shape[0], images.device, generator)

    @torch.no_grad()
    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """Channel-normalised EMA-encoder features of the full image, as (B, gh*gw, C) tokens."""
        h = sparse_resnet_features(self.target_encoder, images).flatten(2).transpose(1, 2)
        return F.layer_norm(h, h.shape[-1:])

    def predict(self, images: torch.Tensor, context_idx: torch.Tensor,
                target_idx: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Predictions and targets at every target block's cells, each (R*B*Kt, C)."""
        gh, gw = self.grid(images)
        keep = index_mask(context_idx, gh * gw).view(-1, 1, gh, gw)
        z = sparse_resnet_features(self.backbone, images, keep)
        u = keep * z + (1 - keep) * self.mask_token.to(z.dtype)
        pred = self.predictor(u).flatten(2).transpose(1, 2)           # (B, gh*gw, C)
        h = self.target_features(images)
        stacked = torch.cat(list(target_idx), dim=0)                  # (R*B, Kt)
        repeats = len(target_idx)
        preds = gather_tokens(pred.repeat(repeats, 1, 1), stacked)
        targets = gather_tokens(h.repeat(repeats, 1, 1), stacked)
        return preds.reshape(-1, preds.shape[-1]), targets.reshape(-1, targets.shape[-1])

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        images = batch["views"][0]
        context_idx, target_idx = self.sample_masks(images)
        preds, targets = self.predict(images, context_idx, target_idx)
        loss = F.smooth_l1_loss(preds.float(), targets.float())
        return StepOutput(loss, {"pred_loss": loss.detach(), "ema_momentum": self.momentum})

    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update of the target encoder (its batch-norm statistics are its own)."""
        self.momentum = linear_schedule(step, total_steps, self.cfg.momentum_start,
                                        self.cfg.momentum_end)
        ema_update(self.target_encoder, self.backbone, self.momentum, copy_buffers=False)

    def backbone_for_eval(self) -> nn.Module:
        return self.target_encoder
