"""DINOv2-style training (Oquab et al. 2023, arXiv:2304.07193): DINO + iBOT + KoLeo.

A ViT student sees 2 global crops, with a fixed number ``M = int(N * mask_ratio)`` of their N
patches replaced by a learned mask token, and ``V_l`` local crops; the EMA teacher sees the full
global crops. With ``g`` the DINO head (on the CLS token) and ``g'`` the iBOT head (on patch
tokens, its own prototypes):

    t_k   = P(g_t(cls_t(x_k)))                 k in the 2 global crops           (no gradient)
    dino  = mean over pairs (k, v != k) of mean_b -sum t_k * log_softmax(g_s(cls_s(x_v)) / tau_s)
    u_k   = P'(g'_t(patch_t(x_k))[masked])     the teacher at the student's masked patches
    ibot  = mean over masked patches of -sum u_k * log_softmax(g'_s(patch_s(masked x_k)) / tau_s)
    koleo = sum over the 2 global crops of -mean_i log(min_{j != i} ||c_i - c_j||)
            (c: L2-normalised student CLS tokens of one crop, the batch of this rank; summed, not
            averaged, as ssl_meta_arch.py: koleo_loss_weight * sum(koleo(p) for p in cls.chunk(2)))
    loss  = w_dino * dino + w_ibot * ibot + w_koleo * koleo

``P`` is either DINO's centring and sharpening, softmax((t - C) / tau_t) with an EMA centre C per
head, or (``centering=sinkhorn_knopp``, DINOv2's ViT-g config) 3 Sinkhorn-Knopp iterations on
exp(t / tau_t) over the global batch (SwAV, Caron et al. 2020). The teacher follows the student by
EMA (cosine momentum schedule), the teacher temperature warms up linearly per iteration over
``warmup_teacher_temp_epochs`` epochs (train.py's ``teacher_temp_schedule[iteration]``, an
np.linspace), the last layers of both student heads are frozen during the first
``freeze_last_layer`` epochs. The heads are DINOv2's ``dino_head.py``: the weight-normalised last
layer's norms ``weight_g`` start at 1 and are trained (DINO v1's ``norm_last_layer=False``). With ``layer_decay < 1``
the parameters of block ``i`` of an ``L``-block ViT learn at ``layer_decay ** (L + 1 - i)`` times
the learning rate (patch embedding and prefix tokens as block 0, the heads at 1; the patch
embedding's further times ``patch_embed_lr_mult``), through
``param_lr_scale`` which the optimizer's parameter groups read (``lr_scale``). Drop-path rates and
register tokens are backbone options (``backbone.drop_path_rate``, ``backbone.reg_tokens``).
Evaluation uses the teacher's backbone.

Differences from DINOv2: masks are uniformly random patches at one fixed ratio for every sample
(DINOv2 draws block-wise masks with a ratio in [0.1, 0.5] for half of the samples), so that shapes
are fixed per run. ``separate_patch_head=false`` shares the DINO head's prototypes with iBOT, as
DINOv2's default config does (its ViT-g config separates them, as here by default).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.masks import random_patch_mask
from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import all_reduce_mean, world_size
from vissl_lite.methods.ema import ema_update, teacher_copy
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.dino import teacher_temperature, update_center
from vissl_lite.methods.heads import DINOHead
from vissl_lite.methods.vit_blocks import gather_tokens
from vissl_lite.registry import METHODS
from vissl_lite.schedules import cosine_schedule

CENTERINGS = ("centering", "sinkhorn_knopp")


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """Teacher targets (B, K) whose prototypes are equally used over the global batch: alternate
    normalisations of Q = exp(logits / temp) over prototypes and samples (DINOv2's
    ``sinkhorn_knopp_teacher``). The heads' unit-norm last layer bounds |logits| by 1, so the
    exponential cannot overflow at DINO's temperatures."""
    q = torch.exp(logits.float() / temp).t()                            # (K, B)
    n = q.shape[1] * world_size()
    k = q.shape[0]
    q = q / (all_reduce_mean(q.sum()) * world_size())
    for _ in range(iterations):
        q = q / (all_reduce_mean(q.sum(dim=1, keepdim=True)) * world_size()) / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).t()


