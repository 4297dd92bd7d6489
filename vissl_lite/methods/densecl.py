"""DenseCL: dense contrastive learning (Wang, Zhang, Shen, Kong & Li, CVPR 2021, arXiv:2011.09157;
WXinlong/DenseCL ``openselfsup/models/densecl.py`` and ``necks.py`` ``DenseCLNeck``).

MoCo v2 plus a contrastive loss between the cells of the backbone's last feature map. A query
encoder (ResNet f, global head g: Linear-ReLU-Linear on the pooled map, dense head d: 1x1 conv-
ReLU-1x1 conv on every cell) and a key encoder (f', g', d': an EMA of f, g, d, no gradient) see
views x_1 (queries) and x_2 (keys); Q and Q' are queues of past keys. With n() the L2 normalisation
and s, s' = 1..S the cells of the two maps:

    q   = n(g(pool f(x_1)))                     k   = n(g'(pool f'(x_2)))            (B, D)
    r_s = n(d(f(x_1))_s)                        t_s = n(d'(f'(x_2))_s)
    c(s) = argmax_s' n(f(x_1)_s) . n(f'(x_2)_s')       correspondence by backbone-feature cosine
    L_g = mean_b -log exp(q.k / T) / (exp(q.k / T) + sum_{u in Q} exp(q.u / T))
    L_d = mean_{b,s} -log exp(r_s.t_c(s) / T) / (exp(r_s.t_c(s) / T) + sum_{u in Q'} exp(r_s.u / T))
    loss = (1 - lambda) L_g + lambda L_d                        lambda = 0.5, T = 0.2
    Q <- push k;   Q' <- push n(pool d'(f'(x_2)))               keys of every rank, FIFO
    (f', g', d') <- m (f', g', d') + (1 - m) (f, g, d)           m = 0.999

As the official code: one direction (x_1 queries, x_2 keys), the dense negatives are pooled dense
keys of past images, the key encoder normalises with its own batch statistics and its EMA moves
parameters only, the global head's Linear layers start from Kaiming-normal weights and zero biases.
The queues take the keys gathered from every rank (``concat_all_gather``), so they are equal on
every rank; they are declared per-rank buffers all the same (``NNMemoryBank``) so that DDP does not
broadcast 2 x 32 MB every step, and each rank saves and restores its own copy. A push that would
cross the queue's end is cut there (the official code asserts that the queue is a multiple of the
global batch; with such sizes the two agree). One deviation: the official key encoder runs on a
batch shuffled across GPUs (shuffle BN) so that BatchNorm cannot leak which key goes with which
query; here the ImageNet preset synchronises BatchNorm across ranks instead (``train.sync_bn``,
MoCo v3's answer to the same leak); on one process the two are the same.

The correspondence (a batched matrix product and an argmax), the gathers and the queue pushes
(``index_copy_`` at positions computed on the device) read nothing back: one graph per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from vissl_lite.augment.spec import ViewSpec
from vissl_lite.distributed import gather_no_grad
from vissl_lite.errors import ConfigError
from vissl_lite.methods.base import Method, StepOutput
from vissl_lite.methods.byol import frozen_copy
from vissl_lite.methods.ema import ema_update
from vissl_lite.methods.nnclr import NNMemoryBank
from vissl_lite.registry import METHODS
from vissl_lite.shapes import RunShape


@dataclass
class DenseCLConfig:
    name: str = "densecl"
    temperature: float = 0.2          # ContrastiveHead(temperature=0.2)
    queue_size: int = 65536           # queue_len, one queue per branch
    loss_lambda: float = 0.5          # weight of the dense loss
    momentum: float = 0.999           # key encoder EMA, constant
    hidden_dim: int = 2048            # DenseCLNeck hid_channels
    output_dim: int = 128             # feat_dim / out_channels

    def __post_init__(self):
        if self.temperature <= 0 or self.queue_size < 1:
            raise ConfigError(f"method.temperature={self.temperature} and method.queue_size="
                              f"{self.queue_size} must be > 0 and >= 1 (DenseCL: 0.2, 65536)")
        if not 0.0 <= self.loss_lambda <= 1.0 or not 0.0 <= self.momentum <= 1.0:
            raise ConfigError(f"method.loss_lambda={self.loss_lambda} and method.momentum="
                              f"{self.momentum} must lie in [0, 1] (DenseCL: 0.5, 0.999)")


class DenseCLNeck(nn.Module):
    """The official neck: ``(B, C, h, w) -> (global (B, D), dense (B, D, h w), pooled dense (B, D))``,
    all before normalisation."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))
        self.dense = nn.Sequential(nn.Conv2d(in_dim, hidden_dim, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(hidden_dim, out_dim, 1))
        for layer in self.mlp:                          # init_weights(init_linear='kaiming')
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, fmap: torch.Tensor):
        dense = self.dense(fmap).flatten(2)
        return self.mlp(fmap.mean(dim=(2, 3))), dense, dense.mean(dim=2)


