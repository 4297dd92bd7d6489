"""DINO: self-distillation with no labels (Caron et al. 2021, arXiv:2104.14294).

A student (backbone + DINO head) sees 2 global and N local crops; an EMA teacher sees the 2 global
crops only. The student matches the teacher's centred, sharpened distribution on every pair of
different crops (Algorithm 1 of the paper):

    t_k = softmax((g_t(x_k) - C) / tau_t)          k in the 2 global crops    (no gradient)
    s_v = log_softmax(g_s(x_v) / tau_s)            v in all 2 + N crops
    loss = mean over pairs (k, v != k) of mean over the batch of -sum(t_k * s_v)
    C   <- m_c * C + (1 - m_c) * mean of g_t(x_k) over the global batch (all-reduced across ranks)
    teacher <- m * teacher + (1 - m) * student     m: cosine from 0.996 to 1 over training

The teacher temperature rises linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over the
first epochs; the last layer of the student head is frozen (its gradients dropped) during the
first ``freeze_last_layer`` epochs. Evaluation uses the teacher's backbone, as the paper does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import all_reduce_mean
from vissl_lite.errors import AugmentError
from vissl_lite.methods.ema import ema_update, teacher_copy
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.heads import DINOHead
from vissl_lite.registry import METHODS
from vissl_lite.schedules import cosine_schedule


@dataclass
class DINOConfig:
    name: str = "dino"
    out_dim: int = 65536              # prototypes (K); lightly's CIFAR-10 benchmark uses 2048
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    use_bn_in_head: bool = False      # the paper's ResNet-50 runs use BN in the head
    norm_last_layer: bool = True      # fix the last layer's weight norm to 1 (more stable)
    num_local_crops: int = 10
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996   # EMA momentum at step 0 ...
    momentum_teacher_end: float = 1.0  # ... rising to this value on a cosine schedule
    freeze_last_layer: int = 1        # epochs during which the last head layer is not updated


def dino_loss(student_out: Sequence[torch.Tensor], teacher_out: Sequence[torch.Tensor],
              center: torch.Tensor, teacher_temp, student_temp: float) -> torch.Tensor:
    """Cross-entropy between centred/sharpened teacher and student outputs, over crop pairs.

    ``student_out``: one (B, K) tensor per crop (globals first, in the teacher's order);
    ``teacher_out``: one (B, K) tensor per global crop. Pairs of the same crop are skipped.
    """
    teacher_probs = [F.softmax((t.float() - center) / teacher_temp, dim=-1).detach() for t in teacher_out]
    student_logp = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_out]
    total, n_terms = 0.0, 0
    for k, t in enumerate(teacher_probs):
        for v, s in enumerate(student_logp):
            if v == k:
                continue
            total = total + torch.sum(-t * s, dim=-1).mean()
            n_terms += 1
    return total / n_terms


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float) -> None:
    """EMA of the teacher outputs' mean over the global batch (in place, identical on all ranks)."""
    batch_center = all_reduce_mean(teacher_out.float().mean(0, keepdim=True))
    center.mul_(momentum).add_(batch_center, alpha=1 - momentum)


def teacher_temperature(epoch: int, warmup_temp: float, final_temp: float, warmup_epochs: int) -> float:
    """Linear warmup over ``warmup_epochs`` epochs (np.linspace as the reference), then constant.
    DINOv2 calls it per iteration: ``epoch`` a step and ``warmup_epochs`` a number of steps."""
    if epoch >= warmup_epochs:
        return final_temp
    return warmup_temp + (final_temp - warmup_temp) * epoch / max(warmup_epochs - 1, 1)


def _forward_by_resolution(backbone: nn.Module, head: nn.Module, crops: Sequence[torch.Tensor]):
    """Backbone features and head outputs of all crops, concatenated along the batch.

    One backbone pass per run of consecutive same-sized crops (as DINO's MultiCropWrapper).
    """
    outs: List[torch.Tensor] = []
    start = 0
    while start < len(crops):
        end = start + 1
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
        outs.append(backbone(torch.cat(list(crops[start:end]))))
        start = end
    features = torch.cat(outs)
    return features, head(features)


@METHODS.register("dino", help="DINO: self-distillation with an EMA teacher and multi-crop (Caron et al. 2021)")
class DINO(Method):
    """DINO: student backbone + head, EMA teacher on global crops, centring and sharpening."""

    Config = DINOConfig
    min_batch_size = 2
    #: weight decay on all but biases and 1-d parameters: pos_embed and cls_token are decayed, as
    #: facebookresearch/dino utils.get_params_groups (and SelfPatch's copy) decay them
    decay_listed_params = True
    tiny_config = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "num_local_crops": 2}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.views = ViewSpec("dino", 2, c.num_local_crops)
        self.head = DINOHead(backbone.num_features, c.out_dim, c.hidden_dim, c.bottleneck_dim,
                             c.head_layers, c.use_bn_in_head, c.norm_last_layer)
        self.teacher_backbone = teacher_copy(backbone)
        self.teacher_head = teacher_copy(self.head)
        self.register_buffer("center", torch.zeros(1, c.out_dim))
        # Optimizer steps completed: a Python int for the schedules (reading a device counter on
        # the host would stall every step), mirrored in the ``steps_done`` buffer so that
        # checkpoints carry it; loading a state dict restores the int from the buffer.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.steps_done_int = 0
        # this step's teacher temperature, on the device: a changing Python float read in a
        # compiled training_step would recompile it whenever the schedule moves
        self.register_buffer("current_teacher_temp", torch.tensor(c.warmup_teacher_temp), persistent=False)
        self.steps_per_epoch = None
        self.register_load_state_dict_post_hook(_restore_step_counter)

    def _epoch(self, step: int) -> int:
        if not self.steps_per_epoch:
            raise RuntimeError("DINO's schedules are per epoch: call method.setup(total_steps, "
                               "steps_per_epoch) before training (the Trainer does)")
        return step // self.steps_per_epoch

    def setup(self, total_steps: int, steps_per_epoch: int) -> None:
        super().setup(total_steps, steps_per_epoch)
        self.set_steps_done(self.steps_done_int)

    def set_steps_done(self, steps: int) -> None:
        """Set the step counter (a Python int and its buffer) and this step's temperature."""
        self.steps_done_int = int(steps)
        self.steps_done.fill_(self.steps_done_int)
        if self.steps_per_epoch:
            c = self.cfg
            self.current_teacher_temp.fill_(teacher_temperature(
                self._epoch(self.steps_done_int), c.warmup_teacher_temp, c.teacher_temp,
                c.warmup_teacher_temp_epochs))

    def _crops_and_temperature(self, batch: Dict[str, Any]):
        """The batch's crops (the 2 global ones first) and this step's teacher temperature."""
        crops = batch["views"]
        if len(crops) < 2:
            raise AugmentError(f"{type(self).__name__} needs 2 global crops (+ local crops), got "
                               f"{len(crops)} views; use the method's own view recipe")
        self._epoch(0)  # fails clearly before setup()
        return crops, self.current_teacher_temp

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        crops, temp = self._crops_and_temperature(batch)
        c = self.cfg
        with torch.no_grad():
            teacher_features, teacher_out = _forward_by_resolution(
                self.teacher_backbone, self.teacher_head, crops[:2])
        _, student_out = _forward_by_resolution(self.backbone, self.head, crops)

        loss = dino_loss(student_out.chunk(len(crops)), teacher_out.chunk(2), self.center, temp, c.student_temp)
        with torch.no_grad():
            probs = F.softmax((teacher_out.float() - self.center) / temp, dim=-1)
            entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
        update_center(self.center, teacher_out, c.center_momentum)
        return StepOutput(loss, {"teacher_temp": temp.clone(), "teacher_entropy": entropy},
                          embedding=teacher_features[: crops[0].shape[0]])

    def on_before_optimizer_step(self, step: int) -> None:
        if self._epoch(step) < self.cfg.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA update after optimizer step ``step`` (0-based): teacher = m * teacher + (1 - m) * student.

        The teacher's batch-norm statistics come from its own forward passes, as in the paper's code.
        """
        m = cosine_schedule(step, total_steps, self.cfg.momentum_teacher, self.cfg.momentum_teacher_end)
        ema_update(self.teacher_backbone, self.backbone, m, copy_buffers=False)
        ema_update(self.teacher_head, self.head, m, copy_buffers=False)
        self.set_steps_done(step + 1)

    def backbone_for_eval(self) -> nn.Module:
        return self.teacher_backbone


def _restore_step_counter(module: DINO, incompatible_keys) -> None:
    """After ``load_state_dict``: the Python step counter from the loaded ``steps_done`` buffer
    (read once when loading, never in a step)."""
    module.set_steps_done(int(module.steps_done))