def cross_entropy_pairs(student_out: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor],
                        student_temp: float) -> torch.Tensor:
    """DINO's loss over crop pairs (k, v) with v != k: ``student_out`` one (B, K) tensor per crop
    (globals first, in the teacher's order), ``teacher_probs`` one per global crop."""
    total, terms = 0.0, 0
    for v, s in enumerate(student_out):
        logp = F.log_softmax(s.float() / student_temp, dim=-1)
        for k, t in enumerate(teacher_probs):
            if v != k:
                total = total + torch.sum(-t * logp, dim=-1).mean()
                terms += 1
    return total / terms


def ibot_patch_loss(student_out: torch.Tensor, teacher_probs: torch.Tensor,
                    student_temp: float) -> torch.Tensor:
    """Cross-entropy at masked patches, (B, M, K) each: iBOT's per-image mean over its M masked
    patches, averaged over images (with M fixed, the mean over all masked patches)."""
    logp = F.log_softmax(student_out.float() / student_temp, dim=-1)
    return torch.sum(-teacher_probs * logp, dim=-1).mean()


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator (Sablayrolles et al. 2019, arXiv:1806.03198):
    -mean log distance of each L2-normalised row to its nearest other row."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    sim = x @ x.t() - 3.0 * torch.eye(x.shape[0], device=x.device)      # never pick oneself
    nearest = x[sim.argmax(dim=1)]
    return -torch.log(F.pairwise_distance(x, nearest, eps=eps) + eps).mean()


def vit_layer_id(name: str, depth: int) -> int:
    """Block index of a ViT parameter for layer-wise lr decay: 0 for the patch embedding, prefix
    tokens and positions, i + 1 for ``blocks.i``, depth + 1 for the final norm and the rest."""
    if name.startswith(("patch_embed", "cls_token", "reg_token", "pos_embed", "mask_token")):
        return 0
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else depth + 1


