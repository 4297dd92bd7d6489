"""SelfPatch: patch-level self-supervision for ViTs (Yun et al., CVPR 2022, arXiv:2206.07990).

DINO (Caron et al. 2021, arXiv:2104.14294; see ``dino.py``) plus a loss that treats each patch's
most similar spatial neighbours as its positives. The ViT's patch tokens ``x_1..x_N`` of a crop go
to an aggregation module ``A`` (2 class-attention blocks, CaiT, Touvron et al. 2021,
arXiv:2103.17239: a learned query token attends to itself and a set of tokens, then a LayerNorm),
shared by student and teacher (the teacher's copy is an EMA, like its backbone and heads):

    image-level   z(x)   = A(x_1..x_N)                        (the image representation)
    neighbours    N(i)   = the 8 patches around i in the grid (fewer at the border)
    positives     P_k(i) = top-k over j in N(i) of cos(x_i^t, x_j^t)   teacher tokens, no gradient
    teacher patch y_i^t  = A({x_j^t : j in P_k(i)})           aggregated positives
    student patch y_i^s  = LN_A(x_i^s)                         the patch itself (A's final norm)
    dino  = mean over pairs (k, v != k) of mean_b -sum softmax((g_t(z_k^t) - C) / tau_t)
                                                   * log_softmax(g_s(z_v^s) / tau_s)
    patch = mean over crops v of mean over (b, i) of -sum softmax((h_t(y_i^t) - C') / tau_t)
                                                   * log_softmax(h_s(y_i^s) / tau_s)
    loss  = dino + lambda * patch                                          (lambda = 0.1)

``g`` is DINO's head on image representations (K prototypes), ``h`` a second DINO head on patch
representations (K' prototypes) with its own centre ``C'``; ``k`` in dino runs over the 2 global
crops, ``v`` over all crops; the patch loss covers every crop, local ones included, so the teacher
also encodes the local crops. Both centres are EMAs of the teacher outputs over every crop the
teacher sees; the EMA momentum (cosine to 1), the teacher temperature schedule and the frozen
last layers (both heads) in the first epochs are DINO's.

As alinlab/SelfPatch (``main_selfpatch.py``, ``SelfPatchHead``): only the teacher's positives are
aggregated, the student's patch enters its head alone; the image representation comes from ``A``
over all patches, not from a CLS token (so ``lambda = 0`` is DINO with a class-attention pooling
head, not our ``dino`` method with its CLS token; a CLS token of the backbone is ignored). The
tokens ``x`` are timm's final-normed ones (the official ViT has no final norm; ``A``'s norm acts as
one). One difference: the official neighbour table
wraps around the grid edges (a border patch's "neighbours" include the opposite border); here a
border patch has only its in-grid neighbours (a fixed-shape validity mask; where fewer than k are
valid, the invalid picks are masked out of A's attention). The neighbour table of the backbone's
grid is a buffer built once; other grids (local crops) get theirs from the same device-side
arithmetic, so shapes stay fixed and no host data enters the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import StepOutput
from vissl_lite.methods.dino import DINO, DINOConfig, update_center
from vissl_lite.methods.dinov2 import cross_entropy_pairs, ibot_patch_loss
from vissl_lite.methods.ema import ema_update, teacher_copy
from vissl_lite.methods.heads import DINOHead
from vissl_lite.methods.vit_blocks import gather_tokens
from vissl_lite.registry import METHODS
from vissl_lite.schedules import cosine_schedule


@dataclass
class SelfPatchConfig(DINOConfig):
    name: str = "selfpatch"
    num_local_crops: int = 8          # alinlab/SelfPatch README: --local_crops_number 8
    teacher_temp: float = 0.04        # official defaults: 0.04, constant (no warmup)
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    patch_out_dim: int = 4096         # --out_dim_selfpatch 4096
    num_positives: int = 4            # k: --k_num 4 (paper Sec. 4.3: k = 4 of 8 neighbours)
    patch_loss_weight: float = 0.1    # lambda: 0.1 in main_selfpatch.py's DINOLoss
    aggregator_depth: int = 2         # class-attention blocks in A (SelfPatchHead: 2)

    def __post_init__(self):
        if not 1 <= self.num_positives <= 8:
            raise ConfigError(f"method.num_positives={self.num_positives} must lie in 1..8 (the "
                              f"8 neighbours of a patch; SelfPatch: 4)")
        if self.patch_loss_weight < 0 or self.aggregator_depth < 1:
            raise ConfigError("method.patch_loss_weight must be >= 0 and method.aggregator_depth "
                              ">= 1 (SelfPatch: 0.1 and 2)")


def neighbour_table(height: int, width: int,
                    device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 8-neighbourhood of every patch of a row-major ``height x width`` grid: indices (N, 8)
    in the order (-1,-1), (-1,0), (-1,1), (0,-1), (0,1), (1,-1), (1,0), (1,1) (row, column
    offsets) and a validity mask (N, 8); outside-grid slots are False and hold the patch's own
    index. Built from ``arange`` on ``device`` (no host data)."""
    n = height * width
    row = torch.arange(n, device=device) // width
    col = torch.arange(n, device=device) % width
    offset = torch.arange(-1, 2, device=device)
    d_row = offset.view(3, 1).expand(3, 3).reshape(9)
    d_col = offset.view(1, 3).expand(3, 3).reshape(9)
    d_row, d_col = torch.cat([d_row[:4], d_row[5:]]), torch.cat([d_col[:4], d_col[5:]])
    n_row, n_col = row[:, None] + d_row, col[:, None] + d_col
    valid = (n_row >= 0) & (n_row < height) & (n_col >= 0) & (n_col < width)
    index = torch.where(valid, n_row * width + n_col, (row * width + col)[:, None])
    return index, valid


