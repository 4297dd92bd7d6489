"""Gradient clipping as the sources clip (``train.grad_clip``, ``train.grad_clip_mode``).

Each mode splits the trainable parameters into blocks and scales the gradients of each block by

    coef = min(1, clip / (||g_block|| + 1e-6))

``global``      one block: every parameter (``torch.nn.utils.clip_grad_norm_``; MAE, most others)
``per_param``   one block per parameter tensor (DINO's ``utils.clip_gradients``, which SelfPatch
                reuses)
``per_module``  one block per part of the method (DINOv2's ``train.py`` clips each student
                submodule, backbone and heads, with its own ``clip_grad_norm_``); the parts are
                ``Method.clip_groups()``

All on the device: one ``torch._foreach_norm`` over the gradients, the coefficients by tensor
ops, one ``torch._foreach_mul_``; nothing is read back to the host. Under FSDP
(``train.strategy=fsdp``) each rank holds a shard of every gradient (a ``DTensor``): the norms of
the local shards are squared, summed over the ranks in one all-reduce and rooted, and each rank
scales its own shards.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

CLIP_MODES = ("global", "per_param", "per_module")


def clip_gradients(blocks: Sequence[Sequence[torch.nn.Parameter]], max_norm: float) -> torch.Tensor:
    """Scale each block's gradients by ``min(1, max_norm / (||block|| + 1e-6))`` (nothing when
    ``max_norm <= 0``); returns the norm of all gradients before clipping (0-d, on the device)."""
    grads: List[List[torch.Tensor]] = [[p.grad for p in block if p.grad is not None]
                                       for block in blocks]
    grads = [g for g in grads if g]
    flat = [g for block in grads for g in block]
    sharded = isinstance(flat[0], DTensor)
    if sharded:
        group = flat[0].device_mesh.get_group()
        flat = [g.to_local() for g in flat]
    norms = torch.stack(torch._foreach_norm(flat)).float()
    if sharded:
        squares = norms.square()
        dist.all_reduce(squares, group=group)
        norms = squares.sqrt()
    total = torch.linalg.vector_norm(norms)
    if max_norm <= 0:
        return total
    sizes = [len(block) for block in grads]
    if len(sizes) == 1:
        block_norms = total.reshape(1)
    elif all(n == 1 for n in sizes):
        block_norms = norms
    else:
        block_norms = torch.stack([torch.linalg.vector_norm(part) for part in norms.split(sizes)])
    coefs = (max_norm / (block_norms + 1e-6)).clamp(max=1.0)
    per_grad = [c for c, n in zip(coefs.unbind(0), sizes) for _ in range(n)]
    torch._foreach_mul_(flat, per_grad)
    return total


def clip_blocks(mode: str, method: torch.nn.Module,
                params: List[torch.nn.Parameter]) -> List[List[torch.nn.Parameter]]:
    """The blocks of ``mode`` over the optimizer's ``params``."""
    if mode == "per_param":
        return [[p] for p in params]
    if mode == "per_module":
        return [list(block) for block in method.clip_groups().values()]
    return [params]