@METHODS.register("dinov2", help="DINOv2-style: DINO + iBOT masked-patch loss + KoLeo, Sinkhorn-Knopp option (Oquab et al. 2023)")
class DINOv2(Method):
    """DINOv2-style self-distillation (arXiv:2304.07193); see the module docstring."""

    @dataclass
    class Config:
        name: str = "dinov2"
        out_dim: int = 65536              # DINO head prototypes (DINOv2: 65536)
        patch_out_dim: int = 65536        # iBOT head prototypes (DINOv2: 65536, separate head)
        hidden_dim: int = 2048
        bottleneck_dim: int = 256
        head_layers: int = 3
        num_local_crops: int = 8          # DINOv2: 8 local crops of 98 px
        mask_ratio: float = 0.3           # fixed fraction of masked patches per global crop
        student_temp: float = 0.1
        teacher_temp: float = 0.07
        warmup_teacher_temp: float = 0.04
        warmup_teacher_temp_epochs: int = 30
        separate_patch_head: bool = True   # iBOT prototypes in their own head (DINOv2 ViT-g)
        centering: str = "centering"       # centering (DINOv2 default) | sinkhorn_knopp (ViT-g)
        sinkhorn_iterations: int = 3
        center_momentum: float = 0.9
        dino_loss_weight: float = 1.0
        ibot_loss_weight: float = 1.0
        koleo_loss_weight: float = 0.1
        momentum_teacher: float = 0.992   # DINOv2 default, cosine to 1
        momentum_teacher_end: float = 1.0
        freeze_last_layer: int = 1        # epochs
        layer_decay: float = 0.9          # DINOv2's layerwise_decay; 1.0 turns it off
        patch_embed_lr_mult: float = 0.2  # DINOv2: the patch embedding learns 5x slower

    supported_backbones = ("vit",)
    #: builds both heads (in_dim, out_dim, hidden, bottleneck, layers); Franca nests its own
    head_class: ClassVar[Callable[..., nn.Module]] = DINOHead
    #: pos_embed, cls_token and register tokens are decayed: dinov2/utils/param_groups.py exempts
    #: only biases, norms and LayerScale gammas
    decay_listed_params = True
    tiny_config = {"out_dim": 64, "patch_out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16,
                   "num_local_crops": 2}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        if c.centering not in CENTERINGS:
            raise ConfigError(f"method.centering={c.centering!r} is not one of {CENTERINGS}")
        # as random_patch_mask counts them: N - int(N * (1 - ratio)) masked patches per crop
        self.num_masked = backbone.num_patches - int(backbone.num_patches * (1 - c.mask_ratio))
        if not 1 <= self.num_masked < backbone.num_patches:
            raise ConfigError(f"method.mask_ratio={c.mask_ratio} masks {self.num_masked} of "
                              f"{backbone.num_patches} patches; pick a ratio in (0, 1) that masks "
                              f"at least one (DINOv2: 0.1-0.5)")
        if not 0.0 < c.layer_decay <= 1.0:
            raise ConfigError(f"method.layer_decay={c.layer_decay} must lie in (0, 1]")
        if getattr(backbone, "cls_token", None) is None:
            raise ConfigError("DINOv2 trains the CLS token; set backbone.class_token=true")
        self.views = ViewSpec("dino", 2, c.num_local_crops)
        dim = backbone.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.head = self.head_class(dim, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers,
                                    norm_last_layer=False)
        self.teacher_backbone = teacher_copy(backbone)
        self.teacher_head = teacher_copy(self.head)
        patch_dim = c.patch_out_dim if c.separate_patch_head else c.out_dim
        if c.separate_patch_head:
            self.patch_head = self.head_class(dim, c.patch_out_dim, c.hidden_dim, c.bottleneck_dim,
                                              c.head_layers, norm_last_layer=False)
            self.teacher_patch_head = teacher_copy(self.patch_head)
        else:  # one set of prototypes for CLS and patch tokens (DINOv2's default config)
            self.patch_head, self.teacher_patch_head = self.head, self.teacher_head
        self.register_buffer("center", torch.zeros(1, c.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, patch_dim))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.step_count = 0                # python mirror of steps_done (no device read per step)
        # this step's teacher temperature on the device: a changing Python float read in a
        # compiled training_step would recompile it whenever the schedule moves
        self.register_buffer("current_teacher_temp", torch.tensor(c.warmup_teacher_temp),
                             persistent=False)
        self.steps_per_epoch = None

    def train(self, mode: bool = True) -> "DINOv2":
        super().train(mode)
        for teacher in (self.teacher_backbone, self.teacher_head, self.teacher_patch_head):
            teacher.eval()  # never trained (teacher_copy already turned its drop-path off)
        return self

    # -- schedules -----------------------------------------------------------------------
    def _epoch(self, step: int) -> int:
        if not self.steps_per_epoch:
            raise RuntimeError("DINOv2's schedules are per epoch: call method.setup(total_steps, "
                               "steps_per_epoch) before training (the Trainer does)")
        return step // self.steps_per_epoch

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state_dict, strict, assign)
        self.step_count = int(self.steps_done)   # once, when a checkpoint is loaded
        self._update_teacher_temp()
        return out

    def setup(self, total_steps: int, steps_per_epoch: int) -> None:
        super().setup(total_steps, steps_per_epoch)
        self._update_teacher_temp()

    def _update_teacher_temp(self) -> None:
        if self.steps_per_epoch:
            c = self.cfg
            self.current_teacher_temp.fill_(teacher_temperature(
                self.step_count, c.warmup_teacher_temp, c.teacher_temp,
                c.warmup_teacher_temp_epochs * self.steps_per_epoch))

    def param_lr_scale(self, name: str) -> float:
        """Layer-wise lr decay: the lr multiplier of parameter ``name`` (read by the optimizer)."""
        depth = len(self.backbone.blocks)
        if name.startswith("backbone."):
            layer = vit_layer_id(name[len("backbone."):], depth)
        else:
            layer = 0 if name == "mask_token" else depth + 1
        scale = self.cfg.layer_decay ** (depth + 1 - layer)
        if name.startswith("backbone.patch_embed."):
            scale *= self.cfg.patch_embed_lr_mult
        return scale

    # -- the step ------------------------------------------------------------------------
    def teacher_probs(self, logits: torch.Tensor, center: torch.Tensor,
                      temp: torch.Tensor) -> torch.Tensor:
        if self.cfg.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temp, self.cfg.sinkhorn_iterations)
        return F.softmax((logits.float() - center) / temp, dim=-1)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        crops = batch["views"]
        c = self.cfg
        glob = torch.cat(list(crops[:2]))                                  # (2B, 3, H, W)
        b2 = glob.shape[0]
        temp = self.current_teacher_temp
        masks = random_patch_mask(b2, self.backbone.num_patches, c.mask_ratio, glob.device)
        mask_idx = masks.mask_idx                                          # (2B, M), M fixed
        prefix = self.backbone.num_prefix_tokens

        with torch.no_grad():
            t_tokens = self.teacher_backbone.forward_all_tokens(glob)
            t_cls = self.teacher_head(t_tokens[:, 0])                      # (2B, K)
            t_patch = self.teacher_patch_head(gather_tokens(t_tokens[:, prefix:], mask_idx))
            t_cls_probs = self.teacher_probs(t_cls, self.center, temp)
            t_patch_probs = self.teacher_probs(t_patch.flatten(0, 1), self.patch_center, temp)

        s_tokens = self.backbone.forward_all_tokens(glob, masks.mask, self.mask_token)
        s_cls_global = s_tokens[:, 0]
        student_out = [self.head(s_cls_global)]
        if len(crops) > 2:
            local = torch.cat(list(crops[2:]))
            student_out.append(self.head(self.backbone.forward_all_tokens(local)[:, 0]))
        student_out = torch.cat(student_out).chunk(len(crops))
        dino = cross_entropy_pairs(student_out, t_cls_probs.chunk(2), c.student_temp)
        s_patch = self.patch_head(gather_tokens(s_tokens[:, prefix:], mask_idx))
        ibot = ibot_patch_loss(s_patch, t_patch_probs.view_as(s_patch), c.student_temp)
        koleo = sum(koleo_loss(x) for x in s_cls_global.chunk(2))
        loss = c.dino_loss_weight * dino + c.ibot_loss_weight * ibot + c.koleo_loss_weight * koleo
        if c.centering == "centering":
            update_center(self.center, t_cls, c.center_momentum)
            update_center(self.patch_center, t_patch.flatten(0, 1), c.center_momentum)
        return StepOutput(loss, {"dino_loss": dino.detach(), "ibot_loss": ibot.detach(),
                                 "koleo_loss": koleo.detach(), "teacher_temp": temp.clone()})

    def on_before_optimizer_step(self, step: int) -> None:
        if self._epoch(step) < self.cfg.freeze_last_layer:
            for p in {*self.head.last_layer.parameters(), *self.patch_head.last_layer.parameters()}:
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        m = cosine_schedule(step, total_steps, self.cfg.momentum_teacher,
                             self.cfg.momentum_teacher_end)
        pairs = [(self.teacher_backbone, self.backbone), (self.teacher_head, self.head)]
        if self.cfg.separate_patch_head:
            pairs.append((self.teacher_patch_head, self.patch_head))
        for teacher, student in pairs:
            ema_update(teacher, student, m, copy_buffers=False)
        self.step_count = step + 1
        self.steps_done.fill_(step + 1)
        self._update_teacher_temp()

    def backbone_for_eval(self) -> nn.Module:
        return self.teacher_backbone
