"""Patch masks for masked-image methods, batched, as index tensors into the row-major patch grid.

- ``random_patch_mask``: MAE's random masking (He et al. 2022): every sample keeps a uniformly
  random subset of ``int(N * (1 - mask_ratio))`` patches.
- ``block_masks``: I-JEPA's multi-block masking (Assran et al. 2023, facebookresearch/ijepa
  ``MaskCollator``): ``num_targets`` target blocks of one random size and aspect for the whole
  batch (so they stack), and a context block (scale 0.85-1, square) from which every target patch
  is removed, so context and targets never overlap. ``BlockMaskSampler`` holds one configuration
  with context and target counts fixed when it is built (I-JEPA's per-batch minimum depends on
  the data; see the class for what is kept), so masks have the same shapes at every step.

Both run on the device without reading any value back to the host (no sync in a training step).

Both return small dataclasses that also unpack as the two index tensors of the contract
(``keep_idx, mask_idx = random_patch_mask(...)``; ``context_idx, targets = block_masks(...)``).
"""
from __future__ import annotations

import functools
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
    return patch_mask_from_order(_rand((batch, num_patches), generator, device).argsort(dim=1),
                                 num_keep)


def patch_mask_from_order(order: torch.Tensor, num_keep: int) -> PatchMask:
    """The ``PatchMask`` that keeps the first ``num_keep`` patches of each row of ``order``
    (B, N), a permutation of the patch indices, and masks the rest."""
    keep_idx = order[:, :num_keep].sort(dim=1).values
    mask_idx = order[:, num_keep:].sort(dim=1).values
    ids_restore = torch.cat([keep_idx, mask_idx], dim=1).argsort(dim=1)
    mask = torch.zeros(order.shape, dtype=torch.bool, device=keep_idx.device)
    mask.scatter_(1, mask_idx, True)
    return PatchMask(keep_idx, mask_idx, ids_restore, mask)


@dataclass
class BlockMasks:
    """I-JEPA's masks: ``context_idx`` (B, Kc) sorted, ``target_idx`` a list of ``num_targets``
    tensors (B, Kt) sorted, each the patches kept of one target block; ``target_size`` and
    ``context_size`` are the (h, w) of this batch's blocks as 0-d device tensors,
    ``num_fallback`` (0-d tensor) how many samples took the fallback context (see
    ``BlockMaskSampler``). Kc and Kt are fixed per sampler, so every batch has the same shapes."""

    context_idx: torch.Tensor
    target_idx: List[torch.Tensor]
    target_size: Tuple[torch.Tensor, torch.Tensor]
    context_size: Tuple[torch.Tensor, torch.Tensor]
    num_fallback: torch.Tensor

    def __iter__(self):
        return iter((self.context_idx, self.target_idx))


def _check_range(name: str, value: Sequence[float], hi: float = math.inf) -> Tuple[float, float]:
    lo_v, hi_v = float(value[0]), float(value[1])
    if not 0 < lo_v <= hi_v <= hi:
        raise MaskError(f"{name}={tuple(value)}: expected (min, max) with 0 < min <= max <= {hi}")
    return lo_v, hi_v


def _block_shape(u_scale: torch.Tensor, u_aspect: torch.Tensor, grid: Tuple[int, int],
                 scale: Tuple[float, float], aspect: Tuple[float, float]):
    """I-JEPA's ``_sample_block_size`` on tensors (float64 uniforms of any shape): an area of
    ``scale`` of the grid and an aspect h/w, at most one row and column short of the grid. (I-JEPA
    draws scale and aspect with one shared uniform number; here they are independent, as the
    paper describes.)"""
    height, width = grid
    area = torch.floor(height * width * (scale[0] + (scale[1] - scale[0]) * u_scale))
    ratio = aspect[0] + (aspect[1] - aspect[0]) * u_aspect
    h = torch.round(torch.sqrt(area * ratio)).clamp(1, height - 1).long()
    w = torch.round(torch.sqrt(area / ratio)).clamp(1, width - 1).long()
    return h, w


def _blocks(top: torch.Tensor, left: torch.Tensor, h, w, grid: Tuple[int, int]) -> torch.Tensor:
    """Boolean masks (..., N) of the h x w blocks with the given top-left corners."""
    height, width = grid
    rows = torch.arange(height, device=top.device).view(*([1] * top.dim()), height, 1)
    cols = torch.arange(width, device=top.device).view(*([1] * top.dim()), 1, width)
    top, left = top[..., None, None], left[..., None, None]
    inside = ((rows >= top) & (rows < top + h)) & ((cols >= left) & (cols < left + w))
    return inside.flatten(-2)


