"""Patch masks for masked-image methods, batched, as index tensors into the row-major patch grid.

- ``random_patch_mask``: MAE's random masking (He et al. 2022): every sample keeps a uniformly
  random subset of ``int(N * (1 - mask_ratio))`` patches.
- ``block_masks``: I-JEPA's multi-block masking (Assran et al. 2023, facebookresearch/ijepa
  ``MaskCollator``): ``num_targets`` target blocks of one random size and aspect for the whole
  batch (so they stack), and a context block (scale 0.85-1, square) from which every target patch
  is removed, so context and targets never overlap.

Both return small dataclasses that also unpack as the two index tensors of the contract
(``keep_idx, mask_idx = random_patch_mask(...)``; ``context_idx, targets = block_masks(...)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

from vissl_lite.errors import MaskError


def _rand(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


@dataclass
class PatchMask:
    """MAE's mask. ``keep_idx`` (B, K) and ``mask_idx`` (B, M) are each sorted ascending;
    ``ids_restore`` (B, N) puts ``cat([kept tokens, mask tokens], 1)`` back in grid order (MAE's
    decoder unshuffle); ``mask`` (B, N) is True on removed patches (where MAE's loss is taken)."""

    keep_idx: torch.Tensor
    mask_idx: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.keep_idx, self.mask_idx))


def random_patch_mask(batch: int, num_patches: int, mask_ratio: float, device=None,
                      generator: Optional[torch.Generator] = None) -> PatchMask:
    """Mask ``mask_ratio`` of ``num_patches`` patches at random, independently per sample."""
    if not 0.0 <= mask_ratio < 1.0:
        raise MaskError(f"mask_ratio={mask_ratio}: must lie in [0, 1) (MAE uses 0.75)")
    num_keep = int(num_patches * (1 - mask_ratio))
    if num_keep < 1:
        raise MaskError(f"mask_ratio={mask_ratio} keeps no patch of {num_patches}; lower it")
    shuffle = _rand((batch, num_patches), generator, device).argsort(dim=1)
    keep_idx = shuffle[:, :num_keep].sort(dim=1).values
    mask_idx = shuffle[:, num_keep:].sort(dim=1).values
    ids_restore = torch.cat([keep_idx, mask_idx], dim=1).argsort(dim=1)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=keep_idx.device)
    mask.scatter_(1, mask_idx, True)
    return PatchMask(keep_idx, mask_idx, ids_restore, mask)


@dataclass
class BlockMasks:
    """I-JEPA's masks: ``context_idx`` (B, Kc) sorted, ``target_idx`` a list of ``num_targets``
    tensors (B, h*w) in row-major order; ``target_size`` and ``context_size`` are the (h, w) of
    the blocks, ``num_fallback`` how many samples took the fallback context (see block_masks)."""

    context_idx: torch.Tensor
    target_idx: List[torch.Tensor]
    target_size: Tuple[int, int]
    context_size: Tuple[int, int]
    num_fallback: int = 0

    def __iter__(self):
        return iter((self.context_idx, self.target_idx))


def _check_range(name: str, value: Sequence[float], hi: float = math.inf) -> Tuple[float, float]:
    lo_v, hi_v = float(value[0]), float(value[1])
    if not 0 < lo_v <= hi_v <= hi:
        raise MaskError(f"{name}={tuple(value)}: expected (min, max) with 0 < min <= max <= {hi}")
    return lo_v, hi_v


def _block_size(grid: Tuple[int, int], scale: Tuple[float, float], aspect: Tuple[float, float],
                generator, device) -> Tuple[int, int]:
    """I-JEPA's ``_sample_block_size``: an area of ``scale`` of the grid and an aspect h/w, at
    most one row and column short of the grid. (I-JEPA draws scale and aspect with one shared
    uniform number; here they are independent, as the paper describes.)"""
    height, width = grid
    u = _rand((2,), generator, device).tolist()
    area = int(height * width * (scale[0] + (scale[1] - scale[0]) * u[0]))
    ratio = aspect[0] + (aspect[1] - aspect[0]) * u[1]
    h = min(max(int(round(math.sqrt(area * ratio))), 1), height - 1)
    w = min(max(int(round(math.sqrt(area / ratio))), 1), width - 1)
    return h, w


def _blocks(top: torch.Tensor, left: torch.Tensor, h: int, w: int, grid: Tuple[int, int]):
    """Boolean masks (..., N) of the blocks with the given top-left corners."""
    height, width = grid
    rows = torch.arange(height, device=top.device).view(*([1] * top.dim()), height, 1)
    cols = torch.arange(width, device=top.device).view(*([1] * top.dim()), 1, width)
    top, left = top[..., None, None], left[..., None, None]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return inside.flatten(-2)


