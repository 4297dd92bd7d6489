"""Exponential moving average of weights: the teacher / target network of BYOL, DINO and I-JEPA.

    target <- m * target + (1 - m) * online        (Grill et al. 2020, eq. 1)

with ``m`` usually following ``cosine_schedule(step, total, m_base, 1.0)``. Parameters are
averaged with one fused ``torch._foreach_lerp_`` over all of them (no Python loop of kernels;
``m`` may be a Python float, so nothing is built on or read from the device). Buffers (batch-norm
statistics) are copied from the online network by default (I-JEPA's target encoder has no forward
of its own in training mode); ``copy_buffers=False`` leaves them to the target's own forward passes,
as facebookresearch/dino does for its teacher.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float,
               copy_buffers: bool = True) -> None:
    t_params = list(target.parameters())
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("ema_update: target and online networks have different parameters")
    torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
    if copy_buffers:
        t_bufs, o_bufs = list(target.buffers()), list(online.buffers())
        if t_bufs:
            torch._foreach_copy_(t_bufs, o_bufs)


def teacher_copy(module: nn.Module) -> nn.Module:
    """A deep copy for a teacher / target network: no gradients, and no stochastic depth or dropout.

    The teacher stays in the student's train/eval mode (a ResNet teacher normalises with its own
    batch statistics, as facebookresearch/dino's does), but a copied ViT would also copy the
    student's ``drop_path_rate``, which the official teachers are built without (DINO, DINOv2,
    iBOT: ``drop_path_rate`` is a student-only argument), so the copy's DropPath and Dropout
    layers are set to drop nothing.
    """
    target = copy.deepcopy(module).requires_grad_(False)
    for layer in target.modules():
        if isinstance(layer, nn.Dropout):
            layer.p = 0.0
        elif hasattr(layer, "drop_prob"):  # timm.layers.DropPath
            layer.drop_prob = 0.0
    return target