def _corners(shape, grid, h, w, generator, device):
    u = _rand((*shape, 2), generator, device)
    top = (u[..., 0] * (grid[0] - h + 1)).long()
    left = (u[..., 1] * (grid[1] - w + 1)).long()
    return top, left


def _first_ok(ok: torch.Tensor, fallback_choice: torch.Tensor) -> torch.Tensor:
    """Index of the first True along dim 1 (the first successful try), else ``fallback_choice``."""
    return torch.where(ok.any(dim=1), ok.to(torch.uint8).argmax(dim=1), fallback_choice)


def _pick(mask: torch.Tensor, k: int, generator, device) -> torch.Tensor:
    """``k`` patch indices per row, sorted, chosen at random among the True entries of ``mask``
    (..., N) (rows with fewer than ``k`` True entries would be completed with False ones)."""
    scores = _rand(mask.shape, generator, device) + mask.to(torch.float32)
    return scores.topk(k, dim=-1).indices.sort(dim=-1).values


class BlockMaskSampler:
    """I-JEPA multi-block masks on a ``grid`` (gh, gw) of patches, with shapes fixed per sampler.

    Per batch (as facebookresearch/ijepa ``MaskCollator``): one target block size (h, w) and one
    context block size are drawn for the whole batch; every sample draws its own block positions.
    Targets that leave fewer than ``min_keep`` free patches are redrawn (up to ``max_tries``
    draws, all made at once; the first that succeeds is kept). A sample's context is its context
    block minus all its target patches; when fewer than ``min_keep`` patches remain, the context
    block is moved (up to ``max_tries`` draws, as I-JEPA retries), and if every draw fails the
    context becomes every non-target patch (I-JEPA instead drops the non-overlap constraint; here
    context and targets stay disjoint). Everything runs on the device: no value is read back.

    Fixed counts instead of I-JEPA's per-batch minimum. I-JEPA trims every context to the
    smallest context count in the batch and every target to the smallest target count (all its
    target blocks in a batch have one size), keeping the first patches in raster order; those
    counts depend on the data, so each batch has new shapes. Here the counts are fixed when the
    sampler is built, from the configuration alone:

    - ``num_target`` (Kt) = the smallest area h*w any target block of the configured scale and
      aspect ranges can have (enumerated on a fine grid of the two uniforms). A target block is
      never smaller, so each target keeps Kt of its h*w patches, chosen at random (for the
      smallest blocks, all of them). No padding, no patch outside the block.
    - ``num_context`` (Kc) = the smallest context count in a simulated batch of
      ``CONTEXT_SIMULATION`` samples (fixed seed), i.e. what I-JEPA's trim gives for a batch of
      that size. Larger contexts keep Kc of their patches, chosen at random; a sample with fewer
      (rare: below the minimum of the simulation) is completed with random non-target patches,
      so context and targets stay disjoint and indices stay unique.

    Raises ``MaskError`` when built if the simulation finds a sample with fewer than ``min_keep``
    context patches (the configuration leaves too little room) or the ranges are invalid.
    """

    CONTEXT_SIMULATION = 1024

    def __init__(self, grid: Union[int, Tuple[int, int]], num_targets: int = 4,
                 target_scale: Tuple[float, float] = (0.15, 0.2),
                 target_aspect: Tuple[float, float] = (0.75, 1.5),
                 context_scale: Tuple[float, float] = (0.85, 1.0),
                 context_aspect: Tuple[float, float] = (1.0, 1.0),
                 min_keep: int = 10, max_tries: int = 20):
        grid = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
        if min(grid) < 2:
            raise MaskError(f"grid={grid}: block masking needs at least 2x2 patches")
        if num_targets < 1:
            raise MaskError(f"num_targets={num_targets}: need at least one target block")
        self.grid, self.num_targets = grid, int(num_targets)
        self.target_scale = _check_range("target_scale", target_scale, 1.0)
        self.context_scale = _check_range("context_scale", context_scale, 1.0)
        self.target_aspect = _check_range("target_aspect", target_aspect)
        self.context_aspect = _check_range("context_aspect", context_aspect)
        self.min_keep, self.max_tries = int(min_keep), max(1, int(max_tries))
        self.num_patches = grid[0] * grid[1]

        u = torch.linspace(0, 1, 1001, dtype=torch.float64)
        h, w = _block_shape(u[:, None], u[None, :], grid, self.target_scale, self.target_aspect)
        self.num_target = int((h * w).min())
        sim = self._sample(self.CONTEXT_SIMULATION, torch.device("cpu"),
                           torch.Generator().manual_seed(0))
        fewest = int(sim[0].sum(dim=1).min())
        if fewest < self.min_keep:
            raise MaskError(f"targets of up to {int(sim[2][0])}x{int(sim[2][1])} patches x "
                            f"{num_targets} leave fewer than min_keep={min_keep} context patches "
                            f"on a {grid[0]}x{grid[1]} grid; lower target_scale, num_targets or "
                            f"min_keep")
        self.num_context = fewest

    def _sample(self, batch: int, device, generator):
        """Untrimmed masks: context (B, N) bool, target blocks (B, T, N) bool, target (h, w),
        context (h, w), fallback (B,) bool."""
        grid, tries, t = self.grid, self.max_tries, self.num_targets
        u = _rand((4,), generator, device).double()
        th, tw = _block_shape(u[0], u[1], grid, self.target_scale, self.target_aspect)
        ch, cw = _block_shape(u[2], u[3], grid, self.context_scale, self.context_aspect)

        top, left = _corners((batch, tries, t), grid, th, tw, generator, device)
        blocks = _blocks(top, left, th, tw, grid)                     # (B, tries, T, N)
        free = (~blocks.any(dim=2)).sum(dim=-1)                       # (B, tries)
        pick = _first_ok(free >= self.min_keep, free.argmax(dim=1))
        blocks = blocks.gather(1, pick.view(batch, 1, 1, 1).expand(-1, 1, *blocks.shape[2:]))
        blocks = blocks.squeeze(1)                                    # (B, T, N)
        union = blocks.any(dim=1)

        top, left = _corners((batch, tries), grid, ch, cw, generator, device)
        contexts = _blocks(top, left, ch, cw, grid) & ~union[:, None]  # (B, tries, N)
        ok = contexts.sum(dim=-1) >= self.min_keep
        fallback = ~ok.any(dim=1)
        first = _first_ok(ok, torch.zeros_like(fallback, dtype=torch.long))
        context = contexts.gather(1, first.view(batch, 1, 1).expand(-1, 1, contexts.shape[-1]))
        context = torch.where(fallback[:, None], ~union, context.squeeze(1))
        return context, blocks, (th, tw), (ch, cw), fallback

    def __call__(self, batch: int, device=None,
                 generator: Optional[torch.Generator] = None) -> BlockMasks:
        """Masks for a batch, shapes (B, Kc) and ``num_targets`` x (B, Kt), all on ``device``."""
        context, blocks, target_size, context_size, fallback = self._sample(batch, device, generator)
        union = blocks.any(dim=1)
        targets = _pick(blocks, self.num_target, generator, device)    # (B, T, Kt)
        context_idx = _pick_context(context, union, self.num_context, generator, device)
        return BlockMasks(context_idx, list(targets.unbind(1)), target_size, context_size,
                          fallback.sum())


