"""Activation checkpointing (``train.activation_checkpointing``): recompute instead of store.

A checkpointed block keeps only its input during the forward pass and runs its forward again in
the backward pass to get the activations it needs (Chen et al. 2016, "Training Deep Nets with
Sublinear Memory Cost"), through ``torch.utils.checkpoint`` with ``use_reentrant=False`` (the
variant ``torch.compile`` traces into one graph, and that preserves the RNG state, so dropout and
drop-path draw the same masks twice). The units are the blocks of the method's encoders and
predictors, wherever the method calls them from:

- transformer blocks (timm's ``Block``: ViT backbones, the MAE decoder, the I-JEPA predictor);
- residual blocks (torchvision's ``BasicBlock`` / ``Bottleneck``: the blocks of each ResNet stage).

Modes:

``none``       nothing is recomputed.
``blocks``     every unit: activation memory drops to about one block's activations plus each
               block's input; the backward pass costs about one extra forward.
``selective``  every other unit (the 1st, 3rd, ...), as torchtitan's layer-wise selective
               checkpointing with frequency 2: about half the saving for half the extra compute.

Only blocks with trainable parameters count (a frozen EMA teacher runs without gradient and has
nothing to recompute). Parameter names do not change: the block's class is swapped for a subclass
whose ``forward`` runs the original one under ``checkpoint`` (as FSDP2's ``fully_shard`` swaps in
its own subclass), so the module stays where it is and ``state_dict``, ``copy.deepcopy`` and FSDP
wrapping are unaffected.
"""
from __future__ import annotations

from typing import Dict, List

from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import BasicBlock, Bottleneck

MODES = ("none", "blocks", "selective")
UNITS = (Block, BasicBlock, Bottleneck)


def checkpoint_units(module: nn.Module) -> List[nn.Module]:
    """The transformer and residual blocks of ``module`` with trainable parameters, in order."""
    return [m for m in module.modules()
            if isinstance(m, UNITS) and any(p.requires_grad for p in m.parameters())]


def apply_activation_checkpointing(module: nn.Module, mode: str) -> int:
    """Checkpoint the units ``mode`` selects, in place; returns how many were checkpointed."""
    units = checkpoint_units(module)
    if mode == "none":
        units = []
    elif mode == "selective":
        units = units[::2]
    for unit in units:
        if not isinstance(unit, _Checkpointed):
            unit.__class__ = _checkpointed_class(type(unit))
    return len(units)


class _Checkpointed(nn.Module):
    """Mixed in before a block's own class: its forward, recomputed in the backward pass."""

    def forward(self, *args, **kwargs):
        return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)


_CLASSES: Dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls), {})
    return _CLASSES[cls]
