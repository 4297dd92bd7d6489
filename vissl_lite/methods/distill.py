"""Distillation: a small student learns the global features of a large frozen teacher.

The teacher is any encoder spec (``method.teacher``: ``timm:``, ``torchvision:``, ``hub:`` such as
DINOv2, or a vissl_lite run); the student is the zoo backbone of ``backbone.*``. As in lightly-train's
distillation v1 (its documentation: a queue of teacher features as a pseudo-classifier, after Beyer
et al. 2022, "Knowledge distillation: a good teacher is patient and consistent"), both see the
same augmented view, and with ``loss: queue``::

    t = normalize(teacher(preprocess_teacher(x)))            (B, D_t), no gradient
    s = normalize(projector(student(x)))                     (B, D_t): a linear map to D_t
    p_t = softmax(t Q^T / tau),  log p_s = log_softmax(s Q^T / tau)
    loss = mean_b  -sum_k p_t[b, k] log p_s[b, k]            Q: the last K teacher features
    Q <- the newest K rows of [Q; gather(t)]                 (a ring, updated on the device)

``loss: cosine`` matches the normalised features directly: ``loss = 1 - mean_b <s_b, t_b>``.

With ``patch_loss_weight: w > 0`` (dense students, lightly-train's distillation v2 idea) the
student's feature map is also matched to the teacher's patch tokens, and the loss is
``loss + w * patch_loss`` (``methods/distill_patch.py`` has the formula); 0 is v1 alone.

The teacher is built in ``setup`` (so a checkpoint rebuilt for evaluation never needs it), is not a
sub-module (not in ``state_dict``, not seen by DDP or the optimizer), runs under ``no_grad`` in
eval mode under the run's autocast, and is fed the same views re-normalised to its own mean/std
and resized to its own input size on the device when its card differs from the run's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment import default_mean_std
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.backbones.card import Card
from vissl_lite.backbones.specs import parse_spec, resolve_encoder
from vissl_lite.distributed import gather_no_grad
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.distill_patch import check_dense_student, patch_loss, student_features
from vissl_lite.registry import METHODS

LOSSES = ("queue", "cosine")


@dataclass
class DistillConfig:
    name: str = "distill"
    teacher: str = "timm:vit_small_patch16_224.dino"   # any encoder spec
    teacher_weights: Optional[str] = None   # a local weights file for a timm:/torchvision:/hub: spec
    teacher_feature: Optional[str] = None   # pool | cls | mean | cls+mean (null: the family's default)
    teacher_image_size: Optional[int] = None  # null: the teacher's card (a random: teacher needs it)
    loss: str = "queue"                     # queue (v1 pseudo-classifier) | cosine
    queue_size: int = 2048
    temperature: float = 0.07
    patch_loss_weight: float = 0.0          # > 0: also match the teacher's patch tokens (v2 idea)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"method.loss={self.loss!r}: one of {', '.join(LOSSES)}")
        if self.queue_size < 1 or self.temperature <= 0:
            raise ConfigError("method.queue_size must be >= 1 and method.temperature > 0")
        if self.patch_loss_weight < 0:
            raise ConfigError("method.patch_loss_weight must be >= 0 (0: global features only)")


def _affine(x: torch.Tensor, scale, shift) -> torch.Tensor:
    """Per-channel ``x * scale + shift`` with Python constants (no host-to-device copy)."""
    return torch.stack([x[:, c] * scale[c] + shift[c] for c in range(x.shape[1])], dim=1)


def renormalise(x: torch.Tensor, source: Tuple, target: Tuple) -> torch.Tensor:
    """Images normalised with ``source`` (mean, std) -> normalised with ``target`` (mean, std):
    ``(x * s0 + m0 - m1) / s1`` per channel."""
    (m0, s0), (m1, s1) = source, target
    return _affine(x, [s0[c] / s1[c] for c in range(3)], [(m0[c] - m1[c]) / s1[c] for c in range(3)])


@METHODS.register("distill", help="distillation: a zoo student matches a frozen teacher's "
                                  "normalised features (any encoder spec; lightly-train v1 idea)")
class Distill(Method):
    """Student backbone + linear projector to the teacher's width; frozen teacher from a spec."""

    Config = DistillConfig
    views = ViewSpec("simclr", 1, 0)
    min_batch_size = 1
    tiny_config = {"teacher": "random:vit_tiny_patch4", "teacher_image_size": 32,
                   "queue_size": 64, "patch_loss_weight": 0.5}
    #: the normalisation of the views given to training_step (set by build_method from augment.*)
    input_mean_std: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        if parse_spec(self.cfg.teacher)[0] == "random" and not self.cfg.teacher_image_size:
            raise ConfigError(f"method.teacher={self.cfg.teacher}: a random teacher needs "
                              f"method.teacher_image_size (e.g. the run's view size)")
        if self.cfg.patch_loss_weight:
            check_dense_student(backbone)
        self._teacher: Tuple[nn.Module, ...] = ()
        self.projector: Optional[nn.Linear] = None
        self.patch_projector: Optional[nn.Linear] = None
        self.teacher_grid: Tuple[int, int] = (0, 0)
        self.register_buffer("queue", torch.empty(0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._register_load_state_dict_pre_hook(self._heads_from_state)

    # -- the teacher ------------------------------------------------------------------------------
    def setup(self, total_steps: int, steps_per_epoch: int) -> None:
        super().setup(total_steps, steps_per_epoch)
        if not self._teacher:
            self._build_teacher()

    def _build_teacher(self) -> None:
        cfg = self.cfg
        teacher = resolve_encoder(cfg.teacher, weights=cfg.teacher_weights,
                                  feature=cfg.teacher_feature, image_size=cfg.teacher_image_size)
        if cfg.teacher_image_size and teacher.card.image_size != cfg.teacher_image_size:
            teacher.card = teacher.card.replace(image_size=cfg.teacher_image_size)
        device = next(self.backbone.parameters()).device
        self._teacher = (teacher.requires_grad_(False).eval().to(device),)
        if cfg.patch_loss_weight:
            if not teacher.patch_size:
                raise ConfigError(f"method.patch_loss_weight > 0 needs a teacher with patch "
                                  f"tokens (a ViT); {cfg.teacher} gives pooled features only")
            side = teacher.card.image_size // teacher.patch_size
            self.teacher_grid = (side, side)
        if self.projector is None:
            self._make_heads(teacher.num_features, device,
                             patch_dim=teacher.width if cfg.patch_loss_weight else None)
        elif self.projector.out_features != teacher.num_features:
            raise ConfigError(f"method.teacher={cfg.teacher} gives {teacher.num_features}-d "
                              f"features, but this run's projector maps to "
                              f"{self.projector.out_features}; use the teacher it was trained with")

    def _make_heads(self, dim: int, device, queue_size: Optional[int] = None,
                    patch_dim: Optional[int] = None) -> None:
        """The projectors and queue depend on the teacher's widths, known once it is built."""
        self.projector = nn.Linear(self.backbone.num_features, dim).to(device)
        if patch_dim:
            self.patch_projector = nn.Linear(self.backbone.num_features, patch_dim).to(device)
        g = torch.Generator().manual_seed(0)
        queue = torch.randn(queue_size or self.cfg.queue_size, dim, generator=g)
        self.queue = F.normalize(queue, dim=1).to(device)

    def _heads_from_state(self, state, prefix, *args) -> None:
        """Loading a checkpoint (resume, or evaluation without a teacher): heads of its shapes."""
        weight, queue = state.get(f"{prefix}projector.weight"), state.get(f"{prefix}queue")
        patch = state.get(f"{prefix}patch_projector.weight")
        if weight is not None and self.projector is None:
            self._make_heads(weight.shape[0], self.queue.device,
                             queue.shape[0] if queue is not None else None,
                             patch.shape[0] if patch is not None else None)

    @property
    def teacher(self) -> nn.Module:
        if not self._teacher:
            raise ConfigError("the distillation teacher is built by setup(); call "
                              "method.setup(total_steps, steps_per_epoch) first")
        return self._teacher[0]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self._teacher:
            self._teacher[0]._apply(fn)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self._teacher:
            self._teacher[0].eval()   # always: BatchNorm statistics and dropout of a frozen model
        return self

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """The views as the teacher's card wants them: its mean/std, its input size."""
        card: Card = self.teacher.card
        source = self.input_mean_std or default_mean_std(None, x.shape[-1])
        if tuple(source[0]) != tuple(card.mean) or tuple(source[1]) != tuple(card.std):
            x = renormalise(x, source, (card.mean, card.std))
        if x.shape[-1] != card.image_size or x.shape[-2] != card.image_size:
            x = F.interpolate(x, size=(card.image_size, card.image_size),
                              mode="bilinear" if card.interpolation == "nearest" else
                              card.interpolation, align_corners=False,
                              antialias=x.shape[-1] > card.image_size)
        return x

    # -- the step ---------------------------------------------------------------------------------
    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        x, dense = batch["views"][0], self.cfg.patch_loss_weight > 0
        with torch.no_grad():
            x_t = self.teacher_input(x)
            t, t_patches = (self.teacher.forward_with_patches(x_t) if dense
                            else (self.teacher(x_t), None))
            t = F.normalize(t.float(), dim=1)
        h, s_map = student_features(self.backbone, x) if dense else (self.backbone(x), None)
        s = F.normalize(self.projector(h).float(), dim=1)
        if self.cfg.loss == "queue":
            queue = self.queue.clone()
            p_t = F.softmax(t @ queue.T / self.cfg.temperature, dim=1)
            log_p_s = F.log_softmax(s @ queue.T / self.cfg.temperature, dim=1)
            loss = -(p_t * log_p_s).sum(dim=1).mean()
            self._enqueue(t)
        else:
            loss = 1.0 - (s * t).sum(dim=1).mean()
        metrics = {"cos_teacher": (s.detach() * t).sum(dim=1).mean()}
        if dense:
            dense_loss = patch_loss(self.patch_projector, s_map, t_patches, self.teacher_grid)
            metrics.update(global_loss=loss.detach(), patch_loss=dense_loss.detach())
            loss = loss + self.cfg.patch_loss_weight * dense_loss
        return StepOutput(loss, metrics, embedding=h.detach())

    @torch.no_grad()
    def _enqueue(self, t: torch.Tensor) -> None:
        """Write the global batch's teacher features into the ring at ``queue_ptr``."""
        rows = gather_no_grad(t)
        size = self.queue.shape[0]
        index = (self.queue_ptr + torch.arange(rows.shape[0], device=rows.device)) % size
        self.queue.index_copy_(0, index, rows.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + rows.shape[0]) % size)

    def backbone_for_eval(self) -> nn.Module:
        return self.backbone