def info_nce_with_queue(query: torch.Tensor, positive: torch.Tensor, queue: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """MoCo's loss: each unit query (N, D) against its unit positive (N, D) and the queue (K, D)."""
    l_pos = (query * positive).sum(dim=1, keepdim=True)
    logits = torch.cat([l_pos, query @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros_like(l_pos[:, 0], dtype=torch.long))


def dense_correspondence(query_map: torch.Tensor, key_map: torch.Tensor) -> torch.Tensor:
    """(B, C, S) and (B, C, S') backbone maps -> (B, S): the key cell most cosine-similar to each
    query cell."""
    sim = F.normalize(query_map, dim=1).transpose(1, 2) @ F.normalize(key_map, dim=1)
    return sim.argmax(dim=2)


def cells(x: torch.Tensor) -> torch.Tensor:
    """(B, D, S) -> (B S, D): one row per feature-map cell."""
    return x.transpose(1, 2).flatten(0, 1)


def densecl_loss(q: torch.Tensor, k: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                 match: torch.Tensor, queue: torch.Tensor, dense_queue: torch.Tensor,
                 temperature: float = 0.2, loss_lambda: float = 0.5):
    """``(loss, global, dense)`` from the normalised global query and key (B, D), dense queries
    and keys (B, D, S) and the correspondence ``match`` (B, S) (see the module docstring)."""
    single = info_nce_with_queue(q, k, queue, temperature)
    matched = t.gather(2, match[:, None, :].expand(-1, t.shape[1], -1))
    dense = info_nce_with_queue(cells(r), cells(matched), dense_queue, temperature)
    return (1 - loss_lambda) * single + loss_lambda * dense, single, dense


@METHODS.register("densecl", help="DenseCL: MoCo v2 + contrast between matched feature-map cells (Wang et al. 2021)")
class DenseCL(Method):
    """ResNet + global and dense heads, EMA key encoder, one queue per branch."""

    Config = DenseCLConfig
    views = ViewSpec("simclr", 2, 0)  # MoCo v2's augmentation (the preset sets its values)
    min_batch_size = 2
    supported_backbones = ("resnet",)
    tiny_config = {"hidden_dim": 32, "output_dim": 16, "queue_size": 64}

    @classmethod
    def check_shape(cls, cfg: DenseCLConfig, shape: RunShape) -> None:
        """Each step pushes the keys of every rank, ``train.batch_size / train.accumulate``."""
        if cfg.queue_size < shape.per_loss:
            raise ConfigError(f"method.queue_size={cfg.queue_size} is smaller than the keys pushed "
                              f"per step ({shape.per_loss}: the global batch per loss); raise "
                              f"method.queue_size (DenseCL: 65536)")

    def __init__(self, backbone: nn.Module, cfg: Any = None):
        super().__init__(backbone, cfg)
        c = self.cfg
        self.neck = DenseCLNeck(backbone.num_features, c.hidden_dim, c.output_dim)
        self.key_backbone = frozen_copy(backbone)
        self.key_neck = frozen_copy(self.neck)
        self.queue = NNMemoryBank(c.queue_size, c.output_dim)
        self.dense_queue = NNMemoryBank(c.queue_size, c.output_dim)

    def training_step(self, batch: Dict[str, Any]) -> StepOutput:
        x_q, x_k = batch["views"][:2]
        c = self.cfg
        q_map = self.backbone.forward_features(x_q)
        q, r, _ = self.neck(q_map)
        with torch.no_grad():
            k_map = self.key_backbone.forward_features(x_k)
            k, t, k_pooled = self.key_neck(k_map)
            k, t, k_pooled = F.normalize(k, dim=1), F.normalize(t, dim=1), F.normalize(k_pooled, dim=1)
            match = dense_correspondence(q_map.detach().flatten(2), k_map.flatten(2))
        q, r = F.normalize(q.float(), dim=1), F.normalize(r.float(), dim=1)
        # the queues as they were before this step's push (which changes them in place)
        queue, dense_queue = self.queue.bank.clone(), self.dense_queue.bank.clone()
        loss, single, dense = densecl_loss(q, k.float(), r, t.float(), match, queue, dense_queue,
                                           c.temperature, c.loss_lambda)
        self.queue.push(gather_no_grad(k))
        self.dense_queue.push(gather_no_grad(k_pooled))
        with torch.no_grad():
            pos = (q * k).sum(dim=1).mean()
        return StepOutput(loss, {"loss_single": single.detach(), "loss_dense": dense.detach(),
                                 "pos_sim": pos}, embedding=q_map.detach().mean(dim=(2, 3)))

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update(self.key_backbone, self.backbone, self.cfg.momentum, copy_buffers=False)
        ema_update(self.key_neck, self.neck, self.cfg.momentum, copy_buffers=False)
