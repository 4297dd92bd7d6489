"""``train.strategy``: replicate the method on every rank (DDP) or shard it (FSDP2).

``ddp``   every rank holds the whole model, its gradients and the optimizer state
          (``components._wrap`` puts the method in ``DistributedDataParallel``).
``fsdp``  PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``, as torchtitan): every
          parameter is a ``DTensor`` split along its first dimension over the ranks; a rank keeps
          1/N of the parameters, gradients and optimizer state, and all-gathers a unit's
          parameters just before the unit runs (reduce-scattering its gradients after backward).
``auto``  ``fsdp`` on several ranks when the method has more than ``AUTO_FSDP_MIN_PARAMS``
          trainable parameters (ViT-L and larger), else ``ddp``.

Units, sharded bottom-up: every transformer block (timm ``Block``), every ResNet stage
(``layer1`` .. ``layer4``) and the method itself at the root, which holds everything else (patch
embedding, stem, heads, norms: small next to the blocks). The encoder is no unit of its own: the
methods call into it by other entries than ``forward`` (``forward_tokens``,
``patch_embed_with_pos``, its ``blocks`` one by one), which all run inside the root's forward;
code that runs the encoder outside a training step (the online monitor) does so in
``gathered(method)``, which all-gathers the root's parameters for the while. A
frozen EMA teacher is a copy of the student, so its units are sharded the same way: its DTensors
line up with the student's shard for shard and the EMA update (``methods.ema.ema_update``) is a
local ``lerp`` on each rank, without communication. With ``train.precision=bf16`` the
``MixedPrecisionPolicy`` all-gathers bf16 parameters for compute and reduces gradients in fp32.

On one process nothing is sharded (there is nothing to shard over); the checkpoints of an
``fsdp`` run are sharded ones (``engine/dcp.py``) on any number of ranks, so a run can move
between 1 and N ranks.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from vissl_lite.errors import ConfigError

STRATEGIES = ("ddp", "fsdp", "auto")
AUTO_FSDP_MIN_PARAMS = 300_000_000
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def trainable_params(method: nn.Module) -> int:
    return sum(p.numel() for p in method.parameters() if p.requires_grad)


def resolve_strategy(strategy: str, method: nn.Module, world: int) -> str:
    """``ddp`` or ``fsdp`` for this method on ``world`` ranks; raises when FSDP cannot run it."""
    if strategy == "auto":
        big = world > 1 and trainable_params(method) > AUTO_FSDP_MIN_PARAMS
        strategy = "fsdp" if big else "ddp"
    if strategy == "fsdp":
        why = getattr(type(method), "fsdp_unsupported", "")
        if why:
            raise ConfigError(f"method {type(method).__name__} cannot train under "
                              f"train.strategy=fsdp: {why}; use train.strategy=ddp")
    return strategy


def shard_units(method: nn.Module) -> List[nn.Module]:
    """The modules to ``fully_shard``, children before parents (the root last)."""
    units: List[nn.Module] = []
    for module in method.modules():
        if isinstance(module, Block):
            units.append(module)
        if getattr(module, "family", None) == "resnet":
            units.extend(getattr(module, name) for name in RESNET_STAGES
                         if isinstance(getattr(module, name, None), nn.Module))
    units = [u for u in units if u is not method and any(True for _ in u.parameters())]
    depth = {id(m): 0 for m in method.modules()}
    for name, module in method.named_modules():
        depth[id(module)] = name.count(".") + 1 if name else 0
    return sorted(units, key=lambda m: -depth[id(m)]) + [method]


@contextlib.contextmanager
def gathered(method: nn.Module) -> Iterator[None]:
    """The root's parameters whole inside the block (for a forward outside the training step);
    nothing to do for an unsharded method. Collective: every rank enters it."""
    if not isinstance(method, FSDPModule):
        yield
        return
    method.unshard()
    try:
        yield
    finally:
        method.reshard()


def shard_method(method: nn.Module, device: torch.device, world: int, precision: str) -> int:
    """``fully_shard`` the method's units in place over all ranks; returns the number of units."""
    mesh = init_device_mesh(device.type, (world,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if precision == "bf16" else MixedPrecisionPolicy())
    units = shard_units(method)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    return len(units)