@torch.no_grad()
def select_positives(tokens: torch.Tensor, index: torch.Tensor, valid: torch.Tensor,
                     k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each patch of ``tokens`` (B, N, D), its ``k`` neighbours (from ``neighbour_table``)
    of highest cosine similarity: patch indices (B, N, k) and their validity (B, N, k)."""
    x = F.normalize(tokens.float(), dim=-1)
    b = x.shape[0]
    sim = torch.gather(x @ x.transpose(1, 2), 2, index.expand(b, -1, -1))        # (B, N, 8)
    slots = sim.masked_fill(~valid, float("-inf")).topk(k, dim=-1).indices
    return (torch.gather(index.expand(b, -1, -1), 2, slots),
            torch.gather(valid.expand(b, -1, -1), 2, slots))


def selfpatch_patch_loss(student_out: List[torch.Tensor], teacher_probs: List[torch.Tensor],
                         student_temp: float) -> torch.Tensor:
    """Mean over crops of the per-patch cross-entropy, one (B, N_v, K') tensor per crop each:
    teacher targets ``softmax((h_t - C') / tau_t)`` against ``log_softmax(h_s / tau_s)``."""
    return sum(ibot_patch_loss(s, t, student_temp)
               for s, t in zip(student_out, teacher_probs)) / len(student_out)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the distributions along the last dimension."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()


class ClassAttentionBlock(nn.Module):
    """CaiT's class-attention block without LayerScale (as SelfPatch's ``LayerScale_Block_CA``):
    a query token attends to itself and the tokens ``x`` (keys masked where ``mask`` is False);
    only the query is updated, by attention then MLP, pre-norm residuals."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, query: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        u = self.norm1(torch.cat([query, x], dim=1))
        q = self.q(u[:, :1]).view(b, 1, h, d // h).transpose(1, 2)
        k, v = self.kv(u).view(b, n + 1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        if mask is not None:                          # the query itself is always attended
            mask = torch.cat([mask.new_ones(b, 1), mask], dim=1).view(b, 1, 1, n + 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        query = query + self.proj(out.transpose(1, 2).reshape(b, 1, d))
        return query + self.mlp(self.norm2(query))


class PatchAggregator(nn.Module):
    """``A``: a learned query through ``depth`` class-attention blocks over a token set, then a
    LayerNorm; (B, L, D) tokens (and an optional (B, L) key mask) -> (B, D)."""

    def __init__(self, dim: int, num_heads: int, depth: int = 2):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(ClassAttentionBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.query, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        query = self.query.expand(x.shape[0], -1, -1)
        for block in self.blocks:
            query = block(x, query, mask)
        return self.norm(query[:, 0])


@METHODS.register("selfpatch", help="SelfPatch: DINO + patch loss against aggregated top-k neighbour patches (Yun et al. 2022)")
class SelfPatch(DINO):
    """SelfPatch (arXiv:2206.07990); see the module docstring. DINO's teacher, centring,
    schedules and step counter are inherited."""

    Config = SelfPatchConfig
    supported_backbones = ("vit",)
    tiny_config = {**DINO.tiny_config, "patch_out_dim": 32}

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        dim = backbone.embed_dim
        self.aggregator = PatchAggregator(dim, backbone.blocks[0].attn.num_heads, c.aggregator_depth)
        self.patch_head = DINOHead(dim, c.patch_out_dim, c.hidden_dim, c.bottleneck_dim,
                                   c.head_layers, c.use_bn_in_head, c.norm_last_layer)
        self.teacher_aggregator = teacher_copy(self.aggregator)
        self.teacher_patch_head = teacher_copy(self.patch_head)
        self.register_buffer("patch_center", torch.zeros(1, c.patch_out_dim))
        index, valid = neighbour_table(*backbone.grid_size)
        self.register_buffer("neighbour_index", index, persistent=False)
        self.register_buffer("neighbour_valid", valid, persistent=False)

    def train(self, mode: bool = True) -> "SelfPatch":
        super().train(mode)
        self.teacher_backbone.eval()  # never trained (teacher_copy already turned its drop-path off)
        return self

    def _neighbours(self, grid: Tuple[int, int], device) -> Tuple[torch.Tensor, torch.Tensor]:
        if grid == tuple(self.backbone.grid_size):
            return self.neighbour_index, self.neighbour_valid
        return neighbour_table(*grid, device=device)

    def _teacher(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher image logits (B, K), aggregated-positive patch logits (B, N, K') and its patch
        tokens (B, N, D)."""
        patches = self.teacher_backbone.forward_all_tokens(x)[:, self.backbone.num_prefix_tokens:]
        b, n, d = patches.shape
        p = self.backbone.patch_size
        index, valid = self._neighbours((x.shape[-2] // p, x.shape[-1] // p), x.device)
        pos_idx, pos_valid = select_positives(patches, index, valid, self.cfg.num_positives)
        positives = gather_tokens(patches, pos_idx.flatten(1)).view(b * n, -1, d)
        pooled = self.teacher_aggregator(positives, pos_valid.view(b * n, -1)).view(b, n, d)
        return (self.teacher_head(self.teacher_aggregator(patches)),
                self.teacher_patch_head(pooled), patches)

    def _student(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Student image logits (B, K) and per-patch logits (B, N, K')."""
        patches = self.backbone.forward_all_tokens(x)[:, self.backbone.num_prefix_tokens:]
        return self.head(self.aggregator(patches)), self.patch_head(self.aggregator.norm(patches))

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        crops, temp = self._crops_and_temperature(batch)
        c = self.cfg
        groups = [torch.cat(list(crops[:2]))] + ([torch.cat(list(crops[2:]))] if len(crops) > 2 else [])
        with torch.no_grad():
            teacher = [self._teacher(x) for x in groups]
        student = [self._student(x) for x in groups]
        n_crops = [2, len(crops) - 2]
        t_image = torch.cat([t for t, _, _ in teacher])
        t_patch = [p for (_, t, _), m in zip(teacher, n_crops) for p in t.chunk(m)]
        with torch.no_grad():
            probs = F.softmax((t_image[: groups[0].shape[0]].float() - self.center) / temp, dim=-1)
            patch_probs = [F.softmax((t.float() - self.patch_center) / temp, dim=-1) for t in t_patch]
        s_image = torch.cat([s for s, _ in student]).chunk(len(crops))
        dino = cross_entropy_pairs(s_image, probs.chunk(2), c.student_temp)
        s_patch = [p for (_, s), m in zip(student, n_crops) for p in s.chunk(m)]
        patch = selfpatch_patch_loss(s_patch, patch_probs, c.student_temp)
        update_center(self.center, t_image, c.center_momentum)
        update_center(self.patch_center, torch.cat([t.flatten(0, 1) for _, t, _ in teacher]),
                      c.center_momentum)
        metrics = {"dino_loss": dino.detach(), "patch_loss": patch.detach(),
                   "teacher_entropy": entropy(probs),
                   "patch_teacher_entropy": sum(map(entropy, patch_probs)) / len(patch_probs),
                   "teacher_temp": temp.clone()}
        # the online linear probe's features: the teacher's mean patch token of the first view
        return StepOutput(dino + c.patch_loss_weight * patch, metrics,
                          embedding=teacher[0][2][: crops[0].shape[0]].mean(dim=1))

    def on_before_optimizer_step(self, step: int) -> None:
        super().on_before_optimizer_step(step)
        if self._epoch(step) < self.cfg.freeze_last_layer:
            for p in self.patch_head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        m = cosine_schedule(step, total_steps, self.cfg.momentum_teacher, self.cfg.momentum_teacher_end)
        ema_update(self.teacher_aggregator, self.aggregator, m, copy_buffers=False)
        ema_update(self.teacher_patch_head, self.patch_head, m, copy_buffers=False)
        super().on_step_end(step, total_steps)
