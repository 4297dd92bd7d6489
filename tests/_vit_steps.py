"""The real-CIFAR check shared by the ViT method tests (data2vec 2.0, MSN, AIM): 30 AdamW steps
on crop-flip views of real images, the loss of the first and last 5 steps, and the RankMe of the
evaluation encoder's centred features on 64 of the images before and after (a collapsed
encoder scores ~1)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from _helpers import real_cifar_losses
from vissl_lite.eval.rankme import rankme


class Steps(NamedTuple):
    first: float
    last: float
    initial_rank: float
    rank: float


def thirty_steps(method, images: torch.Tensor, name: str, **kwargs) -> Steps:
    """Train ``method`` for 30 steps (``real_cifar_losses`` with ``kwargs``); print and return
    the losses and ranks."""
    def held_out_rank():
        with torch.no_grad():
            feats = method.eval().backbone_for_eval()(images[:64] - 0.5)
        return rankme(feats - feats.mean(0))

    initial = held_out_rank()
    losses = real_cifar_losses(method.train(), images, steps=30, lr=1e-3, **kwargs)
    out = Steps(sum(losses[:5]) / 5, sum(losses[-5:]) / 5, initial, held_out_rank())
    print(f"{name}: loss {out.first:.4f} -> {out.last:.4f}, RankMe {out.initial_rank:.1f} -> "
          f"{out.rank:.1f}")
    return out