def _corners(shape, grid, h, w, generator, device):
    u = _rand((*shape, 2), generator, device)
    top = (u[..., 0] * (grid[0] - h + 1)).long()
    left = (u[..., 1] * (grid[1] - w + 1)).long()
    return top, left


def block_masks(batch: int, grid: Union[int, Tuple[int, int]], num_targets: int = 4,
                target_scale: Tuple[float, float] = (0.15, 0.2),
                target_aspect: Tuple[float, float] = (0.75, 1.5),
                context_scale: Tuple[float, float] = (0.85, 1.0),
                context_aspect: Tuple[float, float] = (1.0, 1.0),
                min_keep: int = 10, max_tries: int = 20, device=None,
                generator: Optional[torch.Generator] = None) -> BlockMasks:
    """I-JEPA multi-block masks for a batch on a ``grid`` (gh, gw) of patches.

    One target size (h, w) and one context size are drawn for the whole batch; every sample draws
    its own block positions. A sample's context is its context block minus all its target
    patches; when fewer than ``min_keep`` patches remain, the context block is moved (up to
    ``max_tries`` times, as I-JEPA retries; targets leaving fewer than ``min_keep`` free patches
    are redrawn first), and if it still fails the context becomes every non-target patch (I-JEPA
    instead drops the non-overlap constraint; here context and targets stay disjoint). Contexts
    are cut to the smallest count in the batch so they stack; the patches dropped are chosen at
    random (I-JEPA keeps the first ones in raster order). ``min_keep`` counts context patches
    only; a target block always has h*w >= 1 patches. Raises ``MaskError`` when no placement
    leaves ``min_keep`` context patches.
    """
    grid = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if min(grid) < 2:
        raise MaskError(f"grid={grid}: block masking needs at least 2x2 patches")
    if num_targets < 1:
        raise MaskError(f"num_targets={num_targets}: need at least one target block")
    target_scale = _check_range("target_scale", target_scale, 1.0)
    context_scale = _check_range("context_scale", context_scale, 1.0)
    target_aspect = _check_range("target_aspect", target_aspect)
    context_aspect = _check_range("context_aspect", context_aspect)
    num_patches = grid[0] * grid[1]

    th, tw = _block_size(grid, target_scale, target_aspect, generator, device)
    ch, cw = _block_size(grid, context_scale, context_aspect, generator, device)
    t_top, t_left = _corners((batch, num_targets), grid, th, tw, generator, device)
    target_union = _blocks(t_top, t_left, th, tw, grid).any(dim=1)
    for _ in range(max_tries):
        crowded = (~target_union).sum(dim=1) < min_keep
        if not bool(crowded.any()):
            break
        top, left = _corners((batch, num_targets), grid, th, tw, generator, device)
        t_top = torch.where(crowded[:, None], top, t_top)
        t_left = torch.where(crowded[:, None], left, t_left)
        target_union = _blocks(t_top, t_left, th, tw, grid).any(dim=1)
    if int((~target_union).sum(dim=1).min()) < min_keep:
        raise MaskError(f"targets of {th}x{tw} patches x {num_targets} leave fewer than "
                        f"min_keep={min_keep} context patches on a {grid[0]}x{grid[1]} grid; "
                        f"lower target_scale, num_targets or min_keep")

    c_top, c_left = _corners((batch,), grid, ch, cw, generator, device)
    context = _blocks(c_top, c_left, ch, cw, grid) & ~target_union
    for _ in range(max_tries):
        short = context.sum(dim=1) < min_keep
        if not bool(short.any()):
            break
        top, left = _corners((batch,), grid, ch, cw, generator, device)
        moved = _blocks(top, left, ch, cw, grid) & ~target_union
        context = torch.where(short[:, None], moved, context)
    short = context.sum(dim=1) < min_keep
    num_fallback = int(short.sum())
    context = torch.where(short[:, None], ~target_union, context)

    num_context = int(context.sum(dim=1).min())
    scores = torch.where(context, _rand((batch, num_patches), generator, device), -1.0)
    context_idx = scores.topk(num_context, dim=1).indices.sort(dim=1).values

    dy = torch.arange(th, device=t_top.device).view(1, 1, th, 1)
    dx = torch.arange(tw, device=t_top.device).view(1, 1, 1, tw)
    targets = ((t_top[..., None, None] + dy) * grid[1] + t_left[..., None, None] + dx).flatten(2)
    return BlockMasks(context_idx, list(targets.unbind(1)), (th, tw), (ch, cw), num_fallback)