def _pick_context(context: torch.Tensor, union: torch.Tensor, k: int, generator,
                  device) -> torch.Tensor:
    """``k`` sorted indices per sample: random context patches, completed by random patches
    outside every target when the context is short; a target patch is never picked (were a
    sample to have fewer than ``k`` non-target patches, its first pick is repeated instead)."""
    rank = context.to(torch.float32) * 2 + (~union).to(torch.float32)      # 3, 1 or 0
    scores = _rand(context.shape, generator, device) + rank
    idx = scores.topk(k, dim=-1).indices
    idx = torch.where(union.gather(1, idx), idx[:, :1], idx)
    return idx.sort(dim=-1).values


@functools.lru_cache(maxsize=32)
def _sampler(*args) -> BlockMaskSampler:
    return BlockMaskSampler(*args)


def block_masks(batch: int, grid: Union[int, Tuple[int, int]], num_targets: int = 4,
                target_scale: Tuple[float, float] = (0.15, 0.2),
                target_aspect: Tuple[float, float] = (0.75, 1.5),
                context_scale: Tuple[float, float] = (0.85, 1.0),
                context_aspect: Tuple[float, float] = (1.0, 1.0),
                min_keep: int = 10, max_tries: int = 20, device=None,
                generator: Optional[torch.Generator] = None) -> BlockMasks:
    """I-JEPA multi-block masks for a batch (see ``BlockMaskSampler``; the sampler of each
    configuration is built once and cached)."""
    grid = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    sampler = _sampler(grid, int(num_targets), tuple(target_scale), tuple(target_aspect),
                       tuple(context_scale), tuple(context_aspect), int(min_keep), int(max_tries))
    return sampler(batch, device, generator)
